"""Unbiased MMD² between weight clouds, Gaussian and Laplace kernels over bandwidths."""

from __future__ import annotations

import numpy as np
import torch

from bnnctl.errors import UsageError

BANDWIDTH_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)

# --- MMD in weight space ----------------------------------------------------------------


def _offdiag_median(d: torch.Tensor) -> float:
    """Median of the distinct pairwise distances (mean of the middle two when even); when
    that is 0 (mostly coincident rows) the median of the non-zero ones, or 1 if none."""
    iu = torch.triu_indices(d.shape[0], d.shape[0], 1)
    v = d[iu[0], iu[1]].numpy()
    med = float(np.median(v))
    return med if med > 0 else float(np.median(v[v > 0])) if (v > 0).any() else 1.0


def mmd2_from_kernel(k: torch.Tensor, m: int) -> float:
    """Unbiased MMD² from the pooled kernel matrix of ``m`` X rows then the Y rows."""
    n = k.shape[0] - m
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def mmd(
    x: np.ndarray, y: np.ndarray, multiples=BANDWIDTH_MULTIPLES, max_n: int = 256, seed: int = 0
) -> dict:
    """Unbiased MMD² of weight clouds ``x [m,P]`` and ``y [n,P]`` under Gaussian and
    Laplace kernels, bandwidths = ``multiples`` × the median pooled distance; each side
    subsampled to ``max_n`` rows (seeded) to bound the O((m+n)² P) cost."""
    rng = np.random.default_rng(seed)
    x, y = (
        a if len(a) <= max_n else a[np.sort(rng.choice(len(a), max_n, replace=False))]
        for a in (x, y)
    )
    if len(x) < 2 or len(y) < 2:
        raise UsageError("MMD needs at least two models on each side")
    z = torch.from_numpy(np.concatenate([x, y]).astype(np.float64))
    d2 = torch.cdist(z, z, p=2.0)
    d1 = torch.cdist(z, z, p=1.0)
    med2, med1 = _offdiag_median(d2), _offdiag_median(d1)
    gaussian: list[dict[str, float]] = []
    laplace: list[dict[str, float]] = []
    out = {
        "n_a": len(x),
        "n_b": len(y),
        "median_l2": med2,
        "median_l1": med1,
        "gaussian": gaussian,
        "laplace": laplace,
    }
    for c in multiples:
        s2, s1 = c * med2, c * med1
        gaussian.append(
            {
                "multiple": c,
                "sigma": s2,
                "mmd2": mmd2_from_kernel(torch.exp(-(d2**2) / (2 * s2 * s2)), len(x)),
            }
        )
        laplace.append(
            {"multiple": c, "sigma": s1, "mmd2": mmd2_from_kernel(torch.exp(-d1 / s1), len(x))}
        )
    return out
