"""The store's format: its version and the stored dtypes of params arrays (a module of its
own, so that the CLI can name them without importing the store)."""

from __future__ import annotations

from enum import Enum

#: Version of the on-disk store format this code reads and writes.
FORMAT_VERSION = 2


class DType(str, Enum):
    """Stored dtypes of params arrays."""

    float32 = "float32"
    float16 = "float16"


DTYPES = tuple(d.value for d in DType)
