"""count_modes against single linkage computed by brute force (scipy, float64)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from bnnctl.symmetry import modes
from bnnctl.symmetry.modes import count_modes


def brute(p: np.ndarray, rtol: float) -> int:
    p = p.astype(np.float64)
    sq = (p**2).sum(1)
    linked = squareform(pdist(p)) ** 2 <= rtol**2 * (sq[:, None] + sq[None, :]) / 2
    return int(connected_components(linked, directed=False)[0])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 120),
    d=st.integers(1, 80),
    k=st.integers(1, 12),
    spread=st.floats(0.05, 3.0),
    noise=st.floats(1e-4, 0.2),
    rtol=st.sampled_from([0.01, 0.05, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_counts_match_brute_force(n, d, k, spread, noise, rtol, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * spread
    p = centers[rng.integers(0, k, n)] + rng.standard_normal((n, d)) * noise
    p = p.astype(np.float32)
    assert count_modes(p, rtol, chunk=32) == brute(p, rtol)


def test_pairs_on_either_side_of_the_threshold(monkeypatch):
    """Pairs 0.1 % inside and outside the linking distance, on both paths (screened
    candidates and whole chunks)."""
    rng = np.random.default_rng(0)
    rtol, groups = 0.05, []
    for inside in [True, False] * 20:
        a = rng.standard_normal(64) + 5 * rng.standard_normal(64)
        u = rng.standard_normal(64)
        u /= np.linalg.norm(u)
        # ‖a − b‖ = t·rtol·sqrt((‖a‖²+‖b‖²)/2), solved for the step along u (b = a + s·u)
        t = 0.999 if inside else 1.001
        s = 0.0
        for _ in range(50):
            b = a + s * u
            s = t * rtol * np.sqrt((a @ a + b @ b) / 2)
        groups += [a, a + s * u]
    p = np.array(groups)
    want = brute(p, rtol)
    assert want == 60  # 20 linked pairs, 20 unlinked ones: a test that can tell
    assert count_modes(p, rtol) == want
    monkeypatch.setattr(modes, "DENSE_FRACTION", 1.0)  # never whole chunks
    assert count_modes(p, rtol) == want
    monkeypatch.setattr(modes, "DENSE_FRACTION", -1.0)  # always whole chunks
    assert count_modes(p, rtol) == want
