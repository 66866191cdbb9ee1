"""`bnnctl stats`."""

from __future__ import annotations

import csv
import sys
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bnnctl import stats as stats_mod
from bnnctl.cli.common import DEFAULT_STORE, QuietOpt, StoreOpt, WhereOpt, command, dump_json, fmt_cell, log
from bnnctl.store import Store


class StatsFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@command("stats")
def stats_cmd(
    where: WhereOpt = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Re-evaluate the selection: BMA metrics and curve, pairwise MI/disagreement, modes.")] = False,
    compare: Annotated[tuple[str, str] | None, typer.Option("--compare", help="Two expressions A B, each over the whole store: agreement and total variation of their BMAs, weight-space MMD^2 before/after canonicalisation.")] = None,
    ood: Annotated[str | None, typer.Option("--ood", help="'builtin' (inverted test images for [0,1] features, else test points pushed out 3x from the mean) or an .npz with x [N, features]: AUROC/AUPR/FPR95.")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write PNG figures into this folder.")] = None,
    pairs: Annotated[int, typer.Option("--pairs", help="Model pairs sampled for pairwise MI (all pairs when fewer).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of pair, member-order and MMD subsampling.")] = 0,
    fmt: Annotated[StatsFormat, typer.Option("--format", "-f", help="table, json (stable shape, see bnnctl.stats.JSON_SHAPE) or csv (section,key,value).")] = StatsFormat.table,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Measure a selection: manifest summaries, BMA and diversity, comparisons, OOD, plots.

    Without options: per-population summaries of the recorded test metrics. --ensemble,
    --ood and --plot re-evaluate the models on the data stored with their population.

    Example: bnnctl stats --where "method == 'adam'" --ensemble --ood builtin --format json
    """
    st = Store.open(store)
    rep, ctx = stats_mod.compute(st, where, ensemble, compare, ood, pairs, seed, plot=plot is not None)
    if plot is not None:
        from bnnctl import plots

        rep["plots"] = [str(p) for p in plots.write_all(st, ctx, plot)]
        log(quiet, f"wrote {len(rep['plots'])} figures to {plot}")
    if fmt is StatsFormat.json:
        dump_json(rep)
    elif fmt is StatsFormat.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["section", "key", "value"])
        for key, value in stats_mod.flatten({k: v for k, v in rep.items() if k != "format"}):
            section, _, rest = key.partition(".")
            w.writerow([section, rest, "" if value is None else value])
    else:
        render(rep)


def render(rep: dict) -> None:
    """The report as rich tables on stdout."""
    out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    groups = rep["summary"]["groups"]
    t = Table(title=f"{rep['n_models']} checkpoints" + (f" where {rep['where']}" if rep["where"] else ""))
    for c in groups[0]:
        t.add_column(c.replace("test_", ""), overflow="fold")
    for g in groups:
        t.add_row(*(fmt_cell(v) for v in g.values()))
    out.print(t)
    ens = rep["ensemble"]
    if ens and ens["curve"]:
        t = Table(title="BMA vs number of members")
        for c in ens["curve"][0]:
            t.add_column(c)
        for r in ens["curve"]:
            t.add_row(*(fmt_cell(v) for v in r.values()))
        out.print(t)
    for section in ("evaluation", "ensemble", "modes", "ood", "compare", "plots"):
        if not rep[section]:
            continue
        body = {k: v for k, v in rep[section].items() if k != "curve"} if section == "ensemble" else rep[section]
        t = Table(title=section)
        t.add_column("key")
        t.add_column("value", overflow="fold")
        for k, v in stats_mod.flatten(body):
            t.add_row(k, fmt_cell(v))
        out.print(t)
