"""R5 — Laurent et al.: multi-mode versions of each method (chains or fits around several
trained checkpoints) give better predictive performance and uncertainty than single-mode
ones (all around one checkpoint): accuracy, NLL, ECE, Brier, OOD AUPR/FPR95 and pairwise
mutual information (``stats`` with ``ensemble=True, ood='builtin'``). On the digits MLP,
and on OptuNet (the paper's conv net, on which the paper reports this) trained with its
recipe on digits28, the 28x28 stand-in for MNIST."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
    import digits_zoo as zoo
    import optunet_zoo
else:
    from reproduce import common, optunet_zoo
    from reproduce import digits_zoo as zoo

ID = "R5"
TITLE = "Multi-mode vs single-mode, per method (digits MLP; OptuNet on digits28)"
#: The methods run on OptuNet: ``laplace`` refuses conv nets (its last-layer variant runs
#: instead) and ``mc_dropout`` needs dropout, which OptuNet has none of.
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
    from bnnctl.store import select

    rep, _ = compute(store, where=where, ensemble=True, ood="builtin", pairs=pairs, seed=0)
    members = select(store.manifest(), where)
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
        "member_acc_median": float(members["test_acc"].median()),
    }


def run(ctx: common.Ctx) -> pd.DataFrame:
    store = ctx.store()
    pairs = ctx.pick(20, 500)
    rows = mlp_rows(ctx, store, pairs) + optunet_rows(ctx, store, pairs)
    table = pd.DataFrame(rows)
    verdict = []
    for arch, methods in (
        (zoo.arch().name, zoo.METHODS),
        (optunet_zoo.arch().name, optunet_zoo.METHODS),
    ):
        for method in methods:
            t = table[(table["arch"] == arch) & (table["method"] == method)]
            one = t[t["mode"] == "single"].iloc[0]
            many = t[t["mode"] == "multi"].iloc[0]
            wins = [
                m for m, higher in METRICS if (many[m] > one[m] if higher else many[m] < one[m])
            ]
            verdict.append(
                {
                    "arch": arch,
                    "method": method,
                    "multi_better_on": f"{len(wins)}/{len(METRICS)}",
                    "which": " ".join(wins),
                }
            )
    vt = pd.DataFrame(verdict)
    vt.to_csv(ctx.out / f"{ID}_verdict.csv", index=False)
    ctx.note(
        "acc/nll/ece/brier of the BMA predictive; OOD = inverted test images (1 - x, the "
        "builtin set for features in [0, 1]), max-probability score (ood_aupr_mi: "
        "mutual-information score); mi_mean = mean pairwise mutual information over "
        f"{pairs} sampled pairs (diversity); member_acc_median: the models' own test acc."
    )
    ctx.note(
        "multi-mode better on (of acc, nll, ece, brier, ood_aupr, ood_fpr95, mi_mean): "
        + "; ".join(f"{r['arch']} {r['method']} {r['multi_better_on']}" for r in verdict)
    )
    ctx.table(table, "multimode", TITLE)
    ctx.figure(plot(table), "multimode")
    return table


def mlp_rows(ctx: common.Ctx, store, pairs: int) -> list[dict]:
    """The digits MLP: every method single- and multi-mode, and a deep ensemble."""
    k = ctx.pick(2, 16)  # checkpoints of multi-mode runs, and chains of every run
    s = ctx.pick(2, 8)  # samples per chain
    arch = zoo.arch().name
    zoo.train_pop(ctx, store, "starts", range(k))
    zoo.train_pop(ctx, store, "de", range(zoo.GT_SEED, zoo.GT_SEED + k * s))
    rows = [
        {
            "arch": arch,
            "method": "deep ensemble",
            "mode": "multi",
            **measure(store, "population == 'de'", pairs),
        }
    ]
    for method in zoo.METHODS:
        for mode in ("single", "multi"):
            name = zoo.sample_pop(ctx, store, method, mode, k, k, s)
            ctx.log(f"stats: {name}")
            where = zoo.draws(name, method)
            rows.append(
                {"arch": arch, "method": method, "mode": mode, **measure(store, where, pairs)}
            )
    ctx.note(
        f"{arch} (dropout {zoo.DROPOUT}) on digits; every run has {k} chains x "
        f"{s} samples: single-mode from one checkpoint, multi-mode one chain per each of "
        f"{k} checkpoints. Deep ensemble: {k * s} other independently trained checkpoints."
    )
    return rows


def optunet_rows(ctx: common.Ctx, store, pairs: int) -> list[dict]:
    """OptuNet on digits28 with the paper's recipe (R3's seeds): the seeds that learned
    are the deep ensemble; single-mode runs start from the first of them, multi-mode ones
    from the first k (one chain each)."""
    n_seeds, epochs = ctx.pick((4, 20), (48, optunet_zoo.EPOCHS))
    k_max = ctx.pick(2, 16)  # checkpoints of multi-mode runs, and chains of every run
    s = ctx.pick(2, 8)  # samples per chain
    arch = optunet_zoo.arch().name
    learned = optunet_zoo.train_learned(ctx, store, n_seeds, epochs, population="cnn")
    members = learned.members
    k = min(k_max, len(members))
    seeds = [int(v) for v in members["seed"]]
    rows = [
        {
            "arch": arch,
            "method": "deep ensemble",
            "mode": "multi",
            **measure(store, f"population == 'cnn' and seed in {seeds}", pairs),
        }
    ]
    draws, divergent = optunet_zoo.sample_methods(ctx, store, members.iloc[:k], s)
    for (method, mode), where in draws.items():
        ctx.log(f"stats: cnn-{method}-{mode}")
        rows.append({"arch": arch, "method": method, "mode": mode, **measure(store, where, pairs)})
    first = members.iloc[0]
    ctx.note(
        f"{arch} on digits28 (recipe: SGD lr {optunet_zoo.LR}, weight decay "
        f"{optunet_zoo.WEIGHT_DECAY}, batch {optunet_zoo.BATCH_SIZE}, {epochs} epochs, "
        f"x{optunet_zoo.LR_GAMMA} at epochs {optunet_zoo.milestones(epochs) or 'none'}): "
        f"{learned.picked} are the deep ensemble (test acc median "
        f"{members['test_acc'].median():.3f}). Every run has {k} chains x {s} samples: "
        f"single-mode from the first of them ({first['model_id']}, test acc "
        f"{first['test_acc']:.3f}), multi-mode one chain per each of the first {k} (test acc "
        f"median {members['test_acc'].iloc[:k].median():.3f})."
    )
    ctx.note(optunet_zoo.settings_note(ctx, divergent))
    return rows


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt
    import numpy as np

    names = ("acc", "nll", "ece", "ood_aupr")
    archs = list(dict.fromkeys(table["arch"]))
    fig, axes = plt.subplots(len(archs), len(names), figsize=(12, 3.2 * len(archs)), squeeze=False)
    for row, arch in zip(axes, archs, strict=True):
        t = table[table["arch"] == arch]
        methods = [m for m in dict.fromkeys(t["method"]) if m != "deep ensemble"]
        x = np.arange(len(methods))
        for ax, m in zip(row, names, strict=True):
            for j, mode in enumerate(("single", "multi")):
                d = t[t["mode"] == mode].set_index("method").reindex(methods)
                ax.bar(x + (j - 0.5) * 0.4, d[m], 0.4, label=f"{mode}-mode")
            de = t[t["method"] == "deep ensemble"][m].iloc[0]
            ax.axhline(de, color="k", lw=1, ls="--", label="deep ensemble")
            ax.set_xticks(x, methods, rotation=30, fontsize=7)
            ax.set_title(f"{arch}: {m}", fontsize=9)
    fig.suptitle("R5: single- vs multi-mode (MLP on digits, OptuNet on digits28)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
