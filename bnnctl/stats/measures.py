"""Pure functions on predictive probabilities: entropy, BMA metrics and curve, pairwise
mutual information and disagreement, agreement and total variation."""

from __future__ import annotations

import math

import numpy as np
import torch

from bnnctl.evaluate.metrics import classification

# --- pure functions on probability arrays (tested against numpy formulas) -------------


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_c p_c log p_c over the last axis, with 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def _floats(d: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.reshape(-1)[0]) for k, v in d.items()}


def bma(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier of the averaged predictive p̄ = mean_m probs[m]."""
    return _floats(classification(probs.mean(0, keepdim=True), y))


def curve_sizes(m: int) -> list[int]:
    """1, 2, 4, ... below m, then m."""
    sizes = [2**i for i in range(int(math.log2(m)) + 1) if 2**i < m] if m > 1 else []
    return sizes + [m]


def bma_curve(probs: torch.Tensor, y: torch.Tensor, seed: int = 0) -> list[dict]:
    """BMA metrics of the first k members of a seeded random order, k in :func:`curve_sizes`."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(probs.shape[0]))
    csum = torch.cumsum(probs[order], 0)
    return [
        {"members": k, **_floats(classification(csum[k - 1 : k] / k, y))}
        for k in curve_sizes(probs.shape[0])
    ]


def pair_indices(m: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j of m members, or ``pairs`` distinct ones drawn uniformly."""
    total = m * (m - 1) // 2
    if total <= pairs:
        i, j = np.triu_indices(m, 1)
        return i, j
    k = np.sort(np.random.default_rng(seed).choice(total, size=pairs, replace=False)).astype(
        np.int64
    )
    # invert k = i*m - i(i+1)/2 + (j - i - 1), the row-major index of (i, j) in the triangle
    i = (m - 2 - np.floor(np.sqrt(-8.0 * k + 4.0 * m * (m - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = k + i + 1 - total + (m - i) * (m - i - 1) // 2
    return i, j


def pairwise_diversity(probs: torch.Tensor, i: np.ndarray, j: np.ndarray, chunk: int = 256):
    """Per pair: mutual information (JS divergence, nats, mean over points) and disagreement."""
    h = entropy(probs)
    pred = probs.argmax(-1)
    mi, dis = [], []
    for s in range(0, len(i), chunk):
        a, b = torch.from_numpy(i[s : s + chunk]), torch.from_numpy(j[s : s + chunk])
        mix = entropy((probs[a] + probs[b]) / 2)
        mi.append((mix - (h[a] + h[b]) / 2).mean(-1))
        dis.append((pred[a] != pred[b]).double().mean(-1))
    return torch.cat(mi).double().numpy(), torch.cat(dis).numpy()


def agreement_tv(pa: torch.Tensor, pb: torch.Tensor) -> tuple[float, float]:
    """Izmailov et al.'s agreement and total variation of two predictives ``[N, C]``."""
    agree = (pa.argmax(-1) == pb.argmax(-1)).double().mean()
    tv = 0.5 * (pa - pb).abs().sum(-1).double().mean()
    return float(agree), float(tv)
