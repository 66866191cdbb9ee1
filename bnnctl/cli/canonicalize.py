"""`bnnctl canonicalize`."""

from __future__ import annotations

from typing import Annotated

import typer

from bnnctl.cli.common import (
    DEFAULT_STORE,
    DeviceOpt,
    FormatFlag,
    QuietOpt,
    ReportFormat,
    SchedulerOpt,
    StoreOpt,
    WhereOpt,
    command,
    dump_json,
    log,
    print_table,
    progress,
)
from bnnctl.symmetry.modes import MODE_RTOL
from bnnctl.symmetry.transform import Key, ScaleMode


@command("canonicalize", flags={"mode_rtol": "--mode-tol", "sources": "--where"})
def canonicalize_cmd(
    where: WhereOpt = None,
    symmetries: Annotated[
        str | None,
        typer.Option(
            "--symmetries",
            help=(
                "Comma list of perm, scale (relu, leaky_relu), sign (tanh); default: all of "
                "the arch's."
            ),
        ),
    ] = None,
    key: Annotated[
        Key,
        typer.Option(
            "--key",
            help="Sort key of hidden units (mean, weight0: the paper's; pc: projection on the "
            "leading principal direction, steadier under noise but it can split a population "
            "into mirrored clusters).",
        ),
    ] = Key.mean,
    scale_mode: Annotated[
        ScaleMode,
        typer.Option(
            "--scale-mode",
            help="l2: minimum L2 mass over scalings (biases rescaled, not counted); "
            "unitnorm: unit incoming norm.",
        ),
    ] = ScaleMode.l2,
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
    fmt: Annotated[ReportFormat, FormatFlag] = ReportFormat.table,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "auto",
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
    from bnnctl.engines.canonicalize import canonicalize

    syms = symmetries.split(",") if symmetries is not None else None
    with progress(quiet, "canonicalize", None) as advance:
        res = canonicalize(
            store,
            where,
            syms,
            key.value,
            scale_mode.value,
            align_to,
            mode_rtol=mode_tol,
            progress=advance,
            scheduler=scheduler,
            device=device,
        )
    log(
        quiet,
        f"{len(res.rows)} new rows ({res.skipped} already done, skipped) of "
        f"{res.requested} source rows; store {store}",
    )
    if fmt is ReportFormat.json:
        dump_json(res.report)
    else:
        print_table(["measure", "value"], res.report.items(), "canonicalize", 120, ["value"])
