"""The checkpoint store: the only package that touches Zarr, Parquet or Delta Lake.

- :mod:`.store`: :class:`Store`, opening a store, committing blocks, reading params and data.
- :mod:`.table`: the manifest's Delta Lake table: reads, commits, versions, compaction.
- :mod:`.manifest`: completing a block's rows, selecting and listing rows.
- :mod:`.migrate`: upgrading a format-1 store.
- :mod:`.schema`: the manifest's columns, its Arrow schema and JSON Schemas.
- :mod:`.where`: ``--where`` expressions, a whitelisted grammar evaluated as data.
- :mod:`.verify`: checks of a whole store, orphan arrays, gc.

Nothing here imports torch, and the names below are imported on first use: ``bnnctl
--help`` imports no store module, and ``bnnctl ls`` no Zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnnctl.store.format import DTYPES, FORMAT_VERSION
    from bnnctl.store.manifest import select
    from bnnctl.store.store import Block, Store, row_sha256
    from bnnctl.store.verify import Problem

_WHERE = {
    "select": "manifest",
    "DTYPES": "format",
    "FORMAT_VERSION": "format",
    "Block": "store",
    "Store": "store",
    "row_sha256": "store",
    "Problem": "verify",
}
__all__ = ["Block", "DTYPES", "FORMAT_VERSION", "Problem", "Store", "row_sha256", "select"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
