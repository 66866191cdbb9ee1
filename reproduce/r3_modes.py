"""R3 — Laurent et al.: counting distinct modes before and after symmetry removal, for a
deep ensemble, for the samples of one SGHMC chain, and for multi-mode SGHMC (chains
started from several trained checkpoints)."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
    import digits_zoo as zoo
else:
    from reproduce import common
    from reproduce import digits_zoo as zoo

ID = "R3"
TITLE = "Distinct modes before/after symmetry removal (digits MLP)"
#: Relative merge tolerances: 0.05 is bnnctl's default; larger ones merge more.
TOLERANCES = (0.05, 0.2, 0.5)


def run(ctx: common.Ctx) -> pd.DataFrame:
    from bnnctl.engines.canonicalize import canonicalize
    from bnnctl.stats.modes import modes_report
    from bnnctl.store import select

    store = ctx.store()
    n = ctx.pick(4, 64)  # members of each population
    k = ctx.pick(2, 16)  # starting checkpoints of multi-mode SGHMC
    zoo.train_pop(ctx, store, "de", range(zoo.GT_SEED, zoo.GT_SEED + n))
    zoo.train_pop(ctx, store, "starts", range(k))
    zoo.sample_pop(ctx, store, "sghmc", "single", 1, 1, n)  # one chain, n samples
    zoo.sample_pop(ctx, store, "sghmc", "multi", k, k, n // k)
    ctx.log("canonicalizing (perm + scale to the L2 minimum)")
    canonicalize(store)
    pops = {
        "deep ensemble": "population == 'de'",
        "SGHMC, one chain": zoo.draws("sghmc-single", "sghmc"),
        f"SGHMC, multi-mode ({k} chains from {k} checkpoints)": zoo.draws("sghmc-multi", "sghmc"),
    }
    rows = []
    for label, where in pops.items():
        for tol in TOLERANCES:
            rep = modes_report(store, select(store.manifest(), where), tol)
            assert rep is not None, where
            (tag, after), *_ = rep["after"].items()
            rows.append(
                {
                    "population": label,
                    "tolerance": tol,
                    "n_rows": rep["before"]["n_rows"],
                    "modes_before": rep["before"]["n_modes"],
                    "modes_after": after["n_modes"],
                    "transform": tag,
                    "l2_excess_pct_median": (rep["l2_mass_excess_pct"] or {}).get("median"),
                }
            )
    table = pd.DataFrame(rows)
    ctx.note(
        f"{zoo.arch().name} (dropout {zoo.DROPOUT} in training), Adam 1e-3, weight decay "
        f"{zoo.WEIGHT_DECAY}; SGHMC at the matching prior (variance "
        f"{zoo.prior_var(len(zoo.dataset().y_train)):.3g}), step 1e-5, thinning "
        f"{ctx.pick(2, 20)}."
    )
    ctx.note(
        "modes: single-linkage clusters with ||a-b|| <= tol * sqrt((||a||^2+||b||^2)/2) "
        "(bnnctl.stats.modes.modes_report, the stats report's `modes` section)."
    )
    ctx.table(table, "modes", TITLE)
    ctx.figure(plot(table), "modes")
    return table


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    table = table[table["tolerance"] == TOLERANCES[0]]
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["modes_before"], 0.4, label="before")
    ax.bar(x + 0.2, table["modes_after"], 0.4, label="after symmetry removal")
    ax.plot(x, table["n_rows"], "k_", markersize=30, label="members")
    ax.set_xticks(x, [p.split(" (")[0] for p in table["population"]], fontsize=8)
    ax.set(ylabel="distinct modes")
    ax.set_title(f"R3: distinct modes (tolerance {TOLERANCES[0]})", fontsize=10)
    ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
