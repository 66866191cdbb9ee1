"""Counting distinct modes among canonical weight vectors."""

from __future__ import annotations

import numpy as np

#: Canonical weight vectors a, b with ‖a − b‖ ≤ MODE_RTOL·sqrt((‖a‖²+‖b‖²)/2) are one mode.
MODE_RTOL = 0.05


def count_modes(params: np.ndarray, rtol: float = MODE_RTOL, chunk: int = 512) -> int:
    """Single-linkage clusters: connected components of the graph linking ``a`` and ``b``
    when ``‖a − b‖ ≤ rtol·sqrt((‖a‖² + ‖b‖²)/2)`` (``bnnctl canonicalize`` and ``bnnctl stats``).
    Distances in float32 (relative error ~1e-7 of ‖a‖², far below rtol²)."""
    import torch
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))
    n = len(x)
    if n <= 1:
        return n
    sq = torch.linalg.vector_norm(x, dim=1).double() ** 2
    rows, cols = [], []
    for i in range(0, n, chunk):  # pairs (a, b) with a in the chunk and b not before it
        d2 = torch.cdist(x[i : i + chunk], x[i:]).double().pow(2)
        r, c = torch.nonzero(
            d2 <= rtol**2 * (sq[i : i + chunk, None] + sq[None, i:]) / 2, as_tuple=True
        )
        rows.append(r.numpy() + i)
        cols.append(c.numpy() + i)
    ri, ci = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(ri)), (ri, ci)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])
