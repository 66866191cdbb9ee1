"""`bnnctl canonicalize`."""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bnnctl.canonicalize import MODE_RTOL, canonicalize
from bnnctl.cli.common import (
    DEFAULT_STORE,
    QuietOpt,
    StoreOpt,
    WhereOpt,
    command,
    fmt_cell,
    log,
    progress_bar,
    select,
)
from bnnctl.store import Store
from bnnctl.symmetry import DEFAULT_KEY, KEYS


class ReportFormat(str, Enum):
    table = "table"
    json = "json"


@command("canonicalize")
def canonicalize_cmd(
    where: WhereOpt = None,
    symmetries: Annotated[
        str | None,
        typer.Option(
            "--symmetries",
            help="Comma list of perm, scale (relu, leaky_relu), sign (tanh); default: all of the arch's.",
        ),
    ] = None,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            help=f"Sort key of hidden units: {', '.join(KEYS)} (pc: projection on the leading principal direction; weight0, mean: the paper's).",
        ),
    ] = DEFAULT_KEY,
    scale_mode: Annotated[
        str,
        typer.Option(
            "--scale-mode",
            help="l2: minimum L2 mass over scalings (biases rescaled, not counted); unitnorm: unit incoming norm.",
        ),
    ] = "l2",
    align_to: Annotated[
        str | None,
        typer.Option(
            "--align-to",
            help="Instead of sorting, match units to this model id (Git Re-Basin weight matching).",
        ),
    ] = None,
    mode_tol: Annotated[
        float,
        typer.Option(
            "--mode-tol",
            help="Canonical models a, b with |a-b| <= this x sqrt((|a|^2+|b|^2)/2) are one mode.",
        ),
    ] = MODE_RTOL,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="Report format: table or json.")
    ] = ReportFormat.table,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Take permutation, scaling and sign symmetries out of checkpoints, as new rows.

    Each selected row (default: every row that is not canonical) gets a canonical copy
    (kind canonical, parent_id = source), checked to give the same outputs on the
    population's test data; re-running skips what is done. Prints a report: excess L2
    mass over the scaling minimum, distinct modes, near-ties, max function difference.

    Example: bnnctl canonicalize --where "method == 'adam'" --symmetries perm,scale --format json
    """
    st = Store.open(store)
    man = st.manifest()
    sources = select(man, where) if where else None
    syms = symmetries.split(",") if symmetries is not None else None
    t0 = time.perf_counter()
    with progress_bar(quiet) as bar:
        task = bar.add_task("canonicalize", total=None, done=0, todo="?", rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            done = bar.tasks[task].completed
            bar.update(
                task, done=int(done), rate=f"{done / (time.perf_counter() - t0):.0f} models/s"
            )

        res = canonicalize(
            st, sources, syms, key, scale_mode, align_to, mode_rtol=mode_tol, progress=advance
        )
    elapsed = time.perf_counter() - t0
    log(
        quiet,
        f"{len(res.rows)} new rows ({res.skipped} already done, skipped) of "
        f"{res.requested} source rows in {elapsed:.1f} s; store {store}",
    )
    render(res.report, fmt)


def render(rep: dict, fmt: ReportFormat) -> None:
    """The report: a two-column table, or JSON on stdout."""
    if fmt is ReportFormat.json:
        sys.stdout.write(json.dumps(rep, indent=2) + "\n")
        return
    table = Table(title="canonicalize")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in rep.items():
        table.add_row(k, ", ".join(v) if isinstance(v, list) else fmt_cell(v))
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120).print(table)
