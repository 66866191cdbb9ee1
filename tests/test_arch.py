"""The arch spec against PyTorch itself: layout = nn.Sequential's state_dict, batched
forward = nn.Module forward, hand-written backward = autograd."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from bnnctl.arch import ArchSpec
from bnnctl.errors import UsageError
from bnnctl.evaluate.likelihood import Categorical, Gaussian, two_class_logits
from bnnctl.testing.reference import build_module
from bnnctl.testing.strategies import archs


@given(archs)
@settings(max_examples=40, deadline=None)
def test_layout_matches_pytorch_state_dict(arch):
    sd = build_module(arch).state_dict()
    assert [t.name for t in arch.layout] == list(sd)
    assert [t.shape for t in arch.layout] == [tuple(v.shape) for v in sd.values()]
    assert arch.n_params == sum(v.numel() for v in sd.values())
    assert ArchSpec.from_json(arch.to_json()) == arch
    assert ArchSpec.from_json(json.loads(arch.to_json())) == arch


@given(archs, st.integers(1, 4), st.integers(1, 5), st.booleans())
@settings(max_examples=40, deadline=None)
def test_forward_matches_modules_and_backward_matches_autograd(arch, m, b, shared_x):
    torch.manual_seed(0)
    flat = torch.randn(m, arch.n_params, dtype=torch.float64)
    x = torch.randn(*((b,) if shared_x else (m, b)), arch.widths[0], dtype=torch.float64)
    # forward vs one nn.Module per model
    ref = []
    for i in range(m):
        net = build_module(arch).double().eval()
        net.load_state_dict(arch.state_dict(flat[i]))
        ref.append(net(x if shared_x else x[i]))
    out = arch.forward(flat, x)
    torch.testing.assert_close(out, torch.stack(ref), rtol=1e-10, atol=1e-10)
    # backward vs autograd, through model-major and layer-major parameters
    y = (
        torch.randint(0, arch.widths[-1], (b,))
        if arch.widths[-1] > 1
        else torch.randint(0, 2, (b,))
    )
    masks = None
    if arch.dropout:
        masks = [
            torch.bernoulli(torch.full((m, b, w), 0.75, dtype=torch.float64)) / 0.75
            for w in arch.widths[1:-1]
        ]
    leaf = flat.clone().requires_grad_(True)
    auto_out = arch.forward(leaf, x, dropout_masks=masks)
    logits = two_class_logits(auto_out)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.repeat(m), reduction="sum"
    )
    ce.backward()
    _, dout = Categorical().nll_and_grad(auto_out.detach(), y)
    keep = []
    arch.forward(flat, x, keep, masks)
    grad = arch.backward(flat, keep, dout.detach(), torch.zeros_like(flat), masks)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-8, atol=1e-10)
    buf = arch.to_layer_major(flat)
    torch.testing.assert_close(arch.to_model_major(buf, m), flat, rtol=0, atol=0)
    gbuf = torch.zeros_like(buf)
    keep = []
    arch.forward(arch.layer_views(buf, m), x, keep, masks)
    arch.backward(arch.layer_views(buf, m), keep, dout.detach(), arch.layer_views(gbuf, m), masks)
    torch.testing.assert_close(arch.to_model_major(gbuf, m), leaf.grad, rtol=1e-8, atol=1e-10)


def test_likelihood_gradients_match_autograd_of_torch_losses():
    torch.manual_seed(1)
    out = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (5,))
    torch.nn.functional.cross_entropy(out.reshape(-1, 3), y.repeat(2), reduction="sum").backward()
    _, g = Categorical().nll_and_grad(out.detach(), y)
    torch.testing.assert_close(g, out.grad)
    out.grad = None
    yr = torch.randn(5, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(out, 0.3).log_prob(yr).sum(dim=(1, 2))
    (-ref.sum()).backward()
    nll, g = Gaussian(0.3).nll_and_grad(out.detach(), yr)
    torch.testing.assert_close(g, out.grad)
    torch.testing.assert_close(nll, -ref.detach())
    # categorical NLL equals torch's cross entropy (a peer implementation)
    out, y = torch.randn(1, 6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    nll, _ = Categorical().nll_and_grad(out, y)
    ref = torch.nn.functional.cross_entropy(out[0], y, reduction="sum")
    torch.testing.assert_close(nll[0], ref)
    # a single logit is binary logistic regression
    z, yb = torch.randn(1, 6, 1, dtype=torch.float64), torch.randint(0, 2, (6,))
    nll, _ = Categorical().nll_and_grad(z, yb)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        z[0, :, 0], yb.double(), reduction="sum"
    )
    torch.testing.assert_close(nll[0], ref)


@pytest.mark.parametrize(
    "text,err",
    [
        ("mlp:64", "cannot parse"),
        ("cnn:3-4", "cannot parse"),
        ("mlp:0-3", "positive"),
        ("mlp:4-x-2", "cannot parse"),
    ],
)
def test_bad_arch_is_a_usage_error(text, err):
    with pytest.raises(UsageError, match=err):
        ArchSpec.parse(text)


def test_unknown_activation_and_symmetries():
    with pytest.raises(UsageError, match="unknown activation"):
        ArchSpec((2, 3, 1), "swish")
    assert ArchSpec((2, 3, 1), "relu").symmetries == ("perm", "scale")
    assert ArchSpec((2, 3, 1), "tanh").symmetries == ("perm", "sign")
    assert ArchSpec((2, 3, 1), "gelu").symmetries == ("perm",)
    groups = ArchSpec((4, 3, 2, 1)).unit_groups()
    assert [g.size for g in groups] == [3, 2]
    assert groups[1].incoming == (("2.weight", 0), ("2.bias", 0)) and groups[1].outgoing == (
        ("4.weight", 1),
    )
