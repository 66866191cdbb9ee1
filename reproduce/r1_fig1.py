"""R1 — Laurent et al. (ICLR 2024) Fig. 1: the first-layer incoming weights of 2-2-1 ReLU
nets on 2-D data are a cloud; removing the scaling symmetry (unit-norm incoming weights)
puts them on a ring; removing the permutation symmetry too (sorting the two hidden units
by their first incoming weight) leaves a half-ring."""

from __future__ import annotations

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    import common
else:
    from reproduce import common

ID = "R1"
TITLE = "Fig. 1: 2-2-1 nets, raw -> unit-norm scaling -> sorting"
#: Models whose final full-batch training NLL is at or above this are dropped (the paper
#: keeps converged models only; its threshold is not stated in the text).
LOSS_THRESHOLD = 0.4
DISPLAY_SCALE = 3.0  # the paper multiplies unit-norm weights by 3 for display


def first_layer(params: np.ndarray) -> np.ndarray:
    """[n, 9] rows of mlp:2-2-1 -> [n, unit, input] incoming weights (``0.weight`` is
    [out, in] at offset 0)."""
    return params[:, :4].reshape(len(params), 2, 2)


def stage_row(stage: str, w: np.ndarray) -> dict:
    r = np.linalg.norm(w, axis=2).ravel()
    u0, u1 = w[:, 0, :], w[:, 1, :]
    return {
        "stage": stage,
        "n_models": len(w),
        "n_points": int(r.size),
        "radius_mean": float(r.mean()),
        "radius_cv": float(r.std() / r.mean()),
        # the sorting boundary: unit 0's key (first incoming weight) vs unit 1's
        "frac_unit0_key_ge_unit1": float(np.mean(u0[:, 0] >= u1[:, 0])),
        # the half-ring: which side of the line w_input1 = 0 unit 0's points lie on
        "frac_unit0_w1_pos": float(np.mean(u0[:, 0] > 0)),
        "frac_unit1_w1_pos": float(np.mean(u1[:, 0] > 0)),
    }


def run(ctx: common.Ctx) -> pd.DataFrame:
    from bnnctl import ArchSpec, TrainConfig, load_dataset, train
    from bnnctl.engines.canonicalize import canonicalize

    store = ctx.store()
    arch = ArchSpec((2, 2, 1))
    cfg = TrainConfig(optimizer="sgd", lr=2.0, momentum=0.0, batch_size=10, epochs=10)
    n = ctx.pick(128, 4096)
    ctx.log(f"training {n} mlp:2-2-1 on moons (SGD lr 2, batch 10, 10 epochs)")
    train(store, load_dataset("moons"), cfg, seeds=range(n), arch=arch, block_size=1024)
    man = store.manifest()
    kept = man[(man["kind"] == "train") & (man["train_nll"] < LOSS_THRESHOLD)]
    kept = kept.sort_values("model_id")
    ctx.log(f"{len(kept)}/{n} models with training NLL < {LOSS_THRESHOLD}")
    scaled = canonicalize(store, kept, symmetries=["scale"], scale_mode="unitnorm")
    sorted_ = canonicalize(
        store, kept, symmetries=["perm", "scale"], scale_mode="unitnorm", key="weight0"
    )

    def weights_of(res) -> np.ndarray:
        rows = res.canonical.set_index("parent_id").loc[kept["model_id"]].reset_index()
        return first_layer(store.read_params(rows))

    stages = {
        "raw": first_layer(store.read_params(kept)),
        "unitnorm scaling": weights_of(scaled),
        "unitnorm scaling + sorting": weights_of(sorted_),
    }
    table = pd.DataFrame([stage_row(k, v) for k, v in stages.items()])
    table.insert(1, "n_trained", n)
    table.insert(2, "loss_threshold", LOSS_THRESHOLD)
    ctx.note(
        f"{len(kept)} of {n} models kept (full-batch training NLL < {LOSS_THRESHOLD}); "
        "moons, 400 training points, SGD lr 2, momentum 0, batch 10, 10 epochs."
    )
    ctx.note("radius_cv: std/mean of the incoming-weight norms of all hidden units.")
    ctx.note(
        "sorting: canonicalize(symmetries=['perm','scale'], scale_mode='unitnorm', "
        "key='weight0'), the paper's key (first incoming weight)."
    )
    ctx.table(table, "fig1", TITLE)
    ctx.figure(plot(stages), "fig1")
    return table


def plot(stages: dict[str, np.ndarray]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
    for ax, (name, w) in zip(axes, stages.items(), strict=True):
        s = 1.0 if name == "raw" else DISPLAY_SCALE
        for unit, colour in ((0, "C0"), (1, "C1")):
            ax.scatter(
                s * w[:, unit, 0], s * w[:, unit, 1], s=2, alpha=0.4, c=colour, label=f"unit {unit}"
            )
        lim = max(3.5, float(np.quantile(np.abs(s * w), 0.995)) * 1.05)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.set_title(name + ("" if s == 1 else f" (x{s:g})"), fontsize=9)
        ax.set_xlabel("weight from input 1", fontsize=8)
        ax.set_ylabel("weight from input 2", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, markerscale=4)
    fig.suptitle("R1: first-layer incoming weights of 2-2-1 ReLU nets (moons)", fontsize=10)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
