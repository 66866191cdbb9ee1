"""R2 — Laurent et al.: trained ReLU nets sit above the minimum-L2-mass point of their
scaling orbit (the paper: ~5-55 %, typically ~30 %). Swept over weight decay on the
default digits MLP, plus OptuNet trained with the paper's recipe on digits28 (the
embedded 28x28 stand-in for MNIST); the excess is read from canonicalize's
l2_mass_before/after."""

from __future__ import annotations

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    import common
    import optunet_zoo
else:
    from reproduce import common, optunet_zoo

ID = "R2"
TITLE = "Excess L2 mass over the scaling minimum (digits MLP by weight decay; OptuNet)"
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
#: OptuNets under this test accuracy did not learn on the small stand-in (the paper's
#: release keeps only runs that did, 75-85 % on MNIST): reported apart.
LEARNED_ACC = optunet_zoo.LEARNED_ACC


def excess_pct(canon: pd.DataFrame) -> np.ndarray:
    """100 (L2 before / L2 after - 1) of canonical rows."""
    before = canon["l2_mass_before"].to_numpy(float)
    return 100.0 * (before / canon["l2_mass_after"].to_numpy(float) - 1.0)


def summary_row(name: str, dataset: str, wd: float, canon: pd.DataFrame) -> dict:
    e = excess_pct(canon)
    q25, med, q75 = np.percentile(e, [25, 50, 75])
    return {
        "population": name,
        "dataset": dataset,
        "weight_decay": wd,
        "n_models": len(e),
        "excess_pct_median": med,
        "excess_pct_q25": q25,
        "excess_pct_q75": q75,
        "excess_pct_iqr": q75 - q25,
        "excess_pct_min": float(e.min()),
        "excess_pct_max": float(e.max()),
        "l2_mass_before_median": float(canon["l2_mass_before"].median()),
        "l2_mass_after_median": float(canon["l2_mass_after"].median()),
        "test_acc_median": float(canon["test_acc"].median()),
        "max_logit_diff": float(canon["max_logit_diff"].max()),
    }


def run(ctx: common.Ctx) -> pd.DataFrame:
    from bnnctl import TrainConfig, load_dataset, train
    from bnnctl.engines.canonicalize import canonicalize

    store = ctx.store()
    ds = load_dataset("digits")
    n, epochs = ctx.pick((3, 3), (48, 50))
    n_conv, conv_epochs = ctx.pick((2, 1), (32, 60))
    runs = [
        (f"wd{wd:g}", f"{wd:g}", ds, None, TrainConfig(epochs=epochs, weight_decay=wd), n)
        for wd in WEIGHT_DECAYS
    ]
    # OptuNet's recipe (SGD 0.04, weight decay 2e-4, batch 64, x0.5 at epochs 15 and 30)
    milestones = optunet_zoo.milestones(conv_epochs)
    recipe = optunet_zoo.recipe(conv_epochs)
    runs.append(("optunet", "optunet", optunet_zoo.dataset(), optunet_zoo.arch(),
                 recipe, n_conv))  # fmt: skip
    excess: dict[str, np.ndarray] = {}
    rows = []
    for pop, label, data, arch, cfg, k in runs:
        ctx.log(f"training {k} x {pop} on {data.name}, {cfg.optimizer} {cfg.lr:g}, "
                f"{cfg.epochs} epochs, wd {cfg.weight_decay:g}")  # fmt: skip
        res = train(store, data, cfg, seeds=range(k), arch=arch, population=pop)
        canon = canonicalize(store, res.rows).canonical  # perm + scale to the L2 minimum
        parts = [(label, canon)]
        if arch is not None:  # OptuNet: those that learned, apart from those that did not
            learned = canon["test_acc"] >= LEARNED_ACC
            parts = [
                (f"{label} acc>={LEARNED_ACC:g}", canon[learned]),
                (f"{label} acc<{LEARNED_ACC:g}", canon[~learned]),
            ]
        for name, part in parts:
            if len(part):
                excess[name] = excess_pct(part)
                rows.append(summary_row(name, data.name, cfg.weight_decay, part))
    table = pd.DataFrame(rows)
    ctx.note(
        f"MLP rows: the digits default, Adam lr 1e-3, batch 128, {epochs} epochs, {n} seeds "
        "per weight decay (torch's coupled L2 on the mean loss). OptuNet rows: "
        f"{n_conv} seeds on digits28 (a stand-in for MNIST), SGD lr 0.04, weight decay "
        f"2e-4, batch 64, {conv_epochs} epochs, x0.5 at epochs {milestones or 'none'}; "
        f"split at test accuracy {LEARNED_ACC:g} (the small stand-in leaves many at chance)."
    )
    ctx.note(
        "excess % = 100 (L2 before / L2 after - 1), weights only (biases not counted), "
        "after = canonicalize's minimum-L2 scaling (default transform perm + scale)."
    )
    ctx.table(table, "excess_mass", TITLE)
    ctx.figure(plot(excess), "excess_mass")
    return table


def plot(excess: dict[str, np.ndarray]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.boxplot(list(excess.values()), showfliers=True)
    ax.set_xticks(range(1, len(excess) + 1), list(excess), fontsize=7)
    ax.axhspan(5, 55, color="C2", alpha=0.12, label="paper: 5-55 %")
    ax.set(xlabel="weight decay", ylabel="L2 mass above the scaling minimum [%]")
    ax.set_title("R2: excess L2 mass (digits MLP; OptuNet on digits28)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
