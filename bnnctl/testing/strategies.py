"""Hypothesis strategies shared by every property test."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from bnnctl.arch import ACTIVATIONS, ArchSpec

#: Small MLP specs of any activation, with and without dropout.
archs = st.builds(
    ArchSpec,
    widths=st.lists(st.integers(1, 7), min_size=2, max_size=5).map(tuple),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    dropout=st.sampled_from([0.0, 0.25]),
)


@st.composite
def networks(
    draw: st.DrawFn, activations: Sequence[str] = tuple(ACTIVATIONS)
) -> tuple[ArchSpec, torch.Tensor, torch.Generator]:
    """A random MLP with 1-3 hidden layers, ``M`` stacked float64 parameter rows, and
    the generator that drew them (for drawing more)."""
    depth = draw(st.integers(1, 3))
    widths = (
        [draw(st.integers(1, 5))]
        + [draw(st.integers(1, 6)) for _ in range(depth)]
        + [draw(st.integers(1, 4))]
    )
    arch = ArchSpec(tuple(widths), draw(st.sampled_from(list(activations))))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    m = draw(st.integers(1, 3))
    return arch, torch.randn(m, arch.n_params, generator=gen, dtype=torch.float64), gen
