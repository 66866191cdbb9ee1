"""bnnctl.symmetry against independent truth: group invariance and idempotence
(hypothesis), the functions computed by torch.nn, the scaling optimum found by
scipy.optimize, and weight matching recovering known permutations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnctl.arch import ArchSpec
from bnnctl.errors import UsageError
from bnnctl.symmetry.action import flip_, l2_mass, permute_, scale_
from bnnctl.symmetry.canonical import canonicalize
from bnnctl.symmetry.matching import weight_match
from bnnctl.symmetry.sorting import near_ties, sort_order
from bnnctl.symmetry.transform import KEYS, Transform, make_transform
from bnnctl.testing.reference import outputs as nn_outputs
from bnnctl.testing.strategies import networks


def random_symmetry(arch: ArchSpec, flat: torch.Tensor, gen: torch.Generator, syms) -> torch.Tensor:
    """g·θ for a random g of the arch's group (permutations, scales in e^±1.5, signs)."""
    out = flat.clone()
    v, m = arch.views(out), flat.shape[0]
    for g in arch.unit_groups():
        if "scale" in syms:
            scale_(v, g, (torch.rand(m, g.size, generator=gen, dtype=flat.dtype) * 3 - 1.5))
        if "sign" in syms:
            flip_(v, g, torch.randint(0, 2, (m, g.size), generator=gen).to(flat.dtype) * 2 - 1)
        if "perm" in syms:
            permute_(v, g, torch.stack([torch.randperm(g.size, generator=gen) for _ in range(m)]))
    return out


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= rtol * max(1.0, float(b.abs().max())))


@settings(max_examples=200, deadline=None)
@given(networks(), st.sampled_from(KEYS), st.sampled_from(("l2", "unitnorm")))
def test_canonical_form_is_invariant_idempotent_and_keeps_the_function(net, key, mode):
    arch, theta, gen = net
    t = make_transform(arch, key=key, scale_mode=mode)
    c = canonicalize(arch, theta, t).params
    moved = random_symmetry(arch, theta, gen, arch.symmetries)
    x = torch.randn(7, arch.widths[0], generator=gen, dtype=torch.float64)
    assert close(nn_outputs(arch, moved, x), nn_outputs(arch, theta, x), 1e-9)  # g is a symmetry
    assert close(canonicalize(arch, moved, t).params, c)  # canon(g·θ) = canon(θ)
    assert close(canonicalize(arch, c, t).params, c)  # canon(canon(θ)) = canon(θ)
    assert close(nn_outputs(arch, c, x), nn_outputs(arch, theta, x), 1e-9)


@settings(max_examples=25, deadline=None)
@given(networks(activations=("relu", "leaky_relu")))
def test_perm_only_removes_permutations_only(net):
    arch, theta, gen = net
    t = make_transform(arch, ["perm"], key="mean")
    moved = random_symmetry(arch, theta, gen, ("perm",))
    assert close(canonicalize(arch, moved, t).params, canonicalize(arch, theta, t).params)
    assert torch.allclose(l2_mass(arch, canonicalize(arch, theta, t).params), l2_mass(arch, theta))


def counted_in_out(arch: ArchSpec, row: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per hidden layer: squared incoming and outgoing weight mass of each unit, from the
    state_dict directly (biases not counted)."""
    sd, ws = arch.state_dict(row), [t.name for t in arch.layout if t.name.endswith("weight")]
    return [(sd[ws[i]].pow(2).sum(1), sd[ws[i + 1]].pow(2).sum(0)) for i in range(len(ws) - 1)]


def mass_at(arch: ArchSpec, row: np.ndarray, s: np.ndarray) -> float:
    """L2 mass of the weights after log-scales ``s`` (hidden units, concatenated)."""
    sd = arch.state_dict(torch.from_numpy(row))
    ws = [sd[t.name].numpy() for t in arch.layout if t.name.endswith("weight")]
    sizes = arch.widths[1:-1]
    parts = np.split(s, np.cumsum(sizes)[:-1]) if sizes else []
    logs = [np.zeros(arch.widths[0])] + list(parts) + [np.zeros(arch.widths[-1])]
    return float(
        sum(
            (w**2 * np.exp(2 * (logs[i + 1][:, None] - logs[i][None, :]))).sum()
            for i, w in enumerate(ws)
        )
    )


@settings(max_examples=20, deadline=None)
@given(networks(activations=("relu", "leaky_relu")))
def test_l2_scaling_is_the_optimum(net):
    from scipy.optimize import minimize

    arch, theta, gen = net
    c = canonicalize(arch, theta, make_transform(arch, ["scale"])).params
    for row in c:
        for inn, out in counted_in_out(arch, row):  # stationarity: every unit balances
            assert torch.allclose(inn, out, rtol=1e-7, atol=0)
    # no small random change of log-scales lowers the mass
    n = sum(arch.widths[1:-1])
    m0 = l2_mass(arch, c)
    for _ in range(10):
        pert = random_symmetry_scales(arch, c, gen, 1e-3)
        assert (l2_mass(arch, pert) >= m0 * (1 - 1e-12)).all()
    # scipy's minimiser of the convex objective finds the same minimum mass
    row = theta[0].numpy()
    best = minimize(
        lambda s: mass_at(arch, row, s), np.zeros(n), method="BFGS", options={"gtol": 1e-10}
    )
    assert float(m0[0]) <= best.fun * (1 + 1e-7)
    assert float(m0[0]) == pytest.approx(best.fun, rel=1e-5)


def random_symmetry_scales(arch, flat, gen, size):
    out = flat.clone()
    v = arch.views(out)
    for g in arch.unit_groups():
        scale_(v, g, torch.randn(flat.shape[0], g.size, generator=gen, dtype=flat.dtype) * size)
    return out


def test_l2_scaling_matches_the_two_layer_closed_form():
    # one hidden unit: mass a²λ² + b²/λ² is least at λ² = |b|/|a|, value 2|a||b|
    arch = ArchSpec((1, 1, 1))
    theta = torch.tensor([[3.0, 0.5, 0.25, 0.0]], dtype=torch.float64)  # W1, b1, W2, b2
    c = canonicalize(arch, theta, make_transform(arch, ["scale"])).params
    assert float(l2_mass(arch, c)[0]) == pytest.approx(2 * 3.0 * 0.25, rel=1e-12)
    lam = math.sqrt(0.25 / 3.0)
    assert c[0].tolist() == pytest.approx([3.0 * lam, 0.5 * lam, 0.25 / lam, 0.0], rel=1e-9)


def test_unitnorm_gives_unit_incoming_norms():
    arch = ArchSpec((3, 4, 5, 2))
    theta = torch.randn(
        2, arch.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    c = canonicalize(arch, theta, make_transform(arch, ["scale"], scale_mode="unitnorm")).params
    for row in c:
        for inn, _ in counted_in_out(arch, row):
            assert torch.allclose(inn, torch.ones_like(inn))


def test_mass_key_sorts_descending_and_output_layer_is_not_permuted():
    arch = ArchSpec((4, 6, 5, 3))
    theta = torch.randn(
        3, arch.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    c = canonicalize(arch, theta, make_transform(arch, key="mass"))
    for row in c.params:
        for inn, out in counted_in_out(arch, row):
            key = inn + out
            assert (key[:-1] >= key[1:]).all()
    # output units keep their order: outputs agree unit by unit
    x = torch.randn(5, 4, dtype=torch.float64)
    assert close(nn_outputs(arch, c.params, x), nn_outputs(arch, theta, x), 1e-10)


def test_tanh_signs_make_incoming_sums_positive():
    arch = ArchSpec((3, 4, 4, 2), "tanh")
    theta = torch.randn(
        2, arch.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    c = canonicalize(arch, theta, make_transform(arch)).params
    for row in c:
        sd = arch.state_dict(row)
        for w, b in (("0.weight", "0.bias"), ("2.weight", "2.bias")):
            assert (sd[w].sum(1) + sd[b] >= 0).all()


def test_sort_order_is_lexicographic_and_near_ties_are_counted():
    primary = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    tie = torch.tensor([[0.0, 1.0, 5.0, 0.0]])
    assert sort_order(primary, tie).tolist() == [[2, 1, 3, 0]]
    assert near_ties(torch.tensor([[3.0, 3.0 - 1e-6, 2.0, 1.0]])).tolist() == [1]
    assert near_ties(torch.tensor([[3.0, 2.0, 1.0]])).tolist() == [0]


def test_weight_match_recovers_a_known_permutation():
    arch = ArchSpec((5, 8, 7, 3))
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(1, arch.n_params, dtype=torch.float64, generator=gen)
    moved = random_symmetry(arch, ref.expand(4, -1).contiguous(), gen, ("perm",))
    aligned, perms, sweeps = weight_match(arch, moved, ref[0])
    assert torch.equal(aligned, ref.expand(4, -1))
    # the returned permutations take the input to the aligned weights
    back = moved.clone()
    for g, p in zip(arch.unit_groups(), perms, strict=True):
        permute_(arch.views(back), g, p)
    assert torch.equal(back, aligned)
    assert weight_match(arch, aligned, ref[0])[2] == 1  # a fixed point: one idle sweep


def test_weight_match_never_lowers_the_inner_product():
    arch = ArchSpec((4, 6, 6, 2))
    gen = torch.Generator().manual_seed(4)
    ref, other = torch.randn(2, arch.n_params, dtype=torch.float64, generator=gen)
    aligned = weight_match(arch, other[None], ref)[0][0]
    assert float(aligned @ ref) >= float(other @ ref)
    assert torch.allclose(aligned.norm(), other.norm())


@pytest.mark.parametrize(
    ("act", "syms", "kw", "msg"),
    [
        ("relu", ["perm", "rotate"], {}, "unknown `symmetries` rotate"),
        ("tanh", ["perm", "scale"], {}, "no scale symmetry"),
        ("gelu", ["sign"], {}, "no sign symmetry"),
        ("relu", None, {"key": "first"}, "unknown sort key"),
        ("relu", None, {"scale_mode": "l1"}, "unknown scale mode"),
        ("relu", ["scale"], {"reference": "m0"}, "must include perm"),
    ],
)
def test_bad_requests_are_usage_errors(act, syms, kw, msg):
    with pytest.raises(UsageError, match=msg):
        make_transform(ArchSpec((2, 3, 1), act), syms, **kw)


def test_linear_model_has_nothing_to_canonicalise():
    with pytest.raises(UsageError, match="no hidden units"):
        make_transform(ArchSpec((2, 1)))


def test_defaults_follow_the_activation():
    assert make_transform(ArchSpec((2, 3, 1), "tanh")).symmetries == ("perm", "sign")
    assert make_transform(ArchSpec((2, 3, 1), "gelu")).symmetries == ("perm",)
    t = make_transform(ArchSpec((2, 3, 1)))
    assert t == Transform("canonical", ("perm", "scale"), "mean", "l2", None)
