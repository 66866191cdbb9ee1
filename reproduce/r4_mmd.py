"""R4 — Laurent et al.: weight-space MMD between each approximation and a ground truth of
independently trained checkpoints, before and after symmetry removal, Gaussian and
Laplace kernels at 10 bandwidths (the paper's 20-value vector; ``stats compare``). On the
digits MLP, and on OptuNet (the paper's conv net) trained with its recipe on digits28, the
28x28 stand-in for MNIST (R5's learned members and method settings)."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
    import digits_zoo as zoo
    import optunet_zoo
else:
    from reproduce import common, optunet_zoo
    from reproduce import digits_zoo as zoo

ID = "R4"
TITLE = "Weight-space MMD to independently trained checkpoints (digits MLP; OptuNet on digits28)"
RUNS = (
    ("mfvi", "multi"),
    ("laplace", "multi"),
    ("swag", "multi"),
    ("mc_dropout", "multi"),
    ("sghmc", "single"),
    ("sghmc", "multi"),
)
#: 10 bandwidths (multiples of the median pooled distance) per kernel: with the Gaussian
#: and Laplace kernels, the paper's 20-value MMD vector (``stats compare`` uses 5).
MULTIPLES = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
SOURCES = "kind == 'train' or method in ['mfvi', 'laplace', 'swag', 'mc_dropout', 'sghmc']"
#: OptuNet's learned members are split in two: the first half (by seed) start the chains,
#: the second half is the ground truth. The MMD needs two models on each side.
OPTUNET_MIN_MEMBERS = 4


def mmd_vectors(store, where_a: str, where_b: str) -> dict:
    """MMD^2 at :data:`MULTIPLES` before and after canonicalisation (the first transform
    both sides have)."""
    from bnnctl.stats.mmd import mmd
    from bnnctl.stats.modes import split_canonical
    from bnnctl.store import select

    man = store.manifest()
    (ra, ca), (rb, cb) = (split_canonical(man, select(man, w)) for w in (where_a, where_b))
    out = {"before": mmd(store.read_params(ra), store.read_params(rb), MULTIPLES), "after": None}
    common_tags = sorted(set(ca) & set(cb))
    if common_tags:
        t = common_tags[0]
        out["after"] = mmd(store.read_params(ca[t]), store.read_params(cb[t]), MULTIPLES)
    return out


def run(ctx: common.Ctx) -> pd.DataFrame:
    store = ctx.store()
    rows, vectors = mlp_rows(ctx, store)
    more_rows, more_vectors = optunet_rows(ctx, store)
    table = pd.DataFrame(rows + more_rows)
    vec = pd.DataFrame(vectors + more_vectors)
    vec.to_csv(ctx.out / f"{ID}_mmd_vectors.csv", index=False)
    ctx.note(
        "mmd2_*_1x: unbiased MMD^2 at the median-distance bandwidth; the full 20-value "
        f"vectors (2 kernels x 10 bandwidths, {MULTIPLES[0]}-{MULTIPLES[-1]} x the median "
        f"distance, before/after) are in {ID}_mmd_vectors.csv. "
        "after = perm + scale canonical forms. agreement/TV: BMA predictive vs the "
        "ground truth's (Izmailov et al.)."
    )
    ctx.table(table, "mmd", TITLE)
    ctx.figure(plot(vec), "mmd")
    return table


def compare_rows(ctx: common.Ctx, store, arch: str, gt: str, subjects: dict) -> tuple[list, list]:
    """The table's rows and the 20-value MMD vectors of each subject against ``gt``."""
    from bnnctl.stats.report import compare

    rows, vectors = [], []
    for label, where in subjects.items():
        ctx.log(f"compare ({arch}): {label}")
        c = compare(store, gt, where, seed=0)  # agreement and TV (and a 5-bandwidth MMD)
        vecs = mmd_vectors(store, gt, where)
        row = {
            "arch": arch,
            "approximation": label,
            "n_gt": c["a"]["n"],
            "n": c["b"]["n"],
            "agreement": c["agreement"],
            "total_variation": c["total_variation"],
        }
        for stage, m in (("before", vecs["before"]), ("after", vecs["after"])):
            for kernel in ("gaussian", "laplace"):
                vals = [] if m is None else m[kernel]
                one = [v["mmd2"] for v in vals if abs(v["multiple"] - 1.0) < 1e-9]
                row[f"mmd2_{kernel}_1x_{stage}"] = one[0] if one else None
                vectors += [
                    {"arch": arch, "approximation": label, "stage": stage, "kernel": kernel, **v}
                    for v in vals
                ]
        rows.append(row)
    return rows, vectors


def mlp_rows(ctx: common.Ctx, store) -> tuple[list, list]:
    """The digits MLP: ground truth, starts and every method's samples. Runs before
    :func:`optunet_rows`, as R4 did before OptuNet was added (same numbers), and before
    any OptuNet is in the store, which :data:`SOURCES` would canonicalize too."""
    from bnnctl.engines.canonicalize import canonicalize

    g = ctx.pick(6, 128)  # ground-truth checkpoints
    k = ctx.pick(2, 16)  # starting checkpoints (multi-mode: one chain each)
    s = ctx.pick(2, 8)  # samples per chain
    zoo.train_pop(ctx, store, "de", range(zoo.GT_SEED, zoo.GT_SEED + g))
    zoo.train_pop(ctx, store, "starts", range(k))
    subjects = {"deep ensemble (the starts)": "population == 'starts'"}
    for method, mode in RUNS:
        name = zoo.sample_pop(ctx, store, method, mode, k, k, s)
        subjects[f"{method} {mode}-mode"] = zoo.draws(name, method)
    ctx.log("canonicalizing (perm + scale to the L2 minimum)")
    canonicalize(store, SOURCES)
    out = compare_rows(ctx, store, zoo.arch().name, "population == 'de'", subjects)
    ctx.note(
        f"ground truth: {g} independently trained {zoo.arch().name} (dropout {zoo.DROPOUT}) "
        f"checkpoints, seeds {zoo.GT_SEED}+, disjoint from the {k} starting checkpoints; "
        f"each approximation has {k} chains x {s} samples (single-mode: all chains from one "
        "checkpoint; multi-mode: one chain per checkpoint)."
    )
    return out


def optunet_rows(ctx: common.Ctx, store) -> tuple[list, list]:
    """OptuNet on digits28 with the paper's recipe (R3's and R5's seeds): of the seeds that
    learned, the first half start the chains (single-mode: the first of them) and the
    second half, which no chain starts from, is the ground truth. Each of R5's OptuNet
    methods, with R5's settings, single- and multi-mode."""
    from bnnctl.engines.canonicalize import canonicalize
    from bnnctl.store import select

    n_seeds, epochs = ctx.pick((4, 20), (48, optunet_zoo.EPOCHS))
    s = ctx.pick(2, 8)  # samples per chain
    arch = optunet_zoo.arch().name
    learned = optunet_zoo.train_learned(ctx, store, n_seeds, epochs, population="cnn")
    members, picked = learned.members, learned.picked
    n_min = OPTUNET_MIN_MEMBERS
    if ctx.quick and len(members) < n_min:  # too few learned in a quick run: the best four
        members = learned.trained.nlargest(n_min, "test_acc").sort_values("seed")
        picked = f"the {n_min} most accurate of {n_seeds} seeds (quick run)"
    if len(members) < n_min:
        raise RuntimeError(f"R4 needs {n_min} learned OptuNets, got {len(members)}")
    k = len(members) // 2  # starting checkpoints (multi-mode: one chain each)
    starts, truth = members.iloc[:k], members.iloc[k:]

    def seeds(rows: pd.DataFrame) -> str:
        return f"population == 'cnn' and seed in {[int(v) for v in rows['seed']]}"

    draws, divergent = optunet_zoo.sample_methods(ctx, store, starts, s)
    subjects = {"deep ensemble (the starts)": seeds(starts)}
    subjects |= {f"{method} {mode}-mode": where for (method, mode), where in draws.items()}
    ctx.log("OptuNet: canonicalizing (perm + scale to the L2 minimum)")
    man = store.manifest()
    canonicalize(store, pd.concat([select(man, w) for w in (seeds(truth), *subjects.values())]))
    out = compare_rows(ctx, store, arch, seeds(truth), subjects)
    first = starts.iloc[0]
    ctx.note(
        f"{arch} on digits28 (recipe: SGD lr {optunet_zoo.LR}, weight decay "
        f"{optunet_zoo.WEIGHT_DECAY}, batch {optunet_zoo.BATCH_SIZE}, {epochs} epochs, "
        f"x{optunet_zoo.LR_GAMMA} at epochs {optunet_zoo.milestones(epochs) or 'none'}): of "
        f"{picked}, the last {len(truth)} by seed are the ground truth (test acc median "
        f"{truth['test_acc'].median():.3f}) and the first {k} the starting checkpoints (test "
        f"acc median {starts['test_acc'].median():.3f}), no chain starting from the ground "
        f"truth. Every run has {k} chains x {s} samples: single-mode from the first start "
        f"({first['model_id']}, test acc {first['test_acc']:.3f}), multi-mode one chain per "
        f"start. The unbiased MMD takes unequal sides ({len(truth)} against {k} or {k * s}, "
        "as the MLP rows do) but needs two models a side, hence at least "
        f"{n_min} members (a quick run takes the {n_min} most accurate seeds)."
    )
    ctx.note(optunet_zoo.settings_note(ctx, divergent))
    return out


def plot(vec: pd.DataFrame):
    """One row per architecture, before and after removal: one colour per method (laplace
    and its last-layer variant apart), dashed single-mode."""
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(vec["arch"]))
    g = vec[vec["kernel"] == "gaussian"]
    methods = list(dict.fromkeys(label.split()[0] for label in g["approximation"]))
    fig, axes = plt.subplots(
        len(archs), 2, figsize=(10, 3.4 * len(archs)), sharey="row", squeeze=False
    )
    for row, arch in zip(axes, archs, strict=True):
        a = g[g["arch"] == arch]
        for ax, stage in zip(row, ("before", "after"), strict=True):
            for label, d in a[a["stage"] == stage].groupby("approximation", sort=False):
                color = f"C{methods.index(label.split()[0]) % 10}"
                ls = "--" if "single-mode" in label else "-"
                ax.plot(d["multiple"], d["mmd2"], "o", ls=ls, ms=3, color=color, label=label)
            ax.set(xscale="log", title=f"{arch}: {stage} removal")
            ax.set_xticks([0.1, 0.2, 0.5, 1, 2, 5], ["0.1", "0.2", "0.5", "1", "2", "5"])
            ax.minorticks_off()
            ax.set_yscale("symlog", linthresh=1e-3)
        row[0].set_ylabel("MMD^2 (Gaussian kernel)")
        row[1].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("bandwidth / median distance")
    fig.suptitle(
        "R4: MMD to independently trained checkpoints (MLP on digits, OptuNet on digits28)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
