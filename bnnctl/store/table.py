"""The manifest as a Delta Lake table at ``<store>/manifest/`` (store format 2).

Delta's log gives what a folder of Parquet files cannot: atomic commits on local disks
and object stores alike (put-if-absent of the next log entry), concurrent writers with
conflict detection, compaction, checkpoints and time travel. Every data file is still
Parquet; peers read the table with ``deltalake.DeltaTable(url).to_pandas()`` or
``polars.read_delta(url)``.

A block's rows are committed by one *merge* keyed on ``model_id`` that inserts only the
ids not yet in the table. The merge reads the table, so two writers racing on one id
conflict in Delta's commit protocol; the loser re-runs its merge against the new
version and inserts nothing twice. No ``model_id`` is ever committed twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from bnnctl.errors import StoreError, UsageError, describe, one_line
from bnnctl.store.manifest import INT_TYPES
from bnnctl.store.schema import ARROW_SCHEMA

#: Attempts of a commit that lost a race before giving up (each re-runs the merge).
COMMIT_ATTEMPTS = 50
#: Data files above which :func:`maybe_compact` compacts and checkpoints.
COMPACT_FILES = 64
#: The manifest's column types, every column nullable: what a read casts to (a missing
#: required value is for ``verify`` to report, not for a read to fail on).
READ_SCHEMA = pa.schema([f.with_nullable(True) for f in ARROW_SCHEMA])


def create(uri: str, storage_options: dict[str, str] | None = None) -> None:
    """An empty manifest table with the manifest's schema."""
    DeltaTable.create(uri, ARROW_SCHEMA, mode="ignore", storage_options=storage_options)


def open_table(
    uri: str,
    storage_options: dict[str, str] | None = None,
    as_of: int | str | None = None,
) -> DeltaTable:
    """The table, at its latest version or as it was at ``as_of`` (a version number, or
    an ISO 8601 timestamp)."""
    try:
        dt = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        raise StoreError(f"the store has no manifest table at {uri}") from None
    if as_of is None:
        return dt
    when = _version_or_time(as_of)
    try:
        dt.load_as_version(when)
    except Exception as e:  # delta-rs raises on unknown versions and times
        latest = DeltaTable(uri, storage_options=storage_options).version()
        why = "" if isinstance(when, int) else f": {one_line(str(e))}"
        raise UsageError(
            f"`as_of`: no manifest version {as_of} (versions run from 0 to {latest}){why}",
            "as_of",
        ) from None
    return dt


def _version_or_time(as_of: int | str) -> int | datetime:
    if isinstance(as_of, int) or str(as_of).isdigit():
        return int(as_of)
    try:
        return datetime.fromisoformat(str(as_of))
    except ValueError:
        raise UsageError(
            f"`as_of` must be a version number or an ISO 8601 time, got {as_of!r}", "as_of"
        ) from None


#: What :func:`read_arrow` sorts by: commit time, then the row in its block's array.
ORDER = ("created_at", "row")


def read_arrow(
    dt: DeltaTable, columns: Sequence[str] | None = None, prefilter: str | None = None
) -> pa.Table:
    """Every committed row as Arrow (only ``columns``, when given), with the manifest's
    column types, in commit order (a block's rows in their order in its array).
    ``prefilter`` (a SQL predicate over the manifest's columns, from
    :func:`bnnctl.store.where.pushdown`) keeps only the rows that satisfy it, evaluated by
    delta-rs's query engine, which skips whole files and row groups by their statistics."""
    names = [c for c in READ_SCHEMA.names if columns is None or c in columns]
    read = list(dict.fromkeys([*names, *ORDER]))
    try:
        if prefilter is None:
            table = dt.to_pyarrow_table(columns=read)
        else:
            sql = f"SELECT {', '.join(f'{_q(c)}' for c in read)} FROM manifest WHERE {prefilter}"
            result = QueryBuilder().register("manifest", dt).execute(sql)
            # through the Arrow C stream: pa.table() would import pandas to check its input
            table = pa.RecordBatchReader.from_stream(result).read_all()
    except Exception as e:  # a data file of the table is missing or corrupted
        raise StoreError(
            f"the manifest table is unreadable ({describe(e)}); run `bnnctl verify` for details"
        ) from None
    # the query engine returns string views: cast to the manifest's types first
    table = table.select(read).cast(pa.schema([READ_SCHEMA.field(n) for n in read]))
    order = pc.sort_indices(table, [(c, "ascending") for c in ORDER])
    return table.take(order).select(names)


def read(
    dt: DeltaTable, columns: Sequence[str] | None = None, prefilter: str | None = None
) -> pd.DataFrame:
    """Every committed row (only ``columns``, when given, and only those satisfying
    ``prefilter``), with the manifest's types."""
    return read_arrow(dt, columns, prefilter).to_pandas(types_mapper=INT_TYPES.get)


def _q(name: str) -> str:
    """A column name as a SQL identifier (names come from the manifest's schema)."""
    return '"' + name.replace('"', '""') + '"'


def commit(table: str | DeltaTable, rows: pa.Table) -> int:
    """Insert the rows whose ``model_id`` is not in the table yet, in one transaction;
    returns how many were inserted. Retries when another writer committed first. Given
    an open table, it reads only the log entries added since (a writer keeps one open,
    so that a commit does not replay the whole log)."""
    dt = DeltaTable(table) if isinstance(table, str) else table
    populations = pc.unique(rows["population"]).to_pylist()
    low, high = pc.min_max(rows["model_id"]).values()
    # literals on the population and the id range let delta-rs skip, by their min/max
    # statistics, the files that cannot hold these ids: a commit then reads a few files
    # however large the table grows
    scope = " OR ".join(f"t.population = {_quote(p)}" for p in populations)
    ids = f"t.model_id >= {_quote(low.as_py())} AND t.model_id <= {_quote(high.as_py())}"
    predicate = f"({scope}) AND {ids} AND t.model_id = s.model_id"
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            dt.update_incremental()
            metrics = (
                # not streamed: a block's rows are few, and planning the streamed merge
                # costs more than holding them (about 50 against 70 ms a commit)
                dt.merge(rows, predicate, source_alias="s", target_alias="t", streamed_exec=False)
                .when_not_matched_insert_all()
                .execute()
            )
            return int(metrics["num_target_rows_inserted"])
        except CommitFailedError:
            time.sleep(min(0.01 * 2**attempt, 1.0))
    raise StoreError(f"could not commit to the manifest after {COMMIT_ATTEMPTS} attempts")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ids_with_array(dt: DeltaTable, ids: Sequence[str], array: str) -> list[str]:
    """Those of ``ids`` whose committed row lives in ``array`` (to tell which rows of a
    block this writer committed when another writer committed some of them first)."""
    table = dt.to_pyarrow_table(columns=["model_id", "array"])
    wanted = pc.is_in(table["model_id"], pa.array(list(ids)))
    mask = pc.and_(wanted, pc.equal(table["array"], array))
    return table.filter(mask)["model_id"].to_pylist()


def n_files(dt: DeltaTable) -> int:
    return len(dt.file_uris())


def compact(dt: DeltaTable) -> dict:
    """Merge small data files into large ones and write a checkpoint, so that opening
    the log and reading the table stay cheap however many commits came before."""
    before = n_files(dt)
    dt.optimize.compact()
    dt.create_checkpoint()
    return {"files_before": before, "files_after": n_files(dt), "version": dt.version()}


def maybe_compact(uri: str, storage_options: dict[str, str] | None = None) -> dict | None:
    """:func:`compact` when the table has more than :data:`COMPACT_FILES` data files."""
    dt = DeltaTable(uri, storage_options=storage_options)
    if n_files(dt) <= COMPACT_FILES:
        return None
    try:
        return compact(dt)
    except CommitFailedError:  # a concurrent writer compacted or committed: next time
        return None
