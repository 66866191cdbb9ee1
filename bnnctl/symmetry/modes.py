"""Counting distinct modes among canonical weight vectors."""

from __future__ import annotations

import numpy as np

#: Canonical weight vectors a, b with ‖a − b‖ ≤ MODE_RTOL·sqrt((‖a‖²+‖b‖²)/2) are one mode.
MODE_RTOL = 0.05
#: Directions of the projection that rules pairs out before their full distance is taken.
SCREEN_DIMS = 32
#: Above this fraction of candidate pairs in a chunk, its full distances are all computed
#: (one matrix product beats gathering that many pairs).
DENSE_FRACTION = 0.02
#: Candidate pairs whose differences are formed at once (memory: PAIR_BATCH rows).
PAIR_BATCH = 256
#: Rows converted to float64 at once in the screen: a block of at most ~32 MB (for the
#: default MLPs) is reused by the allocator, where a larger one is fresh memory each time
#: and costs its page faults (measured: the screen's projection took 2x as long in blocks
#: of 512 rows).
SCREEN_ROWS = 128


def count_modes(params: np.ndarray, rtol: float = MODE_RTOL, chunk: int = 512) -> int:
    """Single-linkage clusters: connected components of the graph linking ``a`` and ``b``
    when ``‖a − b‖ ≤ rtol·sqrt((‖a‖² + ‖b‖²)/2)`` (``bnnctl canonicalize`` and ``bnnctl stats``).

    Exact, and fast when modes are far apart (as canonical forms of a posterior mostly
    are): for an orthonormal ``Q`` (the population's leading principal directions),
    ``‖Qᵀ(a − b)‖ ≤ ‖a − b‖``, so a pair whose projected distance is over the threshold
    cannot link, and only the other pairs' full distances are taken (all of a chunk's,
    when many are left). Distances in float32 (relative error ~1e-7 of ‖a‖², far below
    rtol²); the projection in float64, with a margin over its rounding."""
    import torch
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))
    n = len(x)
    if n <= 1:
        return n
    sq = torch.linalg.vector_norm(x, dim=1).double() ** 2
    z = _screen(x)
    rows, cols = [], []
    for i in range(0, n, chunk):  # pairs (a, b) with a in the chunk and b not before it
        thr = rtol**2 * (sq[i : i + chunk, None] + sq[None, i:]) / 2
        cand = torch.cdist(z[i : i + chunk], z[i:]).pow(2) <= thr * (1 + 1e-6) + 1e-12
        if cand.double().mean() > DENSE_FRACTION:
            d2 = torch.cdist(x[i : i + chunk], x[i:]).double().pow(2)
            r, c = torch.nonzero(d2 <= thr, as_tuple=True)
        else:  # the few candidates' full distances, PAIR_BATCH pairs at a time
            r, c = torch.nonzero(cand, as_tuple=True)
            # a row paired with itself always links (it is its own component): skip it
            other = r != c
            r, c = r[other], c[other]
            keep = torch.zeros(len(r), dtype=torch.bool)
            for j in range(0, len(r), PAIR_BATCH):
                a, b = r[j : j + PAIR_BATCH], c[j : j + PAIR_BATCH]
                d2 = (x[a + i] - x[b + i]).double().pow(2).sum(1)
                keep[j : j + PAIR_BATCH] = d2 <= thr[a, b]
            r, c = r[keep], c[keep]
        rows.append(r.numpy() + i)
        cols.append(c.numpy() + i)
    ri, ci = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(ri)), (ri, ci)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def _screen(x):
    """``x`` projected on (up to) :data:`SCREEN_DIMS` orthonormal directions of large
    spread (a randomized range finder on the centred rows, one power step), in float64:
    a lower bound of every pairwise distance, whatever the directions."""
    import torch

    n, d = x.shape
    k = min(SCREEN_DIMS, n, d)
    total = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, SCREEN_ROWS):  # in float64, without a float64 copy of all rows
        total += x[i : i + SCREEN_ROWS].double().sum(0)
    mean = (total / n).float()
    gen = torch.Generator().manual_seed(0)  # fixed: the count does not depend on it

    def t_times(g):  # (x - mean)^T g, without a centred copy of x
        return x.T @ g - mean[:, None] * g.sum(0)[None, :]

    q, _ = torch.linalg.qr(t_times(torch.randn(n, k, generator=gen)))
    q, _ = torch.linalg.qr(t_times(x @ q - (mean @ q)[None, :]))
    q = q.double()
    return torch.cat([x[i : i + SCREEN_ROWS].double() @ q for i in range(0, n, SCREEN_ROWS)])
