"""R5 — Laurent et al.: multi-mode versions of each method (chains or fits around several
trained checkpoints) give better predictive performance and uncertainty than single-mode
ones (all around one checkpoint): accuracy, NLL, ECE, Brier, OOD AUPR/FPR95 and pairwise
mutual information (``stats`` with ``ensemble=True, ood='builtin'``)."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
    import digits_zoo as zoo
else:
    from reproduce import common
    from reproduce import digits_zoo as zoo

ID = "R5"
TITLE = "Multi-mode vs single-mode, per method (digits MLP)"
#: (column, True when higher is better)
METRICS = (
    ("acc", True),
    ("nll", False),
    ("ece", False),
    ("brier", False),
    ("ood_aupr", True),
    ("ood_fpr95", False),
    ("mi_mean", True),
)


def measure(store, where: str, pairs: int) -> dict:
    from bnnctl.stats.report import compute

    rep, _ = compute(store, where=where, ensemble=True, ood="builtin", pairs=pairs, seed=0)
    bma = rep["ensemble"]["bma"]
    ood = rep["ood"]["scores"]["max_prob"]
    div = rep["ensemble"]["diversity"]
    return {
        "n": rep["n_models"],
        "acc": bma["acc"],
        "nll": bma["nll"],
        "ece": bma["ece"],
        "brier": bma["brier"],
        "ood_aupr": ood["aupr"],
        "ood_fpr95": ood["fpr95"],
        "ood_aupr_mi": rep["ood"]["scores"]["mutual_information"]["aupr"],
        "mi_mean": div["mutual_information"]["mean"] if div else None,
    }


def run(ctx: common.Ctx) -> pd.DataFrame:
    store = ctx.store()
    k = ctx.pick(2, 16)  # checkpoints of multi-mode runs, and chains of every run
    s = ctx.pick(2, 8)  # samples per chain
    pairs = ctx.pick(20, 500)
    zoo.train_pop(ctx, store, "starts", range(k))
    zoo.train_pop(ctx, store, "de", range(zoo.GT_SEED, zoo.GT_SEED + k * s))
    rows = [
        {
            "method": "deep ensemble",
            "mode": "multi",
            **measure(store, "population == 'de'", pairs),
        }
    ]
    for method in zoo.METHODS:
        for mode in ("single", "multi"):
            name = zoo.sample_pop(ctx, store, method, mode, k, k, s)
            ctx.log(f"stats: {name}")
            rows.append(
                {"method": method, "mode": mode, **measure(store, zoo.draws(name, method), pairs)}
            )
    table = pd.DataFrame(rows)
    verdict = []
    for method in zoo.METHODS:
        one = table[(table["method"] == method) & (table["mode"] == "single")].iloc[0]
        many = table[(table["method"] == method) & (table["mode"] == "multi")].iloc[0]
        wins = [m for m, higher in METRICS if (many[m] > one[m] if higher else many[m] < one[m])]
        verdict.append(
            {
                "method": method,
                "multi_better_on": f"{len(wins)}/{len(METRICS)}",
                "which": " ".join(wins),
            }
        )
    vt = pd.DataFrame(verdict)
    vt.to_csv(ctx.out / f"{ID}_verdict.csv", index=False)
    ctx.note(
        f"{zoo.arch().name} (dropout {zoo.DROPOUT}) on digits; every run has {k} chains x "
        f"{s} samples: single-mode from one checkpoint, multi-mode one chain per each of "
        f"{k} checkpoints. Deep ensemble: {k * s} other independently trained checkpoints."
    )
    ctx.note(
        "acc/nll/ece/brier of the BMA predictive; OOD = inverted digits, max-probability "
        "score (ood_aupr_mi: mutual-information score); mi_mean = mean pairwise mutual "
        f"information over {pairs} sampled pairs (diversity)."
    )
    ctx.note(
        "multi-mode better on (of acc, nll, ece, brier, ood_aupr, ood_fpr95, mi_mean): "
        + "; ".join(f"{r['method']} {r['multi_better_on']}" for r in verdict)
    )
    ctx.table(table, "multimode", TITLE)
    ctx.figure(plot(table), "multimode")
    return table


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt
    import numpy as np

    names = ("acc", "nll", "ece", "ood_aupr")
    fig, axes = plt.subplots(1, len(names), figsize=(12, 3.2))
    methods = list(zoo.METHODS)
    x = np.arange(len(methods))
    for ax, m in zip(axes, names, strict=True):
        for j, mode in enumerate(("single", "multi")):
            d = table[table["mode"] == mode].set_index("method").reindex(methods)
            ax.bar(x + (j - 0.5) * 0.4, d[m], 0.4, label=f"{mode}-mode")
        de = table[table["method"] == "deep ensemble"][m].iloc[0]
        ax.axhline(de, color="k", lw=1, ls="--", label="deep ensemble")
        ax.set_xticks(x, methods, rotation=30, fontsize=7)
        ax.set_title(m, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.suptitle("R5: single- vs multi-mode", fontsize=10)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
