"""The stacked conv layers of ``ConvSpec`` (``_input`` then ``_conv``: grouped convs of M
models, the unfold + matmul of an ungrouped first conv on a shared input, the channels-last
layouts of per-model inputs) against plain ``torch.nn.functional.conv2d`` run on each
model alone: values and gradients (weights, bias, and the input where it is per model),
over random shapes, strides, paddings and groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnctl.arch import ConvSpec
from bnnctl.arch.conv import Layer
from bnnctl.arch.conv_kernels import uses_depthwise

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL, ATOL = 1e-5, 1e-5


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    out = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    hh = draw(st.integers(max(1, k - 2 * padding), 9))
    ww = draw(st.integers(max(1, k - 2 * padding), 9))
    m = draw(st.integers(1, 4))
    b = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    per_model = draw(st.booleans())
    flat = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return groups, c_in, out, k, stride, padding, hh, ww, m, b, bias, per_model, flat, seed


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_stacked_conv_matches_conv2d_per_model(case):
    groups, c_in, out, k, stride, padding, hh, ww, m, b, bias, per_model, flat, seed = case
    gen = torch.Generator().manual_seed(seed)
    arch = ConvSpec(
        (Layer("conv", out, k, stride, padding, groups, bias), Layer("gap")), (c_in, hh, ww)
    )
    ly = arch.layers[0]
    w = torch.randn(m, out, c_in // groups, k, k, generator=gen, requires_grad=True)
    bb = torch.randn(m, out, generator=gen, requires_grad=True) if bias else None
    shape = (m, b) if per_model else (b,)
    x = torch.randn(*shape, c_in, hh, ww, generator=gen, requires_grad=True)
    xin = x.reshape(*shape, -1) if flat else x

    h, stacked = arch._input(xin, m)
    assert stacked == per_model
    y = ConvSpec._conv(h, w, bb, ly, m, stacked)  # [B, M*out, oh, ow]
    oh, ow = y.shape[2:]
    got = y.reshape(b, m, out, oh, ow).transpose(0, 1)  # [M, B, out, oh, ow]
    gy = torch.randn(got.shape, generator=gen)
    grads = torch.autograd.grad(got, [w, x] + ([bb] if bb is not None else []), gy)

    wr = w.detach().requires_grad_(True)
    br = bb.detach().requires_grad_(True) if bb is not None else None
    xr = x.detach().requires_grad_(True)
    ref = torch.stack(
        [
            F.conv2d(
                xr[i] if per_model else xr,
                wr[i],
                br[i] if br is not None else None,
                stride,
                padding,
                groups=groups,
            )
            for i in range(m)
        ]
    )
    rgrads = torch.autograd.grad(ref, [wr, xr] + ([br] if br is not None else []), gy)
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)
    for g, r in zip(grads, rgrads, strict=True):
        torch.testing.assert_close(g, r, rtol=RTOL, atol=ATOL)


@settings(max_examples=30, deadline=None)
@given(
    c=st.integers(1, 3),
    hh=st.integers(1, 6),
    ww=st.integers(1, 6),
    m=st.integers(1, 5),
    b=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_per_model_input_layout(c, hh, ww, m, b, seed):
    """Per-model minibatches ``[M, B, C*H*W]`` become ``[B, M*C, H, W]`` (models outer,
    channels inner), channels-last, with the same values (the C = 1 transpose path and
    the general permute)."""
    arch = ConvSpec((Layer("conv", 2, 1), Layer("gap")), (c, hh, ww))
    x = torch.randn(m, b, c * hh * ww, generator=torch.Generator().manual_seed(seed))
    h, stacked = arch._input(x, m)
    assert stacked and h.shape == (b, m * c, hh, ww)
    assert h.is_contiguous(memory_format=torch.channels_last)
    want = x.view(m, b, c, hh, ww).transpose(0, 1).reshape(b, m * c, hh, ww)
    assert torch.equal(h, want)


@pytest.mark.parametrize(
    "c_in, out, k, stride, padding", [(1, 2, 4, 1, 0), (1, 5, 5, 1, 0), (1, 3, 3, 2, 1)]
)
def test_depthwise_forward_block_invariant_and_backward_as_conv2d(c_in, out, k, stride, padding):
    """The repeated-input depthwise forward (one input channel per group): taken on the
    channels-last maps of stacked models; model i's outputs and gradients are bit for bit
    the same in a block of 2 or of 7 models; the weight and bias gradients are the grouped
    conv's (F.conv2d's bit for bit), the input gradient within float tolerance."""
    gen = torch.Generator().manual_seed(1)
    m_big, b, hh = 7, 3, 11
    arch = ConvSpec((Layer("conv", out, k, stride, padding, 1, True), Layer("gap")), (1, hh, hh))
    ly = arch.layers[0]
    x = torch.randn(m_big, b, hh * hh, generator=gen)
    w = torch.randn(m_big, out, 1, k, k, generator=gen)
    bias = torch.randn(m_big, out, generator=gen)
    results = {}
    for m in (2, m_big):
        h, _ = arch._input(x[:m], m)
        assert uses_depthwise(h, w[:m].reshape(m * out, 1, k, k), m)
        hl = h.detach().requires_grad_(True)
        wl, bl = w[:m].clone().requires_grad_(True), bias[:m].clone().requires_grad_(True)
        y = ConvSpec._conv(hl, wl, bl, ly, m, True)
        oh, ow = y.shape[2:]
        gy = torch.randn(b, m_big * out, oh, ow, generator=torch.Generator().manual_seed(2))
        gy = gy[:, : m * out].contiguous(memory_format=torch.channels_last)
        y.backward(gy)
        wr, br = wl.detach().requires_grad_(True), bl.detach().requires_grad_(True)
        hr = h.detach().requires_grad_(True)
        yr = F.conv2d(hr, wr.reshape(-1, 1, k, k), br.reshape(-1), stride, padding, groups=m)
        yr.backward(gy)
        torch.testing.assert_close(y, yr, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(hl.grad, hr.grad, rtol=RTOL, atol=ATOL)
        for g, r in ((wl.grad, wr.grad), (bl.grad, br.grad)):
            assert torch.equal(g, r)
        results[m] = [
            y.reshape(b, m, out, *y.shape[2:])[:, :2],
            hl.grad[:, :2],
            wl.grad[:2],
            bl.grad[:2],
        ]
    for a, c in zip(results[2], results[m_big], strict=True):
        assert torch.equal(a, c)
