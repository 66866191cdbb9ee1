"""The manifest as a Delta Lake table at ``<store>/manifest/`` (store format 2).

Delta's log gives what a folder of Parquet files cannot: atomic commits on local disks
and object stores alike (put-if-absent of the next log entry), concurrent writers with
conflict detection, compaction, checkpoints and time travel. Every data file is still
Parquet; peers read the table with ``deltalake.DeltaTable(url).to_pandas()`` or
``polars.read_delta(url)``.

A block's rows are committed by one optimistic transaction: look the block's ids up in
the table at version ``v``, then append the rows not found there as version ``v + 1``,
written put-if-absent; when another writer took ``v + 1`` first, look again at the new
version. No ``model_id`` is ever committed twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from bnnctl.errors import StoreError, UsageError, describe, one_line
from bnnctl.store.manifest import INT_TYPES
from bnnctl.store.schema import ADDED_COLUMNS, ARROW_SCHEMA

#: Attempts of a commit that lost a race before giving up (each looks the ids up again).
COMMIT_ATTEMPTS = 50
#: Data files above which :func:`maybe_compact` compacts and checkpoints.
COMPACT_FILES = 64
#: Commits of one :class:`Writer` between the checkpoints it writes.
CHECKPOINT_EVERY = 16
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
    present = set(_names(dt))
    absent = [c for c in names if c not in present]
    if set(absent) - set(ADDED_COLUMNS):
        missing = ", ".join(c for c in absent if c not in ADDED_COLUMNS)
        raise StoreError(
            f"the manifest table has no column {missing}; run `bnnctl verify` for details"
        )
    read = [c for c in dict.fromkeys([*names, *ORDER]) if c in present]
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
    for name in absent:  # a column added to the schema after this table was written
        table = table.append_column(
            READ_SCHEMA.field(name), pa.nulls(table.num_rows, READ_SCHEMA.field(name).type)
        )
    order = pc.sort_indices(table, [(c, "ascending") for c in ORDER])
    return table.take(order).select(names)


def _names(dt: DeltaTable) -> list[str]:
    """The table's column names (a table written by an older bnnctl may lack some)."""
    return [f.name for f in dt.schema().fields]


def read(
    dt: DeltaTable, columns: Sequence[str] | None = None, prefilter: str | None = None
) -> pd.DataFrame:
    """Every committed row (only ``columns``, when given, and only those satisfying
    ``prefilter``), with the manifest's types."""
    return read_arrow(dt, columns, prefilter).to_pandas(types_mapper=INT_TYPES.get)


def _q(name: str) -> str:
    """A column name as a SQL identifier (names come from the manifest's schema)."""
    return '"' + name.replace('"', '""') + '"'


def commit(table: str | DeltaTable, rows: pa.Table) -> pa.Table:
    """Insert the rows whose ``model_id`` is not in the table yet (the first of any id
    ``rows`` repeats), in one transaction; returns the rows inserted. Retries when
    another writer committed first. Given an open table, it reads only the log entries
    added since (a writer keeps one open, so that a commit does not replay the log).

    The check and the append are one optimistic transaction: the ids are looked up in
    the table at version ``v``, and the append is written as version ``v + 1`` or not
    at all (no retries inside delta-rs, whose conflict checker would let a blind append
    land on a newer version that may hold these ids). The log's put-if-absent of
    ``v + 1`` is the commit point, so no ``model_id`` is ever committed twice. (A merge
    keyed on ``model_id`` gives the same guarantee at three to four times the cost.)"""
    dt = DeltaTable(table) if isinstance(table, str) else table
    rows = _first_of_each_id(rows)
    once = CommitProperties(max_commit_retries=0)
    for attempt in range(COMMIT_ATTEMPTS):
        dt.update_incremental()
        new = rows.filter(pc.invert(pc.is_in(rows["model_id"], _present(dt, rows["model_id"]))))
        if new.num_rows == 0:
            return new
        # a table written before a column was added to the schema gains it (null in its
        # older rows) in the same commit
        evolve: Literal["merge"] | None = (
            "merge" if set(ARROW_SCHEMA.names) - set(_names(dt)) else None
        )
        try:
            write_deltalake(dt, new, mode="append", commit_properties=once, schema_mode=evolve)
            return new
        except CommitFailedError:  # another writer took version v + 1: look again
            # jittered, so that writers that lost to each other do not collide again
            time.sleep(random.uniform(0, min(0.005 * 2**attempt, 0.5)))
    raise StoreError(f"could not commit to the manifest after {COMMIT_ATTEMPTS} attempts")


def _first_of_each_id(rows: pa.Table) -> pa.Table:
    ids = rows["model_id"].to_pylist()
    first = {i: k for k, i in reversed(list(enumerate(ids)))}
    return rows if len(first) == len(ids) else rows.take(sorted(first.values()))


def _present(dt: DeltaTable, ids: pa.ChunkedArray) -> pa.Array:
    """Those of ``ids`` in the table at ``dt``'s loaded version."""
    low, high = pc.min_max(ids).values()
    # literals on the id range let delta-rs skip, by their min/max statistics, the files
    # that cannot hold these ids: a commit reads a few files however large the table is
    sql = (
        f"SELECT model_id FROM manifest WHERE model_id >= {_quote(low.as_py())} "
        f"AND model_id <= {_quote(high.as_py())}"
    )
    result = QueryBuilder().register("manifest", dt).execute(sql)
    found = pa.RecordBatchReader.from_stream(result).read_all()["model_id"]
    return pc.filter(ids, pc.is_in(ids, found.cast(pa.string()))).combine_chunks()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Writer:
    """The manifest table held open by one writer across its commits, with the log kept
    cheap to read: every :data:`CHECKPOINT_EVERY` commits it writes a checkpoint and
    reopens the table from it, and every :data:`COMPACT_FILES` it compacts when runs have
    left many small files. (Each lookup of a commit replays the log since the last
    checkpoint: at 90 entries a commit took 2-3 times as long as at 10.)"""

    def __init__(self, uri: str):
        self.uri = uri
        self.dt = open_table(uri)
        self.commits = 0

    def commit(self, rows: pa.Table) -> pa.Table:
        """:func:`commit` ``rows``; returns the rows inserted."""
        inserted = commit(self.dt, rows)
        self.commits += 1
        try:
            if self.commits % COMPACT_FILES == 0:
                maybe_compact(self.uri)  # checkpoints too, when it compacts
                self.dt = open_table(self.uri)
            elif self.commits % CHECKPOINT_EVERY == 0:
                self.dt.create_checkpoint()
                self.dt = open_table(self.uri)
        except Exception:  # noqa: BLE001 (housekeeping after the commit point: a
            pass  # checkpoint or compaction that fails loses nothing; the table stays open)
        return inserted


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
