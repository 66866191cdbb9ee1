"""R2 — Laurent et al.: trained ReLU nets sit above the minimum-L2-mass point of their
scaling orbit (the paper: ~5-55 %, typically ~30 %). Swept over weight decay on the
default digits MLP; the excess is read from canonicalize's l2_mass_before/after."""

from __future__ import annotations

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    import common
else:
    from reproduce import common

ID = "R2"
TITLE = "Excess L2 mass over the scaling minimum vs weight decay (digits MLP)"
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)


def run(ctx: common.Ctx) -> pd.DataFrame:
    from bnnctl import TrainConfig, load_dataset, train
    from bnnctl.engines.canonicalize import canonicalize

    store = ctx.store()
    ds = load_dataset("digits")
    n, epochs = ctx.pick((3, 3), (48, 50))
    excess: dict[float, np.ndarray] = {}
    rows = []
    for wd in WEIGHT_DECAYS:
        pop = f"wd{wd:g}"
        ctx.log(f"training {n} default digits MLPs, Adam 1e-3, {epochs} epochs, wd {wd:g}")
        res = train(
            store, ds, TrainConfig(epochs=epochs, weight_decay=wd), seeds=range(n), population=pop
        )
        c = canonicalize(store, res.rows)  # default: perm + scale to the L2 minimum
        canon = c.canonical
        before = canon["l2_mass_before"].to_numpy(float)
        after = canon["l2_mass_after"].to_numpy(float)
        e = 100.0 * (before / after - 1.0)
        excess[wd] = e
        q25, med, q75 = np.percentile(e, [25, 50, 75])
        rows.append(
            {
                "weight_decay": wd,
                "n_models": len(e),
                "excess_pct_median": med,
                "excess_pct_q25": q25,
                "excess_pct_q75": q75,
                "excess_pct_iqr": q75 - q25,
                "excess_pct_min": float(e.min()),
                "excess_pct_max": float(e.max()),
                "l2_mass_before_median": float(np.median(before)),
                "l2_mass_after_median": float(np.median(after)),
                "test_acc_median": float(res.rows["test_acc"].median()),
                "max_logit_diff": float(canon["max_logit_diff"].max()),
            }
        )
    table = pd.DataFrame(rows)
    arch = res.rows["arch_name"].iloc[0]
    ctx.note(
        f"{arch} (the digits default), Adam lr 1e-3, batch 128, {epochs} epochs, {n} seeds "
        "per weight decay (torch's coupled L2 on the mean loss)."
    )
    ctx.note(
        "excess % = 100 (L2 before / L2 after - 1), weights only (biases not counted), "
        "after = canonicalize's minimum-L2 scaling (default transform perm + scale)."
    )
    ctx.table(table, "excess_mass", TITLE)
    ctx.figure(plot(excess), "excess_mass")
    return table


def plot(excess: dict[float, np.ndarray]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.boxplot(list(excess.values()), showfliers=True)
    ax.set_xticks(range(1, len(excess) + 1), [f"{k:g}" for k in excess])
    ax.axhspan(5, 55, color="C2", alpha=0.12, label="paper: 5-55 %")
    ax.set(xlabel="weight decay", ylabel="L2 mass above the scaling minimum [%]")
    ax.set_title("R2: excess L2 mass (digits MLP)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
