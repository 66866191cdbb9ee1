"""Checks of a whole store: every row re-hashed, manifest <-> arrays <-> JSON Schema."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable

import bnnctl.scheduler as schedmod
from bnnctl.arch import arch_from_json
from bnnctl.errors import UsageError, describe
from bnnctl.store import claims
from bnnctl.store import table as delta
from bnnctl.store.manifest import INT_TYPES
from bnnctl.store.schema import json_schema, rows_to_validate

if TYPE_CHECKING:
    from bnnctl.store.store import Store


@dataclass
class Problem:
    """One inconsistency found by :func:`verify`."""

    model_id: str | None
    where: str
    message: str


#: Rows a Dask task re-hashes at least (whole arrays, ~1.6 ms of overhead per task).
TASK_ROWS = 512
#: The manifest columns the array checks read.
ARRAY_COLUMNS = ["model_id", "row", "n_params", "dtype", "arch", "sha256"]


def verify(store: Store, scheduler: str | None = None) -> list[Problem]:
    """Re-hash every row named by the manifest and check manifest <-> arrays and the
    JSON Schema. Returns the problems found (empty when the store is sound).
    ``scheduler`` (``local:N`` or ``tcp://HOST:PORT``) re-hashes the arrays on Dask
    workers (:mod:`bnnctl.scheduler`), whole arrays of about :data:`TASK_ROWS` rows per
    task; the problems are the same, in the same order."""
    from jsonschema import Draft202012Validator

    from bnnctl.store.store import row_sha256

    sched = schedmod.require(scheduler)
    problems: list[Problem] = []
    try:
        dt = store.table()
        table = delta.read_arrow(dt)
    except Exception as e:  # a missing or corrupted data file or log entry
        return [Problem(None, "manifest", f"manifest table unreadable: {describe(e)}")]
    problems += foreign_edits(dt)
    if table.num_rows == 0:
        return problems
    validator = Draft202012Validator(json_schema())
    for rec in table.filter(rows_to_validate(table)).to_pylist():
        rec["created_at"] = rec["created_at"].isoformat() if rec["created_at"] else None
        for err in validator.iter_errors(rec):
            where = "/".join(map(str, err.absolute_path)) or "row"
            problems.append(Problem(rec.get("model_id"), f"schema:{where}", err.message))
    problems += _nonfinite_metrics(table)
    df = table.to_pandas(types_mapper=INT_TYPES.get)
    for mid in df.loc[df["model_id"].duplicated(), "model_id"]:
        problems.append(Problem(mid, "manifest", "model_id appears more than once"))
    for mid in df.loc[df.duplicated(["array", "row"]), "model_id"]:
        problems.append(Problem(mid, "manifest", "(array, row) is named by another row too"))
    arrays = [(str(path), sub) for path, sub in df.groupby("array", sort=False)]
    if sched is None:
        # arrays on threads: reading (zarr's I/O) and sha256 release the GIL
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for found in pool.map(lambda a: _verify_array(store, a[0], a[1], row_sha256), arrays):
                problems += found
    else:
        problems += _verify_scheduled(store, arrays, sched)
    for path, sub in df.dropna(subset=["data"]).groupby("data", sort=False):
        problems += _verify_data(store, str(path), sub)
    return problems


def _verify_scheduled(
    store: Store, arrays: list[tuple[str, pd.DataFrame]], sched: schedmod.Scheduler
) -> list[Problem]:
    """The array checks as Dask tasks of whole arrays, about :data:`TASK_ROWS` rows each."""
    tasks: list[list[tuple[str, pd.DataFrame]]] = [[]]
    rows = 0
    for path, sub in arrays:
        if rows >= TASK_ROWS:
            tasks.append([])
            rows = 0
        tasks[-1].append((path, sub[[c for c in ARRAY_COLUMNS if c in sub]]))
        rows += len(sub)
    with schedmod.connect(sched) as cluster:
        found = cluster.map(
            _verify_arrays,
            [(t,) for t in tasks],
            (schedmod.location(store),),
            name=lambda i: f"arrays {tasks[i][0][0]}...",
        )
    return [p for part in found for p in part]


def _verify_arrays(arrays: list[tuple[str, pd.DataFrame]], url: str) -> list[Problem]:
    """The array checks of ``arrays`` on a Dask worker, which opens the store by URL."""
    from bnnctl.store.store import Store, row_sha256

    store = Store.open(url)
    return [p for path, sub in arrays for p in _verify_array(store, path, sub, row_sha256)]


def _verify_array(store: Store, path: str, sub: pd.DataFrame, row_sha256) -> list[Problem]:
    try:
        # a group at ``path`` fails this read and is reported below, like any unreadable array
        data, attrs = store.read_array(path)
    except Exception as e:
        return [
            Problem(m, path, f"params array unreadable: {describe(e)}") for m in sub["model_id"]
        ]
    problems = []
    finite = np.isfinite(data).all(axis=1) if data.dtype.kind == "f" else None
    layouts: dict[str, Any] = {}
    for rec in sub[ARRAY_COLUMNS].itertuples():
        if (
            rec.row >= data.shape[0]
            or data.shape[1] != rec.n_params
            or str(data.dtype) != rec.dtype
        ):
            problems.append(
                Problem(
                    rec.model_id,
                    path,
                    f"row {rec.row} / shape {data.shape} dtype {data.dtype} disagree with the manifest",  # noqa: E501
                )
            )
            continue
        if rec.arch not in layouts:
            try:
                layouts[rec.arch] = [t.to_json() for t in arch_from_json(rec.arch).layout]
            except Exception as e:  # arch text not written by bnnctl
                layouts[rec.arch] = describe(e)
        layout = layouts[rec.arch]
        if isinstance(layout, str):
            problems.append(Problem(rec.model_id, "manifest", f"arch is not valid: {layout}"))
        elif attrs.get("layout") != layout:
            problems.append(Problem(rec.model_id, path, "array layout attr disagrees with arch"))
        if row_sha256(data[rec.row]) != rec.sha256:
            problems.append(
                Problem(rec.model_id, path, f"row {rec.row}: sha256 mismatch (corrupted data)")
            )
        elif finite is not None and not finite[rec.row]:
            problems.append(Problem(rec.model_id, path, f"row {rec.row}: non-finite weights"))
    return problems


#: Manifest operations bnnctl performs; none of them removes or changes a row.
OWN_OPERATIONS = {"CREATE TABLE", "MERGE", "OPTIMIZE", "VACUUM START", "VACUUM END"}


def foreign_edits(dt: DeltaTable) -> list[Problem]:
    """Rows another tool removed or changed: bnnctl only inserts rows (a merge that never
    updates or deletes) and compacts, so any other manifest version is compared with the
    one before it, by ``model_id``."""
    problems = []
    for entry in dt.history():
        op, version = entry.get("operation"), entry.get("version")
        metrics = entry.get("operationMetrics") or {}
        inserts_only = op == "MERGE" and not (
            metrics.get("num_target_rows_updated") or metrics.get("num_target_rows_deleted")
        )
        appends = op == "WRITE" and (entry.get("operationParameters") or {}).get("mode") in (
            "Append",
            "ErrorIfExists",
        )
        if version is None or version == 0 or inserts_only or appends:
            continue
        if op in OWN_OPERATIONS - {"MERGE"}:
            continue
        try:
            old, new = (
                delta.read(DeltaTable(dt.table_uri, version=v)).set_index("model_id")
                for v in (version - 1, version)
            )
        except Exception as e:
            problems.append(
                Problem(None, "manifest", f"version {version} ({op}) may have changed rows; "
                        f"cannot compare it with the version before: {describe(e)}")
            )  # fmt: skip
            continue
        old, new = old[~old.index.duplicated()], new[~new.index.duplicated()]
        for mid in old.index.difference(new.index):
            problems.append(Problem(mid, "manifest", f"row removed at version {version} ({op})"))
        both = old.index.intersection(new.index)
        cols = [c for c in old.columns if c in new.columns]
        a, b = old.loc[both, cols].astype(object), new.loc[both, cols].astype(object)
        changed = ~((a == b) | (a.isna() & b.isna()))
        for mid in both[changed.any(axis=1).to_numpy()]:
            problems.append(Problem(mid, "manifest", f"row changed at version {version} ({op})"))
        for c in sorted(set(old.columns) - set(new.columns)):
            problems.append(
                Problem(None, f"manifest:{c}", f"column dropped at version {version} ({op})")
            )
    return problems


def _nonfinite_metrics(table: pa.Table) -> list[Problem]:
    """Rows with a NaN or infinite value in a float column (nulls are allowed)."""
    import pyarrow.compute as pc

    problems = []
    for name in table.column_names:
        col = table.column(name)
        if not pa.types.is_floating(col.type):
            continue
        bad = pc.fill_null(pc.invert(pc.is_finite(col)), False)
        for mid in table.filter(bad).column("model_id").to_pylist():
            problems.append(Problem(mid, f"manifest:{name}", "non-finite value"))
    return problems


def _verify_data(store: Store, path: str, sub: pd.DataFrame) -> list[Problem]:
    try:
        sha = store.load_data(path).sha256
    except Exception as e:
        return [Problem(sub["model_id"].iloc[0], path, f"dataset unreadable: {e}")]
    bad = sub[sub["data_sha256"] != sha]
    return [
        Problem(m, path, "dataset content hash disagrees with the manifest")
        for m in bad["model_id"]
    ]


def orphan_arrays(store: Store) -> list[str]:
    """Params arrays no manifest row names: leftovers of interrupted runs, which the
    same command reuses when re-run. Harmless to readers; listed by ``verify``.
    Found from the arrays' ``zarr.json`` files, so that the ``*.partial`` files a killed
    zarr write leaves behind are not mistaken for nodes."""
    root = store.root.rstrip("/")
    named = set(delta.read(store.table(), ["array"])["array"])
    found = []
    for meta in store.fs.glob(f"{root}/params/**/zarr.json"):
        with store.fs.open(meta, "rb") as fh:
            try:
                is_array = json.load(fh).get("node_type") == "array"
            except ValueError:  # a truncated zarr.json is an orphan's too
                is_array = True
        path = meta[len(root) + 1 : -len("/zarr.json")]
        if is_array and path not in named:
            found.append(path)
    return sorted(found)


def gc(store: Store, grace_seconds: float = 3600.0, dry_run: bool = False) -> list[str]:
    """Remove what no committed row needs and no running writer can still be filling:
    params arrays no manifest row names and zarr ``*.partial`` leftovers, untouched for
    ``grace_seconds``, and population claims with no committed row as old
    (:mod:`bnnctl.store.claims`). Returns the removed paths (or those it would remove)."""
    if not grace_seconds >= 0:
        raise UsageError(f"`grace_seconds` must be >= 0, got {grace_seconds}", "grace_seconds")
    root = store.root.rstrip("/")
    now = time.time()

    def idle(path: str) -> bool:
        return now - _mtime(store.fs, path) >= grace_seconds

    gone = [p for p in orphan_arrays(store) if idle(f"{root}/{p}/zarr.json")]
    partial = [p for p in store.fs.glob(f"{root}/params/**/*.partial") if idle(p)]
    if not dry_run:
        for p in gone:
            store.fs.rm(f"{root}/{p}", recursive=True)
        for p in partial:
            store.fs.rm(p)
    populated = set(store.manifest()["population"])
    released = claims.release_unused(store, populated, grace_seconds, dry_run)
    return gone + [p[len(root) + 1 :] for p in partial] + released


def _mtime(fs: Any, path: str) -> float:
    info = fs.info(path)
    m = info.get("mtime", info.get("LastModified", info.get("created")))  # local, S3, memory
    return m.timestamp() if hasattr(m, "timestamp") else float(m or 0)
