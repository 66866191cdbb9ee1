"""`bnnctl ls` and `bnnctl verify`."""

from __future__ import annotations

from typing import Annotated

import typer

from bnnctl.cli.common import (
    DEFAULT_STORE,
    Format,
    FormatOpt,
    QuietOpt,
    StoreOpt,
    WhereOpt,
    command,
    emit_rows,
    log,
    select,
)
from bnnctl.errors import UsageError
from bnnctl.store import Store

DEFAULT_COLUMNS = ["model_id", "kind", "method", "seed", "arch_name", "test_acc", "test_nll", "test_ece"]


@command("ls")
def ls_cmd(
    where: WhereOpt = None,
    columns: Annotated[str | None, typer.Option("--columns", "-c", help="Comma-separated columns, or 'all'.")] = None,
    sort: Annotated[str | None, typer.Option("--sort", "-s", help="Sort by a column; prefix '-' for descending.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-l", help="At most this many rows.")] = None,
    fmt: FormatOpt = Format.table,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """List checkpoints in the manifest, filtered, sorted and formatted.

    Example: bnnctl ls --where "test_acc > 0.97" --sort -test_acc --limit 5 --format csv
    """
    df = select(Store.open(store).manifest(), where)
    if sort:
        col = sort.removeprefix("-")
        if col not in df.columns:
            raise UsageError(f"cannot sort by unknown column {col!r}")
        df = df.sort_values(col, ascending=not sort.startswith("-"), kind="stable")
    if limit is not None:
        if limit < 0:
            raise UsageError("--limit must be >= 0")
        df = df.head(limit)
    if columns == "all":
        cols = list(df.columns)
    elif columns:
        cols = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in cols if c not in df.columns]
        if unknown:
            raise UsageError(f"unknown column(s) {', '.join(unknown)}; see `bnnctl ls --columns all`")
    else:
        cols = [c for c in DEFAULT_COLUMNS if c in df.columns]
    emit_rows(df[cols] if fmt is not Format.ids else df, fmt)


@command("verify")
def verify_cmd(store: StoreOpt = DEFAULT_STORE, quiet: QuietOpt = False) -> None:
    """Re-hash every checkpoint the manifest names and check manifest, arrays and schema.

    Prints one line per problem (model id, where, what) and exits 1 if there is any.
    Arrays that no manifest row names (leftovers of interrupted runs) are listed on stderr
    but are not problems.

    Example: bnnctl verify --store runs.zarr
    """
    st = Store.open(store)
    problems = st.verify()
    if not problems:
        for path in st.orphan_arrays():
            log(quiet, f"note: {path} is named by no manifest row (left by an interrupted run)")
    for p in problems:
        typer.echo(f"{p.model_id or '-'}\t{p.where}\t{p.message}")
    if problems:
        log(quiet, f"{len(problems)} problem(s) in {st.url}")
        raise typer.Exit(1)
    log(quiet, f"ok: {len(st.manifest())} checkpoints verified in {st.url}")
