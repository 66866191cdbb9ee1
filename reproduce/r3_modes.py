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
PLOT_TOLERANCE = 0.2


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
    man = store.manifest()
    ref = man[(man["population"] == "de") & (man["seed"] == zoo.GT_SEED)]["model_id"].iloc[0]
    ctx.log(f"aligning to {ref} (weight matching)")
    canonicalize(store, "kind != 'canonical'", align_to=ref)
    # which half of the canonical form separates samples: sorting alone, scaling alone
    tags = {
        part: canonicalize(store, "kind != 'canonical'", symmetries=[part]).report["transforms"][0]
        for part in ("perm", "scale")
    }
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
            after = rep["after"]
            rows.append(
                {
                    "population": label,
                    "tolerance": tol,
                    "n_rows": rep["before"]["n_rows"],
                    "modes_before": rep["before"]["n_modes"],
                    "modes_after": after["canon"]["n_modes"],
                    "modes_after_alignment": after[f"align-{ref}"]["n_modes"],
                    "modes_after_perm_only": after[tags["perm"]]["n_modes"],
                    "modes_after_scale_only": after[tags["scale"]]["n_modes"],
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
        "modes_after: canonical forms (perm, key mean, + scale to the L2 minimum); "
        f"modes_after_alignment: every model weight-matched (align_to) to {ref}; "
        "perm_only / scale_only: canonicalize with that symmetry alone."
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
    table = table[table["tolerance"] == PLOT_TOLERANCE]
    x = np.arange(len(table))
    ax.bar(x - 0.27, table["modes_before"], 0.27, label="before")
    ax.bar(x, table["modes_after"], 0.27, label="canonical (sorted)")
    ax.bar(x + 0.27, table["modes_after_alignment"], 0.27, label="aligned (weight matching)")
    ax.plot(x, table["n_rows"], "k_", markersize=30, label="members")
    ax.set_xticks(x, [p.split(" (")[0] for p in table["population"]], fontsize=8)
    ax.set(ylabel="distinct modes")
    ax.set_title(f"R3: distinct modes (tolerance {PLOT_TOLERANCE})", fontsize=10)
    ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
