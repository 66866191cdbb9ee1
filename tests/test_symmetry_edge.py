"""Canonical forms at the edges, against independent truth: units tied exactly on their
incoming weights and bias, and dead units (all incoming or all outgoing weights zero).
Symmetries are applied here by a plain state_dict reimplementation, functions compared
with torch.nn (bnnctl.testing.reference), dead units counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnctl import ArchSpec, Store
from bnnctl.engines.canonicalize import canonicalize as canonicalize_store
from bnnctl.symmetry.canonical import canonicalize
from bnnctl.symmetry.transform import KEYS, make_transform
from bnnctl.testing.reference import outputs as nn_outputs
from bnnctl.testing.strategies import networks


def act_on(arch: ArchSpec, row: torch.Tensor, perms=None, log_scales=None) -> torch.Tensor:
    """A permuted and rescaled copy of one ``[P]`` row, written on the state_dict: hidden
    layer ``l``'s new unit ``k`` is old unit ``perms[l][k]``, scaled by
    ``exp(log_scales[l])`` (incoming weights and bias ×λ, outgoing ×1/λ)."""
    sd = arch.state_dict(row)
    names = [t.name for t in arch.layout]
    for layer in range(len(arch.widths) - 2):
        w, b, w_next = names[2 * layer], names[2 * layer + 1], names[2 * layer + 2]
        if log_scales is not None:
            lam = log_scales[layer].exp()
            sd[w], sd[b], sd[w_next] = sd[w] * lam[:, None], sd[b] * lam, sd[w_next] / lam
        if perms is not None:
            p = perms[layer]
            sd[w], sd[b], sd[w_next] = sd[w][p], sd[b][p], sd[w_next][:, p]
    return torch.cat([sd[n].reshape(-1) for n in names])


def random_perms(arch: ArchSpec, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randperm(n, generator=gen) for n in arch.widths[1:-1]]


def random_scales(arch: ArchSpec, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(n, generator=gen, dtype=torch.float64) * 3 - 1.5 for n in arch.widths[1:-1]]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> bool:
    return bool((a - b).abs().max() <= rtol * max(1.0, float(b.abs().max())))


# --- exact ties in permutation sorting ---------------------------------------------------


def tie(arch: ArchSpec, row: torch.Tensor, layer: int, a: int = 0, b: int = 1) -> torch.Tensor:
    """Unit ``b`` of hidden layer ``layer`` given unit ``a``'s incoming weights and bias
    (its outgoing weights stay different)."""
    sd = arch.state_dict(row)
    w, bias = (t.name for t in arch.layout[2 * layer : 2 * layer + 2])
    sd[w][b], sd[bias][b] = sd[w][a], sd[bias][a]
    return torch.cat([sd[t.name].reshape(-1) for t in arch.layout])


@pytest.mark.parametrize("act", ["tanh", "gelu"])
@pytest.mark.parametrize("layer", [0, 1])
def test_units_tied_on_incoming_weights_and_bias_sort_by_outgoing_weights(act, layer):
    # before the fix the tied pair kept its input order: the two canonical forms were
    # 1.42 (tie in the first hidden layer) and 3.65 (second) apart in L2
    arch = ArchSpec((3, 4, 3, 2), act)
    gen = torch.Generator().manual_seed(0)
    theta = tie(arch, torch.randn(arch.n_params, generator=gen, dtype=torch.float64), layer)
    swap = [torch.arange(n) for n in arch.widths[1:-1]]
    swap[layer][:2] = torch.tensor([1, 0])
    moved = act_on(arch, theta, swap)
    x = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    assert not torch.equal(moved, theta)
    assert close(nn_outputs(arch, moved[None], x), nn_outputs(arch, theta[None], x), 1e-12)
    t = make_transform(arch, ["perm"])
    a = canonicalize(arch, theta[None], t).params
    assert torch.equal(canonicalize(arch, moved[None], t).params, a)
    assert close(nn_outputs(arch, a, x), nn_outputs(arch, theta[None], x), 1e-12)


@settings(max_examples=60, deadline=None)
@given(networks(), st.sampled_from(KEYS), st.data())
def test_forced_ties_do_not_break_permutation_invariance(net, key, data):
    """canon(π·θ) = canon(θ) for random π, with units tied exactly in random layers."""
    arch, theta, gen = net
    row = theta[0]
    for layer, n in enumerate(arch.widths[1:-1]):
        if n >= 2 and data.draw(st.booleans()):
            a, b = data.draw(st.permutations(range(n)))[:2]
            row = tie(arch, row, layer, a, b)
    syms = [s for s in arch.symmetries if s != "scale"]  # scaling would split the tie
    t = make_transform(arch, syms, key=key)
    moved = act_on(arch, row, random_perms(arch, gen))
    assert torch.equal(
        canonicalize(arch, moved[None], t).params, canonicalize(arch, row[None], t).params
    )


# --- dead units ------------------------------------------------------------------------


def with_dead_units(arch: ArchSpec, row: torch.Tensor) -> torch.Tensor:
    """A 3-7-6-2 net with dead units of every kind: in layer 1, unit 0 has no incoming
    weights and bias 0.7 (a constant output), unit 1 none and bias -0.4 (relu: output
    0), unit 2 no outgoing weights; in layer 2, unit 0's only input is layer-1 unit 0
    (constant too, once that is folded), unit 1 has no outgoing weights."""
    sd = arch.state_dict(row)
    w0, b0, w1, _, w2, _ = (sd[t.name] for t in arch.layout)
    w0[:2] = 0
    b0[0], b0[1] = 0.7, -0.4
    w1[:, 2] = 0
    w1[0, 1:] = 0
    w2[:, 1] = 0
    return torch.cat([sd[t.name].reshape(-1) for t in arch.layout])


def zero_units(arch: ArchSpec, row: torch.Tensor) -> int:
    """Hidden units whose incoming weights, bias and outgoing weights are all zero."""
    ts = [arch.state_dict(row)[t.name] for t in arch.layout]
    return sum(
        int(((w == 0).all(1) & (b == 0) & (w_next == 0).all(0)).sum())
        for w, b, w_next in zip(ts[0:-2:2], ts[1:-2:2], ts[2::2], strict=True)
    )


@pytest.mark.parametrize(
    ("act", "mode", "dropout", "n_dead", "n_zero", "kept"),
    [
        # without dropout every dead unit is zeroed, its constant folded into a bias
        ("relu", "l2", 0.0, 5, 5, []),
        ("leaky_relu", "l2", 0.0, 5, 5, []),
        ("relu", "unitnorm", 0.0, 5, 5, []),
        # with dropout a constant act(b) != 0 stays, scaled to |b| = 1, so layer-2 unit 0
        # keeps an input
        ("relu", "l2", 0.25, 4, 3, [1.0]),
        ("leaky_relu", "unitnorm", 0.25, 4, 2, [-1.0, 1.0]),
    ],
)
def test_dead_units_have_one_canonical_form(act, mode, dropout, n_dead, n_zero, kept):
    # before the fix a rescaled copy's canonical form was 5.83 away in L2 (unitnorm: 33.8)
    arch = ArchSpec((3, 7, 6, 2), act, dropout)
    gen = torch.Generator().manual_seed(1)
    theta = with_dead_units(arch, torch.randn(arch.n_params, generator=gen).double())
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    t = make_transform(arch, scale_mode=mode)
    c = canonicalize(arch, theta[None], t)
    f = nn_outputs(arch, theta[None], x)
    assert close(nn_outputs(arch, c.params, x), f, 1e-12)  # the function is unchanged
    for g in range(3):  # canon(g·θ) = canon(θ) for scalings, permutations and both
        moved = act_on(
            arch,
            theta,
            random_perms(arch, gen) if g != 0 else None,
            random_scales(arch, gen) if g != 1 else None,
        )
        assert close(nn_outputs(arch, moved[None], x), f, 1e-10)
        assert close(canonicalize(arch, moved[None], t).params, c.params)
    assert close(canonicalize(arch, c.params, t).params, c.params)  # idempotent
    assert c.dead.tolist() == [n_dead]
    assert zero_units(arch, c.params[0]) == n_zero
    w0, b0 = (arch.state_dict(c.params[0])[t.name] for t in arch.layout[:2])
    constant = (w0 == 0).all(1) & (b0 != 0)
    assert sorted(b0[constant].tolist()) == pytest.approx(kept)


@settings(max_examples=60, deadline=None)
@given(networks(activations=("relu", "leaky_relu")), st.data())
def test_random_dead_units_keep_the_function_and_invariance(net, data):
    arch, theta, gen = net
    sd = arch.state_dict(theta[0])
    weights = [t.name for t in arch.layout if t.name.endswith("weight")]
    for layer, n in enumerate(arch.widths[1:-1]):  # kill some incoming rows and outgoing columns
        for j in range(n):
            side = data.draw(st.sampled_from(["alive", "alive", "no input", "no output"]))
            if side == "no input":
                sd[weights[layer]][j] = 0
            elif side == "no output":
                sd[weights[layer + 1]][:, j] = 0
    row = torch.cat([sd[t.name].reshape(-1) for t in arch.layout])
    t = make_transform(arch, scale_mode=data.draw(st.sampled_from(["l2", "unitnorm"])))
    c = canonicalize(arch, row[None], t).params
    x = torch.randn(7, arch.widths[0], generator=gen, dtype=torch.float64)
    assert close(nn_outputs(arch, c, x), nn_outputs(arch, row[None], x), 1e-9)
    moved = act_on(arch, row, random_perms(arch, gen), random_scales(arch, gen))
    assert close(canonicalize(arch, moved[None], t).params, c)


def test_canonicalize_reports_dead_units(tmp_path, digits):
    """Two rescaled copies of one net with dead units, through `bnnctl canonicalize`."""
    arch = ArchSpec((64, 7, 6, 10))
    gen = torch.Generator().manual_seed(2)
    theta = with_dead_units(arch, arch.init(gen).double())
    rows = torch.stack([theta, act_on(arch, theta, None, random_scales(arch, gen))])
    st_ = Store.open(tmp_path / "d.zarr", create=True)
    common = {
        "population": "dead",
        "kind": "import",
        "method": "import",
        "dataset": "digits",
        "task": "classification",
        "data": st_.put_dataset(digits),
        "data_sha256": digits.sha256,
        "config_sha256": "0" * 64,
    }
    st_.commit_block(
        "params/dead/a",
        rows.float().numpy(),
        "float32",
        arch,
        [{"model_id": f"dead.{k}", **common} for k in range(2)],
    )
    res = canonicalize_store(st_)
    canon = st_.read_params(res.rows.sort_values("parent_id"))
    np.testing.assert_allclose(canon[0], canon[1], rtol=1e-5, atol=1e-6)
    assert res.report["dead_units"] == 2 * 5 and res.report["models_with_dead_units"] == 2
