"""`bnnctl stats`."""

from __future__ import annotations

import csv
import sys
from typing import Annotated

import typer

from bnnctl.cli.common import (
    DEFAULT_STORE,
    AsOfOpt,
    DeviceOpt,
    FormatFlag,
    QuietOpt,
    SchedulerOpt,
    StatsFormat,
    StoreOpt,
    WhereOpt,
    command,
    dump_json,
    log,
    print_table,
)


@command("stats", flags={"compare_exprs": "--compare"})
def stats_cmd(
    where: WhereOpt = None,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble",
            help=(
                "Re-evaluate the selection: BMA metrics and curve, pairwise MI/disagreement, modes."
            ),
        ),
    ] = False,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--compare",
            help=(
                "Two --where expressions A B, each over the whole store: agreement and total "
                "variation of their BMAs, weight-space MMD^2 before/after canonicalisation."
            ),
        ),
    ] = None,
    ood: Annotated[
        str | None,
        typer.Option(
            "--ood",
            help=(
                "'builtin' (inverted test images for [0,1] features, else test points pushed "
                "out 3x from the mean) or an .npz with x [N, features]: AUROC/AUPR/FPR95."
            ),
        ),
    ] = None,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Write PNG figures into this folder.")
    ] = None,
    pairs: Annotated[
        int,
        typer.Option("--pairs", help="Model pairs sampled for pairwise MI (all pairs when fewer)."),
    ] = 1000,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of pair, member-order and MMD subsampling.")
    ] = 0,
    fmt: Annotated[StatsFormat, FormatFlag] = StatsFormat.table,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "auto",
    as_of: AsOfOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Measure a selection: manifest summaries, BMA and diversity, comparisons, OOD, plots.

    Without options: per-population summaries of the recorded test metrics. --ensemble,
    --ood and --plot re-evaluate the models on the data stored with their population.
    --format json has a stable shape (bnnctl.stats.report.JSON_SHAPE); csv is
    section,key,value.

    Example: bnnctl stats --where "method == 'adam'" --ensemble --ood builtin --format json
    """
    from bnnctl.stats.report import compute
    from bnnctl.stats.summary import flatten
    from bnnctl.store import Store

    rep, _ = compute(
        Store.open(store, as_of=as_of),
        where,
        ensemble,
        compare,
        ood,
        pairs,
        seed,
        plot=plot or False,
        scheduler=scheduler,
        device=device,
    )
    if plot is not None:
        log(quiet, f"wrote {len(rep['plots'])} figures to {plot}")
    if fmt is StatsFormat.json:
        dump_json(rep)
    elif fmt is StatsFormat.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["section", "key", "value"])
        for key, value in flatten({k: v for k, v in rep.items() if k != "format"}):
            section, _, rest = key.partition(".")
            w.writerow([section, rest, "" if value is None else value])
    else:
        render(rep)


def render(rep: dict) -> None:
    """The report as tables on stdout."""
    from bnnctl.stats.summary import flatten

    groups = rep["summary"]["groups"]
    title = f"{rep['n_models']} checkpoints" + (f" where {rep['where']}" if rep["where"] else "")
    print_table([c.replace("test_", "") for c in groups[0]], (g.values() for g in groups), title)
    ens = rep["ensemble"]
    if ens and ens["curve"]:
        curve = ens["curve"]
        print_table(list(curve[0]), (r.values() for r in curve), "BMA vs number of members")
    for section in ("evaluation", "ensemble", "modes", "ood", "compare", "plots"):
        if not rep[section]:
            continue
        body = rep[section]
        if section == "ensemble":
            body = {k: v for k, v in body.items() if k != "curve"}
        print_table(["key", "value"], flatten(body), section)
