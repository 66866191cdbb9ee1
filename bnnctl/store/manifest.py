"""Manifest rows: completing a block's rows before its commit, and selecting rows.
(The table itself, its commits and versions: :mod:`bnnctl.store.table`.)

Writers hand :func:`complete_rows` their own columns; it adds the columns that describe
where and how the row is stored, so every engine's rows are complete in the same way.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

from bnnctl.arch import AnyArch
from bnnctl.errors import UsageError
from bnnctl.store.schema import ARROW_SCHEMA, NAMES
from bnnctl.store.where import select
from bnnctl.version import __version__

#: Nullable integer and boolean columns read as pandas' nullable dtypes.
INT_TYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}

__all__ = [
    "DEFAULT_COLUMNS", "INT_TYPES", "complete_rows", "pick_columns", "query", "select",
    "select_rows",
]  # fmt: skip


def complete_rows(
    rows: list[dict], array_path: str, stored: np.ndarray, arch: AnyArch, sha256: list[str]
) -> pa.Table:
    """The rows of one block, completed with where and how each is stored."""
    now = datetime.now(timezone.utc)
    common = {
        "array": array_path,
        "dtype": str(stored.dtype.newbyteorder("=")),
        "n_params": stored.shape[1],
        "created_at": now,
        "arch": arch.to_json(),
        "arch_name": arch.name,
        "activation": arch.activation,
        "bnnctl_version": __version__,
        "torch_version": _torch_version(),
    }
    full = []
    for i, r in enumerate(rows):
        unknown = set(r) - set(NAMES)
        if unknown:
            raise AssertionError(f"manifest columns not in schema: {sorted(unknown)}")
        full.append({**r, **common, "row": i, "sha256": sha256[i]})
    return pa.Table.from_pylist(full, schema=ARROW_SCHEMA)


def _torch_version() -> str:
    """The torch that made the rows (writers have it loaded already)."""
    module = sys.modules.get("torch")
    if module is None:
        import torch

        module = torch
    return str(module.__version__)


#: Columns ``bnnctl ls`` shows unless asked for others.
DEFAULT_COLUMNS = [
    "model_id",
    "kind",
    "method",
    "seed",
    "arch_name",
    "test_acc",
    "test_nll",
    "test_ece",
]


def query(
    df: pd.DataFrame,
    where: str | None = None,
    sort: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Rows ``where`` selects, sorted by the column ``sort`` (``-col`` descending, stable),
    at most ``limit`` of them."""
    df = select(df, where)
    if sort:
        col = sort.removeprefix("-")
        if col not in df.columns:
            raise UsageError(f"cannot `sort` by unknown column {col!r}", "sort")
        df = df.sort_values(col, ascending=not sort.startswith("-"), kind="stable")
    if limit is not None:
        if limit < 0:
            raise UsageError(f"`limit` must be >= 0, got {limit}", "limit")
        df = df.head(limit)
    return df


def pick_columns(df: pd.DataFrame, columns: list[str] | None) -> pd.DataFrame:
    """The columns asked for (``["all"]`` for all; None for :data:`DEFAULT_COLUMNS`)."""
    if columns == ["all"]:
        return df
    if not columns:
        return df[[c for c in DEFAULT_COLUMNS if c in df.columns]]
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise UsageError(
            f"unknown column(s) {', '.join(unknown)}; see `bnnctl ls --columns all`", "columns"
        )
    return df[columns]


def select_rows(
    df: pd.DataFrame, where: str | None = None, ids: list[str] | None = None
) -> pd.DataFrame:
    """The rows ``where`` selects, or the rows of ``ids`` in their order (exactly one of
    the two); an empty selection or an unknown id is a :class:`UsageError`."""
    if (where is None) == (ids is None):
        raise UsageError("select rows with exactly one of `where` EXPR or `ids`", "where")
    if ids is None:
        rows = select(df, where)
        if rows.empty:
            raise UsageError(f"`where` {where!r} selects no rows", "where")
        return rows
    known = set(df["model_id"])
    missing = [m for m in ids if m not in known]
    if missing:
        raise UsageError(f"{len(missing)} unknown model id(s), e.g. {missing[0]!r}", "ids")
    return df.set_index("model_id", drop=False).loc[list(dict.fromkeys(ids))].reset_index(drop=True)
