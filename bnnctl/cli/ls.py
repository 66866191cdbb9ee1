"""`bnnctl ls`."""

from __future__ import annotations

from typing import Annotated

import typer

from bnnctl.cli.common import (
    DEFAULT_STORE,
    AsOfOpt,
    FormatFlag,
    RowFormat,
    StoreOpt,
    WhereOpt,
    command,
    emit_rows,
)


@command("ls")
def ls_cmd(
    where: WhereOpt = None,
    columns: Annotated[
        str | None, typer.Option("--columns", "-c", help="Comma-separated columns, or 'all'.")
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option("--sort", "-s", help="Sort by a column; prefix '-' for descending."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-l", help="At most this many rows.")
    ] = None,
    fmt: Annotated[RowFormat, FormatFlag] = RowFormat.table,
    as_of: AsOfOpt = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """List checkpoints in the manifest, filtered, sorted and formatted.

    Example: bnnctl ls --where "test_acc > 0.97" --sort -test_acc --limit 5 --format csv
    """
    from bnnctl.store import Store

    cols = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    if fmt is RowFormat.ids:
        cols = ["model_id"]
    emit_rows(Store.open(store, as_of=as_of).rows(where, cols, sort, limit), fmt.value)
