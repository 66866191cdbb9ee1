"""What every command shares: the app, error handling, store and quiet options,
progress bars on stderr and row output on stdout."""

from __future__ import annotations

import functools
import io
import json
import os
import sys
from enum import Enum
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bnnctl.errors import BnnctlError, UsageError
from bnnctl.store import select  # noqa: F401  (re-exported for the command modules)

app = typer.Typer(
    name="bnnctl",
    help=(
        "Build and query datasets of thousands of neural-network checkpoints: train many "
        "seeds at once, sample posteriors, canonicalize symmetries, measure and export.\n\n"
        "Example: bnnctl train --seeds 3072 && bnnctl ls --where 'test_acc > 0.97'"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

err = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        from bnnctl import FORMAT_VERSION, __version__

        typer.echo(f"bnnctl {__version__} (store format {FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Build and query datasets of thousands of neural-network checkpoints."""

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store", envvar="BNNCTL_STORE", help="Store path or fsspec URL (env BNNCTL_STORE)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]
WhereOpt = Annotated[
    str | None,
    typer.Option("--where", "-w", help="pandas query over manifest columns, e.g. \"test_acc > 0.97\"."),
]
DEFAULT_STORE = "bnnctl.zarr"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    ids = "ids"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format of rows.")]


def command(*args, **kwargs):
    """Register a command whose BnnctlErrors become one line on stderr and an exit code."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except BnnctlError as e:
                err.print(f"error: {e}", markup=False, soft_wrap=True)
                raise typer.Exit(e.exit_code) from None
            except BrokenPipeError:  # `| head` closed the pipe: end quietly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                raise typer.Exit(0) from None

        return app.command(*args, **kwargs)(run)

    return wrap


def show_progress(quiet: bool) -> bool:
    return not quiet and err.is_terminal


def progress_bar(quiet: bool, unit: str = "models") -> Progress:
    """A rich progress bar on stderr (disabled when quiet or not a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[todo]} " + unit),
        TextColumn("{task.fields[rate]}"),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        disable=not show_progress(quiet),
        transient=False,
    )


def log(quiet: bool, message: str) -> None:
    if not quiet:
        err.print(message, markup=False, soft_wrap=True)


def read_ids(ids: str) -> list[str]:
    """Ids from a comma list, or from stdin when ``-`` (one per line or whitespace)."""
    text = sys.stdin.read() if ids == "-" else ids.replace(",", " ")
    out = [t for t in text.split() if t]
    if not out:
        raise UsageError("no model ids given")
    return out


def emit_rows(df: pd.DataFrame, fmt: Format, title: str | None = None) -> None:
    """Write rows to stdout in the chosen format (table only renders on stdout)."""
    if fmt is Format.ids:
        text = "".join(f"{m}\n" for m in df["model_id"])
    elif fmt is Format.csv:
        text = df.to_csv(index=False)
    elif fmt is Format.json:
        text = json.dumps(records(df), indent=2) + "\n"
    elif fmt is Format.jsonl:
        text = "".join(json.dumps(r) + "\n" for r in records(df))
    else:
        table = Table(title=title)
        for c in df.columns:
            table.add_column(c, overflow="fold")
        for r in df.itertuples(index=False):
            table.add_row(*(fmt_cell(v) for v in r))
        Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200).print(table)
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe records: nulls as null, timestamps as ISO 8601."""
    return json.loads(df.to_json(orient="records", date_format="iso"))


def fmt_cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def dump_json(obj) -> None:
    buf = io.StringIO()
    json.dump(obj, buf, indent=2, default=str)
    sys.stdout.write(buf.getvalue() + "\n")
