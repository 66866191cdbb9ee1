"""Sort keys judged by what a canonical form is for: bringing different models together
without creating structure that is not in the posterior.

For a population of trained MLPs, per key: the mean pairwise distance between canonical
models relative to weight matching to a medoid (Git Re-Basin, an alignment: the yardstick),
the variance share of the first principal component and Sarle's bimodality coefficient of
the projections on it (> 0.555 suggests two clusters), and MMD² between the two halves of
the population by seed (0 up to noise when the form adds nothing seed-dependent). For the
``pc`` key it also reports the cause of its clusters: the share of models whose second
hidden layer is sorted in the opposite orientation along the population's leading
direction, and how well that orientation follows the sign of that direction's overlap
with the all-ones vector, where ``pc``'s power iteration starts.

    python scripts/bench_keys.py               # 512 default digits MLPs, 50 epochs (~10 min)
    python scripts/bench_keys.py --quick       # 24 small MLPs, 2 epochs, for the test suite
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def bimodality(p: np.ndarray) -> float:
    """Sarle's bimodality coefficient (uniform: 0.555; a normal: 1/3)."""
    from scipy.stats import kurtosis, skew

    n = len(p)
    return float((skew(p) ** 2 + 1) / (kurtosis(p) + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def pc1(x: torch.Tensor) -> tuple[np.ndarray, float]:
    """Projections on the first principal component and its share of the variance."""
    x = x - x.mean(0)
    _, sv, vt = torch.linalg.svd(x, full_matrices=False)
    return (x @ vt[0]).numpy(), float(sv[0] ** 2 / (sv**2).sum())


def mean_distance(x: torch.Tensor) -> float:
    d = torch.cdist(x.float(), x.float())
    return float(d.sum() / (len(x) * (len(x) - 1)))


def orientation(arch, canon: torch.Tensor, layer: str) -> tuple[float, float]:
    """For hidden layer ``layer``'s incoming weights: the share of models sorted in the
    minority orientation along the population's (sign-aligned) leading direction, and the
    agreement of each model's orientation with the sign of that direction · 1."""
    w = arch.views(canon)[layer]  # [M, n, k]
    v = torch.linalg.eigh(w.transpose(1, 2) @ w)[1][:, :, -1]
    v = v * torch.sign(v @ v[0]).unsqueeze(1)
    v = v * torch.sign(v.mean(0) @ v.sum(0))  # the majority's sign
    keys = torch.einsum("mnk,mk->mn", w, v)
    idx = torch.arange(w.shape[1], dtype=keys.dtype)
    desc = (((keys - keys.mean(1, keepdim=True)) * (idx - idx.mean())).sum(1) < 0).numpy()
    ones = (v.sum(1) > 0).numpy()
    share = float(min(desc.mean(), 1 - desc.mean()))
    return share, float(max((ones == desc).mean(), (ones != desc).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    widths = (64, 128, 128, 10)
    if a.quick:
        a.models, a.epochs, widths = 24, 2, (64, 16, 16, 10)

    from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
    from bnnctl.stats.mmd import mmd
    from bnnctl.symmetry.canonical import canonicalize
    from bnnctl.symmetry.matching import weight_match
    from bnnctl.symmetry.transform import KEYS, make_transform

    arch = ArchSpec(widths)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/keys.zarr", create=True)
        train(
            store,
            load_dataset("digits"),
            TrainConfig(epochs=a.epochs),
            range(a.models),
            arch,
            block_size=256,
        )
        man = store.manifest().sort_values("seed")
        raw = torch.from_numpy(store.read_params(man)).double()

    scaled = canonicalize(arch, raw, make_transform(arch, ["scale"])).params
    medoid = int(torch.cdist(scaled.float(), scaled.float()).sum(1).argmin())
    t0 = time.perf_counter()
    matched = weight_match(arch, scaled, scaled[medoid])[0]
    forms = [("weight matching to a medoid", matched, time.perf_counter() - t0)]
    forms.append(("scale only (no perm)", scaled, 0.0))
    for key in KEYS:
        t0 = time.perf_counter()
        canon = canonicalize(arch, raw, make_transform(arch, None, key)).params
        forms.append((key, canon, time.perf_counter() - t0))
    yardstick, half = mean_distance(matched), len(raw) // 2
    rows = []
    for name, x, secs in forms:
        p, share = pc1(x)
        m = mmd(x[:half].float().numpy(), x[half:].float().numpy(), max_n=256, seed=0)
        mmd2 = next(r["mmd2"] for r in m["gaussian"] if abs(r["multiple"] - 1) < 1e-9)
        rows.append(
            {
                "form": name,
                "distance_vs_matching": mean_distance(x) / yardstick,
                "pc1_pct": 100 * share,
                "bimodality": bimodality(p),
                "mmd2_halves": mmd2,
                "seconds": secs,
            }
        )
    pc = next(x for name, x, _ in forms if name == "pc")
    flipped, follows = orientation(arch, pc, "2.weight")
    out = {
        "models": a.models,
        "epochs": a.epochs,
        "arch": arch.name,
        "rows": rows,
        "pc_layer2_flipped_share": flipped,
        "pc_flip_follows_sign_of_v_dot_1": follows,
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{a.models} x {arch.name}, digits, Adam 1e-3, {a.epochs} epochs")
    print("| form | mean pairwise distance / matching | PC1 % | PC1 bimodality | MMD² halves | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['form']} | {r['distance_vs_matching']:.3f} | {r['pc1_pct']:.1f} | "
            f"{r['bimodality']:.3f} | {r['mmd2_halves']:.1e} | {r['seconds']:.1f} |"
        )
    print(
        f"pc: {100 * flipped:.0f} % of models sort hidden layer 2 in the opposite orientation; "
        f"the orientation follows sign(v·1) in {100 * follows:.0f} % of models"
    )


if __name__ == "__main__":
    main()
