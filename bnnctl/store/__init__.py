"""The checkpoint store: the only package that touches Zarr or Parquet.

- :mod:`.store`: :class:`Store`, opening a store, committing blocks, reading params and data.
- :mod:`.manifest`: reading and writing manifest files, completing rows.
- :mod:`.schema`: the manifest's columns, its Arrow schema and JSON Schemas.
- :mod:`.where`: ``--where`` expressions, a whitelisted grammar evaluated as data.
- :mod:`.verify`: checks of a whole store.

Nothing here imports torch: ``bnnctl ls`` and ``bnnctl verify`` start fast.
"""

from bnnctl.store.manifest import select
from bnnctl.store.store import DTYPES, FORMAT_VERSION, Store, row_sha256
from bnnctl.store.verify import Problem

__all__ = ["DTYPES", "FORMAT_VERSION", "Problem", "Store", "row_sha256", "select"]
