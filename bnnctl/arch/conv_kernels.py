"""Faster forms of the stacked convs of :meth:`bnnctl.arch.conv.ConvSpec.forward`.

:func:`grouped_conv` is ``F.conv2d(h, w, b, stride, padding, groups=groups)`` on a
channels-last map. When each group has one input channel and ``r > 1`` filters (OptuNet's
two convs, trained M at a time: groups = M, 1 channel in, 2 out; groups = 2M, 1 in, 5
out), oneDNN's grouped kernel is slow (≈ 14 ms for OptuNet's first conv of 64 models on
64 images each, 2 threads), while its depthwise kernel (one filter per channel) takes
≈ 3 ms: so the forward repeats each input channel ``r`` times (one ``index_select`` of
the channels-last map, ≈ 2.5 ms) and runs the depthwise conv, whose filters are the same
``w``. Each output is the same sum of the same products (the outputs agreed bit for bit
where measured; ``tests/test_conv_kernels.py`` checks them against ``F.conv2d`` per model
within float tolerance). The weight and bias gradients are the grouped conv's own
(``aten.convolution_backward`` on the unrepeated input, as autograd would call it: the
same bits as ``F.conv2d``'s, and faster than the depthwise weight gradient on the
repeated input); the input gradient, where needed (OptuNet's second conv), is the
depthwise conv's, with the ``r`` copies of each channel summed (≈ 2x faster than the
grouped one's; equal within float rounding). Every value is per channel (no reduction
across groups), so a model's results do not depend on the block it is trained in.
Measured with ``python scripts/bench_conv_layers.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["grouped_conv", "uses_depthwise"]


def uses_depthwise(h: torch.Tensor, w: torch.Tensor, groups: int) -> bool:
    """Whether :func:`grouped_conv` takes the repeated-input depthwise forward: one input
    channel per group, several filters per group, a channels-last map, float32 on the
    CPU."""
    return (
        h.dim() == 4
        and h.shape[1] == groups
        and w.shape[1] == 1
        and w.shape[0] > groups
        and w.shape[0] % groups == 0
        and h.dtype == torch.float32
        and h.device.type == "cpu"
        and h.is_contiguous(memory_format=torch.channels_last)
    )


def grouped_conv(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    stride: int,
    padding: int,
    groups: int,
) -> torch.Tensor:
    """``F.conv2d(h, w, b, stride, padding, groups=groups)``, with the depthwise forward
    where :func:`uses_depthwise` says so (see the module doc)."""
    if not uses_depthwise(h, w, groups):
        return F.conv2d(h, w, b, stride, padding, groups=groups)
    return _RepeatedDepthwise.apply(h, w, b, stride, padding, groups)


class _RepeatedDepthwise(torch.autograd.Function):
    """Forward: depthwise conv of ``h`` with each channel repeated ``r`` times; backward:
    weight and bias gradients from the grouped conv's ``convolution_backward``, the input
    gradient from the depthwise one's (each only when needed)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        h: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        stride: int,
        padding: int,
        groups: int,
    ) -> torch.Tensor:
        n, c, hh, ww = h.shape
        r = w.shape[0] // groups
        idx = torch.arange(c, device=h.device).repeat_interleave(r)
        # channels-last: [B*H*W, C] rows; repeat each column r times (c0 c0 c1 c1 ...)
        hr = h.permute(0, 2, 3, 1).reshape(-1, c).index_select(1, idx)
        hr = hr.view(n, hh, ww, c * r).permute(0, 3, 1, 2)
        ctx.save_for_backward(h, w)
        ctx.conf = (stride, padding, groups, b is not None)  # type: ignore[attr-defined]
        return F.conv2d(hr, w, b, stride, padding, groups=c * r)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        h, w = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding, groups, has_bias = ctx.conf  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        conf = ([stride, stride], [padding, padding], [1, 1], False, [0, 0])
        gi = gw = gb = None
        if need[1] or (has_bias and need[2]):
            _, gw, gb = torch.ops.aten.convolution_backward(
                g,
                h,
                w,
                [w.shape[0]] if has_bias else None,
                *conf,
                groups,
                [False, need[1], has_bias and need[2]],
            )
        if need[0]:
            # the depthwise conv's input gradient (it reads only the input's shape), then
            # the r copies of each channel summed: ~2x faster than the grouped one's
            n, c, hh, ww = h.shape
            r = w.shape[0] // groups
            like = torch.empty((n, c * r, hh, ww), dtype=h.dtype, memory_format=torch.channels_last)
            gr = torch.ops.aten.convolution_backward(
                g, like, w, None, *conf, c * r, [True, False, False]
            )[0]
            gi = gr.permute(0, 2, 3, 1).reshape(n, hh, ww, c, r).sum(-1).permute(0, 3, 1, 2)
        return gi, gw, gb, None, None, None
