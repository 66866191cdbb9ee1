"""Figures of a stats report (matplotlib, Agg backend, PNG). Each figure is titled and its
axes labelled so that it reads alone.

- ``weights_pca_tsne.png``: PCA and t-SNE of the members' weights, raw and (when the store
  has canonical rows of them) after canonicalisation (by the first transform, by name),
  coloured by chain or method.
- ``fig1_221.png``: Laurent et al.'s Fig. 1 view for 2-2-1 nets in the selection: hexbin
  of the first input weight of hidden unit 1 vs hidden unit 2, raw; after scale removal
  (each ReLU unit rescaled to the L2-minimal balance, incoming ×λ, outgoing ×1/λ,
  λ = sqrt(‖out‖/‖in‖)); after sorting the units by that weight as well.
- ``marginals.png``: histograms of a few individual weights, raw vs canonical.
- ``bma_curve.png``: BMA accuracy and NLL vs members, mean ± std over member orders.
- ``pairwise_mi.png``, ``excess_mass.png``, ``largest_index.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bnnctl.arch import AnyArch, ArchSpec  # noqa: E402
from bnnctl.errors import UsageError  # noqa: E402
from bnnctl.stats.modes import excess_pct  # noqa: E402
from bnnctl.stats.report import Context  # noqa: E402
from bnnctl.store import Store  # noqa: E402
from bnnctl.symmetry.canonical import canonicalize  # noqa: E402
from bnnctl.symmetry.transform import make_transform  # noqa: E402

TSNE_MAX = 800


def write_all(store: Store, ctx: Context, folder: str | Path) -> list[Path]:
    """Write every figure the context supports into ``folder``; return their paths."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--plot {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(folder / name)

    mem = ctx.members
    if mem is not None:
        raw, labels = mem.params, label_of(mem.rows)
        canon, canon_labels, transform = _canonical(store, ctx, labels)
        save(weights_pca_tsne(raw, labels, canon, canon_labels, transform), "weights_pca_tsne.png")
        save(marginals(mem.arch, raw, canon), "marginals.png")
        save(largest_index(mem.arch, raw, canon), "largest_index.png")
        if ctx.curve:
            save(bma_curve(ctx.curve), "bma_curve.png")
        if len(ctx.pair_arrays.get("mi", [])):
            save(
                pairwise_mi(ctx.pair_arrays["mi"], ctx.pair_arrays["disagreement"]),
                "pairwise_mi.png",
            )
        excess = excess_pct(ctx.canonical)
        if len(excess):
            save(excess_mass(excess), "excess_mass.png")
    sel = ctx.selection
    if sel is not None:
        small = sel[
            (sel["arch_name"] == "mlp:2-2-1")
            & sel["activation"].isin(["relu", "leaky_relu"])
            & (sel["kind"] != "canonical")
        ]
        if len(small):
            save(fig1_221(store.read_params(small)), "fig1_221.png")
    return written


def label_of(rows: pd.DataFrame) -> np.ndarray:
    """Colour label per row: 'chain k' for sampler chains, else method (population)."""
    chain = rows["chain"] if "chain" in rows else pd.Series([pd.NA] * len(rows))
    method = rows["method"].astype(str) + " (" + rows["population"].astype(str) + ")"
    return np.array(
        [f"chain {int(c)}" if pd.notna(c) else m for c, m in zip(chain, method, strict=True)]
    )


def _canonical(store: Store, ctx: Context, labels: np.ndarray):
    if not ctx.canonical:
        return None, None, None
    transform = sorted(ctx.canonical)[0]  # one canonical form per figure
    rows = ctx.canonical[transform]
    assert ctx.members is not None  # write_all calls this only when members were evaluated
    by_id = dict(zip(ctx.members.rows["model_id"], labels, strict=True))
    lab = np.array([by_id.get(p, "parent not selected") for p in rows["parent_id"]])
    return store.read_params(rows), lab, transform


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, title: str, xl: str, yl: str) -> None:
    cats = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
    for k, c in enumerate(cats):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, color=cmap(k % cmap.N), label=c)
    if len(cats) <= 12:
        ax.legend(fontsize=7, markerscale=2)
    ax.set(title=title, xlabel=xl, ylabel=yl)


def weights_pca_tsne(raw, labels, canon=None, canon_labels=None, transform=None):
    """PCA (top) and t-SNE (bottom) of weight vectors, raw (left) and canonical (right)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    sets = [("raw weights", raw, labels)]
    if canon is not None and len(canon) >= 2:
        sets.append((f"weights after canonicalisation ({transform})", canon, canon_labels))
    fig, axes = plt.subplots(2, len(sets), figsize=(6 * len(sets), 10), squeeze=False)
    for col, (name, x, lab) in enumerate(sets):
        if len(x) < 2:
            axes[0, col].set_title(f"PCA of {name}: fewer than 2 models")
            continue
        pca = PCA(2).fit(x)
        ev = pca.explained_variance_ratio_ * 100
        _scatter(
            axes[0, col],
            pca.transform(x),
            lab,
            f"PCA of {name} ({len(x)} models)",
            f"PC1 ({ev[0]:.1f}% var.)",
            f"PC2 ({ev[1]:.1f}% var.)",
        )
        idx = np.random.default_rng(0).permutation(len(x))[:TSNE_MAX]
        if len(idx) < 5:
            axes[1, col].set_title(f"t-SNE of {name}: too few models")
            continue
        z = PCA(min(50, len(idx), x.shape[1])).fit_transform(x[idx])
        emb = TSNE(
            2, perplexity=min(30.0, (len(idx) - 1) / 3), init="pca", random_state=0
        ).fit_transform(z)
        _scatter(
            axes[1, col],
            emb,
            lab[idx],
            f"t-SNE of {name} ({len(idx)} models)",
            "t-SNE 1",
            "t-SNE 2",
        )
    return fig


def _pick(arch: AnyArch) -> list[tuple[str, int]]:
    """A few named single weights: the first entry of the first tensor and of its second
    row (unit), of the second tensor (the first layer's bias, or the next kernel), and of
    the output layer's weight."""
    lay = arch.layout
    out_w = next(t for t in reversed(lay) if len(t.shape) >= 2)

    def first(t) -> tuple[str, int]:
        return f"{t.name}[{','.join('0' * len(t.shape))}]", t.offset

    picks = [first(lay[0]), first(lay[1]), first(out_w)]
    if lay[0].shape[0] > 1:
        second = "1" + ",0" * (len(lay[0].shape) - 1)
        picks.insert(
            1, (f"{lay[0].name}[{second}]", lay[0].offset + lay[0].size // lay[0].shape[0])
        )
    return picks


def marginals(arch: AnyArch, raw, canon=None):
    """Histograms of individual weights across models, raw vs canonical."""
    picks = _pick(arch)
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 3.5), squeeze=False)
    for ax, (name, off) in zip(axes[0], picks, strict=True):
        both = raw[:, off] if canon is None else np.concatenate([raw[:, off], canon[:, off]])
        bins = np.histogram_bin_edges(both, bins=40)
        ax.hist(raw[:, off], bins=bins, alpha=0.6, label="raw", density=True)
        if canon is not None:
            ax.hist(canon[:, off], bins=bins, alpha=0.6, label="canonical", density=True)
        ax.set(title=f"marginal of weight {name}", xlabel="value", ylabel="density")
        ax.legend(fontsize=8)
    return fig


def largest_index(arch: AnyArch, raw, canon=None):
    """For each model and input feature: which first-layer hidden unit has the largest
    incoming weight from that feature (for a conv net: which first-layer channel has the
    largest entry at each kernel position and input channel). Uniform for raw weights;
    sorting concentrates it."""
    w = arch.layout[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.arange(w.shape[0] + 1) - 0.5
    for name, x in (("raw", raw), ("canonical", canon)):
        if x is None:
            continue
        idx = x[:, w.offset : w.offset + w.size].reshape(len(x), *w.shape).argmax(1).ravel()
        ax.hist(idx, bins=bins, alpha=0.6, label=name, density=True)  # type: ignore[arg-type]
    ax.set(
        title="index of the hidden unit with the largest weight from each input (layer 1)",
        xlabel="hidden unit index",
        ylabel="fraction of (model, input) pairs",
    )
    ax.legend()
    return fig


def bma_curve(curve: list[dict]):
    """BMA accuracy and NLL against the number of members: the mean over random member
    orders, with a band of ± one std."""
    k = np.array([c["members"] for c in curve])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, name, label, colour in zip(
        axes, ("acc", "nll"), ("accuracy", "NLL (nats)"), ("C0", "C1"), strict=True
    ):
        mean = np.array([c[name] for c in curve])
        std = np.array([c[f"{name}_std"] for c in curve])
        ax.plot(k, mean, "o-", color=colour, label="mean over member orders")
        ax.fill_between(k, mean - std, mean + std, color=colour, alpha=0.25, label="± 1 std")
        ax.set(
            xscale="log",
            title=f"BMA test {'accuracy' if name == 'acc' else 'NLL'} vs members",
            xlabel="members averaged",
            ylabel=label,
        )
        ax.legend(fontsize=8)
    return fig


def pairwise_mi(mi: np.ndarray, dis: np.ndarray):
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.hist(mi, bins=40)
    a.set(
        title=f"pairwise mutual information ({len(mi)} pairs)",
        xlabel="MI (nats, mean over test points)",
        ylabel="pairs",
    )
    b.hist(dis, bins=40, color="C1")
    b.set(
        title=f"pairwise disagreement ({len(dis)} pairs)",
        xlabel="fraction of test points",
        ylabel="pairs",
    )
    return fig


def excess_mass(excess: np.ndarray):
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(excess, bins=40)
    ax.set(
        title=f"L2-mass excess over the scaling minimum ({len(excess)} models)",
        xlabel="(L2 before - L2 after) / L2 after  [%]",
        ylabel="models",
    )
    return fig


def scale_sort_221(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-2-1 ReLU rows [n, 9] -> (scale-removed, scale-removed and sorted) copies, by the
    same transforms as ``bnnctl canonicalize``: the minimum-L2-mass scaling (biases not
    counted), then units sorted by their first incoming weight (key ``weight0``, as in
    the paper's figure)."""
    arch = ArchSpec((2, 2, 1))
    flat = torch.from_numpy(np.asarray(params, dtype=np.float64))
    scaled = canonicalize(arch, flat, make_transform(arch, ["scale"])).params
    sorted_ = canonicalize(
        arch, flat, make_transform(arch, ["perm", "scale"], key="weight0")
    ).params
    return scaled.numpy(), sorted_.numpy()


def fig1_221(params: np.ndarray):
    """Laurent et al. Fig. 1: W1[unit 1, input 1] vs W1[unit 2, input 1] of 2-2-1 nets."""
    scaled, sorted_ = scale_sort_221(params)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, x, name in zip(
        axes,
        (params, scaled, sorted_),
        ("raw", "after scale removal", "after scale removal and sorting"),
        strict=True,
    ):
        hb = ax.hexbin(x[:, 0], x[:, 2], gridsize=40, mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="models")
        ax.set(
            title=f"2-2-1 nets ({len(x)}): {name}",
            xlabel="weight input 1 -> hidden unit 1",
            ylabel="weight input 1 -> hidden unit 2",
        )
    return fig
