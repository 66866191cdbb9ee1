"""Store format upgrades: format 1 (a folder of Parquet files under ``manifest/``, one
per committed block) to format 2 (a Delta Lake table at ``manifest/``).

The upgrade is in place and loses nothing: the version-1 files are read and checked, all
their rows are written to a new Delta table beside them (``manifest.v2/``) in one
commit, the table is read back and compared, and only then is ``manifest/`` renamed to
``manifest.v1/`` (kept for the user to delete), ``manifest.v2/`` to ``manifest/``, and
the format version set to 2. Each step is checked on a re-run, so a crash at any point
and ``bnnctl migrate`` again finish the job.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bnnctl.errors import StoreError
from bnnctl.store import table as delta
from bnnctl.store.schema import ARROW_SCHEMA
from bnnctl.store.store import FORMAT_VERSION, Store


def read_v1(store: Store, folder: str) -> pa.Table:
    """All rows of a format-1 manifest folder (every ``*.parquet`` file but temporaries)."""
    files = sorted(
        f
        for f in store.fs.glob(f"{store.root}/{folder}/*.parquet")
        if not Path(f).name.startswith((".", "_"))
    )
    tables = []
    for f in files:
        try:
            with store.fs.open(f, "rb") as fh:
                tables.append(pq.read_table(fh))
        except Exception as e:
            raise StoreError(
                f"format-1 manifest file {Path(f).name} is unreadable ({type(e).__name__}); "
                "nothing was changed"
            ) from None
    if not tables:
        return ARROW_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default").select(ARROW_SCHEMA.names)


def migrate(url: str | os.PathLike) -> dict:
    """Upgrade the store at ``url`` to the current format; returns what was done."""
    store = Store.open(url, migrating=True)
    info = store.group.attrs["bnnctl"]
    assert isinstance(info, dict)  # Store.open refuses a store without this dict
    version = info["format_version"]
    if version == FORMAT_VERSION:
        return {"from": version, "to": version, "rows": len(store.manifest()), "changed": False}
    fs, root = store.fs, store.root
    if fs.exists(f"{root}/manifest.v1"):  # a previous run got past the swap: finish it
        rows = read_v1(store, "manifest.v1")
    else:
        rows = read_v1(store, "manifest")
        staged = f"{root}/manifest.v2"
        if fs.exists(staged):  # a previous run died while staging: start the stage again
            fs.rm(staged, recursive=True)
        delta.create(staged)
        if rows.num_rows:
            delta.commit(staged, rows.cast(ARROW_SCHEMA))
        _check_same(rows, delta.read(delta.open_table(staged)))
        fs.mv(f"{root}/manifest", f"{root}/manifest.v1", recursive=True)
        fs.mv(staged, f"{root}/manifest", recursive=True)
    _check_same(rows, delta.read(delta.open_table(f"{root}/manifest")))
    store.group.attrs["bnnctl"] = {**info, "format_version": FORMAT_VERSION}
    return {"from": version, "to": FORMAT_VERSION, "rows": rows.num_rows, "changed": True}


def _check_same(rows: pa.Table, table: pd.DataFrame) -> None:
    """The Delta table holds exactly the version-1 rows (ids and hashes)."""
    before = sorted(zip(rows["model_id"].to_pylist(), rows["sha256"].to_pylist(), strict=True))
    after = sorted(zip(table["model_id"], table["sha256"], strict=True))
    if before != after:
        raise StoreError(
            f"migration check failed: {len(before)} rows in format 1, {len(after)} in the new "
            "table; the format-1 manifest is untouched"
        )
