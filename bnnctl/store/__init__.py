"""The checkpoint store: the only package that touches Zarr, Parquet or Delta Lake.

- :mod:`.store`: :class:`Store`, opening a store, committing blocks, reading params and data.
- :mod:`.table`: the manifest's Delta Lake table: reads, commits, versions, compaction.
- :mod:`.manifest`: completing a block's rows, selecting and listing rows.
- :mod:`.migrate`: upgrading a format-1 store.
- :mod:`.schema`: the manifest's columns, its Arrow schema and JSON Schemas.
- :mod:`.where`: ``--where`` expressions, a whitelisted grammar evaluated as data.
- :mod:`.verify`: checks of a whole store, orphan arrays, gc.

Nothing here imports torch: ``bnnctl ls`` and ``bnnctl verify`` start fast.
"""

from bnnctl.store.manifest import select
from bnnctl.store.store import DTYPES, FORMAT_VERSION, Store, row_sha256
from bnnctl.store.verify import Problem

__all__ = ["DTYPES", "FORMAT_VERSION", "Problem", "Store", "row_sha256", "select"]
