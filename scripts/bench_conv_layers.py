"""Layer-level alternatives for training M stacked conv nets (forward AND backward), on
OptuNet's training shapes by default (a block of M=64 models, a minibatch of B=64
28x28 images per model):

  conv1   the first conv (1 input channel, 2 filters per model, k4; no input gradient);
  conv2   the second conv (2 groups of 1 channel in, 5 out per model, k5; with the input
          gradient, as training needs);
  pool    max pooling k3 of conv1's output [B, 2M, 25, 25];
  input   each model's minibatch gathered from a 2,048-image data set into the
          channels-last [B, M, 28, 28] map: a gather of [M, B, 784] then a layout copy
          (``ConvSpec._input``), or one gather from the pixel-major data set
          (``ConvSpec.minibatch_maps``, what the trainer does);
  step    the whole step: ``ConvSpec.forward`` + backward of M models, against one
          ``nn.Module`` (``ConvSpec.module()``) forward + backward, times M.

Candidates per layer: the grouped ``F.conv2d`` on a channels-last map (what
``ConvSpec._conv`` does) or on a contiguous (NCHW) one; a depthwise conv on the input
repeated once per filter; im2col (``as_strided``) + ``torch.bmm`` with weights
``[M, out, in*k*k]`` in a custom ``autograd.Function`` (one ``bmm`` for the weight
gradient, no input gradient unless needed); and a loop over the models (models in the
batch dim, one ``conv2d`` each). Every candidate's output and gradients are compared with
the first one's (``max_rel_diff``). Rounds are interleaved (the machine may be shared);
each figure is the best of the rounds, in ms.

    python scripts/bench_conv_layers.py             # M=64, B=64, 10 rounds
    python scripts/bench_conv_layers.py --quick     # tiny, for the test suite
    python scripts/bench_conv_layers.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F

from bnnctl.arch import ConvSpec, conv_kernels

CL = torch.channels_last


class Im2colBmm(torch.autograd.Function):
    """Per-model conv as im2col + bmm: ``x [M, B, C, H, W]`` (stride 1, no padding),
    ``w [M, out, C*k*k]`` -> ``[M, B, out, oh, ow]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
        m, b, c, h, wd = x.shape
        oh, ow = h - k + 1, wd - k + 1
        xc = x.contiguous()
        s = xc.stride()
        u = xc.as_strided((m, b, oh, ow, c, k, k), (s[0], s[1], s[3], s[4], s[2], s[3], s[4]))
        u = u.reshape(m, b * oh * ow, c * k * k)  # the im2col copy
        ctx.save_for_backward(u, w)
        ctx.shape = (m, b, c, h, wd, k, oh, ow)
        z = torch.bmm(u, w.transpose(1, 2))  # [M, B*L, out]
        return z.view(m, b, oh, ow, -1).permute(0, 1, 4, 2, 3)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        u, w = ctx.saved_tensors
        m, b, c, h, wd, k, oh, ow = ctx.shape
        g2 = g.permute(0, 1, 3, 4, 2).reshape(m, b * oh * ow, -1)  # [M, B*L, out]
        gw = torch.bmm(g2.transpose(1, 2), u)  # [M, out, C*k*k]: one bmm
        gx = None
        if ctx.needs_input_grad[0]:
            gu = torch.bmm(g2, w).view(m * b, oh * ow, c * k * k).transpose(1, 2)
            gx = F.fold(gu, (h, wd), k).view(m, b, c, h, wd)
        return gx, gw, None


def cl_input(x: torch.Tensor, m: int, c: int, hh: int, ww: int, how: str) -> torch.Tensor:
    """``[M, B, C*H*W]`` as channels-last ``[B, M*C, H, W]``: ``permute`` (a 5-d permute
    copy, as ``ConvSpec._input`` does for C > 1) or ``t2d`` (C=1: one 2-d transpose copy,
    as ``ConvSpec._input`` does for C = 1)."""
    b = x.shape[1]
    if how == "t2d" and c == 1:
        return x.reshape(m, -1).t().contiguous().view(b, hh, ww, m).permute(0, 3, 1, 2)
    x5 = x.reshape(m, b, c, hh, ww).permute(1, 3, 4, 0, 2)
    return x5.contiguous().view(b, hh, ww, m * c).permute(0, 3, 1, 2)


def best_of(cands: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time (ms) of each candidate, in interleaved rounds, after one warm-up."""
    for f in cands.values():
        f()
    best = dict.fromkeys(cands, float("inf"))
    for _ in range(rounds):
        for k, f in cands.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], 1e3 * (time.perf_counter() - t0))
    return best


def grad_of(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def conv_cands(
    xm: torch.Tensor, wm: torch.Tensor, gm: torch.Tensor, input_grad: bool
) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """Candidates for one per-model conv: ``xm [M, B, C, H, W]``, ``wm [M, out, C, k, k]``,
    output gradient ``gm [M, B, out, oh, ow]``; each returns [output as gm, *grads]."""
    m, b, c, hh, ww = xm.shape
    out, k = wm.shape[1], wm.shape[-1]
    oh, ow = hh - k + 1, ww - k + 1

    def to_cl(t5: torch.Tensor) -> torch.Tensor:  # [M, B, C, H, W] -> [B, M*C, H, W] CL
        mm, bb, cc, h, w = t5.shape
        return t5.permute(1, 3, 4, 0, 2).reshape(bb, h, w, mm * cc).permute(0, 3, 1, 2)

    def from_maps(o: torch.Tensor) -> torch.Tensor:  # [B, M*out, oh, ow] -> [M, B, out, ..]
        return o.reshape(b, m, out, oh, ow).transpose(0, 1)

    def run(
        x: torch.Tensor, w: torch.Tensor, fwd: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> list[torch.Tensor]:
        x = x.detach().requires_grad_(input_grad)
        w = w.detach().requires_grad_(True)
        o = fwd(x, w)
        o.backward(gm)
        grads = [o.detach(), grad_of(w).reshape(wm.shape)]
        if input_grad:
            gx = grad_of(x)
            if gx.dim() == 4:  # [B, M*C, H, W] -> [M, B, C, H, W]
                gx = gx.reshape(b, m, c, hh, ww).transpose(0, 1)
            grads.append(gx)
        return grads

    xcl = to_cl(xm).contiguous(memory_format=CL)
    xnc = xcl.contiguous()
    wf = wm.reshape(m * out, c, k, k)

    def grouped(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return from_maps(F.conv2d(x, w, groups=m))

    def depthwise(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # each input channel repeated once per filter (c == 1 per group: depthwise)
        xp = x.permute(0, 2, 3, 1)  # [B, H, W, M*C]
        xr = xp.unsqueeze(-1).expand(*xp.shape, out).reshape(b, hh, ww, m * out)
        return from_maps(F.conv2d(xr.permute(0, 3, 1, 2), w, groups=m * out))

    def im2col(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return Im2colBmm.apply(x, w.reshape(m, out, -1), k)

    def loop(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.conv2d(x[i], w[i]) for i in range(m)])

    def depthwise_fwd(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return from_maps(conv_kernels.grouped_conv(x, w, None, 1, 0, m))

    cands = {
        "grouped conv2d, channels-last": lambda: run(xcl, wf, grouped),
        "grouped conv2d, NCHW": lambda: run(xnc, wf, grouped),
        "im2col + bmm (Function)": lambda: run(xm, wm, im2col),
        "loop over models (batch dim)": lambda: run(xm, wm, loop),
    }
    if c == 1:
        cands["depthwise on repeated input, CL"] = lambda: run(xcl, wf, depthwise)
        cands["conv_kernels: depthwise fwd, grouped bwd"] = lambda: run(xcl, wf, depthwise_fwd)
    return cands


def pool_cands(h: torch.Tensor, g: torch.Tensor, k: int) -> dict[str, Callable[[], list]]:
    """Max pooling (kernel = stride = k) of a channels-last ``h [B, C, H, W]``."""

    def run(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        x = x.detach().requires_grad_(True)
        o = fn(x)
        o.backward(g)
        return [o.detach(), grad_of(x)]

    def windows(x: torch.Tensor) -> torch.Tensor:
        bb, cc, hh, ww = x.shape
        oh, ow = hh // k, ww // k
        xp = x.permute(0, 2, 3, 1)[:, : oh * k, : ow * k]  # [B, H', W', C] (a view if CL)
        s = xp.stride()
        v = xp.as_strided((bb, oh, ow, cc, k, k), (s[0], k * s[1], k * s[2], s[3], s[1], s[2]))
        return v.amax((-2, -1)).permute(0, 3, 1, 2)

    hnc, gnc = h.contiguous(), g.contiguous()

    def run_nc(x: torch.Tensor) -> list[torch.Tensor]:
        x = x.detach().requires_grad_(True)
        o = F.max_pool2d(x, k)
        o.backward(gnc)
        return [o.detach(), grad_of(x)]

    return {
        "max_pool2d, channels-last": lambda: run(lambda x: F.max_pool2d(x, k), h),
        "max_pool2d, NCHW": lambda: run_nc(hnc),
        "as_strided + amax, CL": lambda: run(windows, h),
    }


def trainer_ab(m: int, rounds: int) -> None:
    """Seconds per epoch of ``train_models`` on one block of ``m`` OptuNets (OptuNet's
    recipe, batch 64, 2048 synthetic images), with and without the depthwise forward,
    in interleaved rounds; prints the best and median of each and the rounds' ratios."""
    import statistics

    from bnnctl import TrainConfig
    from bnnctl.engines.train import Population, train_models
    from bnnctl.testing.images import synthetic_images

    arch = ConvSpec.parse("optunet")
    ds = synthetic_images(arch.input, 2048, 512)
    cfg = TrainConfig(optimizer="sgd", lr=0.04, weight_decay=2e-4, epochs=1, batch_size=64)
    pop = Population("bench", arch, cfg, ds)
    keep = conv_kernels.uses_depthwise

    def run(depthwise: bool) -> float:
        if not depthwise:
            conv_kernels.uses_depthwise = lambda *a: False
        try:
            t0 = time.perf_counter()
            train_models(pop, list(range(m)))
            return time.perf_counter() - t0
        finally:
            conv_kernels.uses_depthwise = keep

    run(True), run(False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for d in (True, False):
            times[d].append(run(d))
    for d, name in ((True, "depthwise forward"), (False, "grouped F.conv2d")):
        t = times[d]
        print(
            f"train_models, {m} models, 1 epoch, {name:18s}: best {min(t):.2f} s, "
            f"median {statistics.median(t):.2f} s ({1e3 * min(t) / 32:.1f} ms/step at best)"
        )
    ratios = [round(b / a, 2) for a, b in zip(times[True], times[False], strict=True)]
    print(f"  speed-up per round (grouped / depthwise): {ratios}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's default")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--trainer",
        type=int,
        default=0,
        help="then time this many interleaved rounds of train_models (one block of M models, "
        "one epoch of 2048 synthetic images) with and without conv_kernels' depthwise forward",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        help="then profile this many batched steps (torch.profiler)",
    )
    args = ap.parse_args()
    if args.quick:
        args.models, args.batch, args.rounds = 4, 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    m, b = args.models, args.batch
    gen = torch.Generator().manual_seed(0)
    arch = ConvSpec.parse("optunet")
    results: dict[str, dict[str, dict[str, float]]] = {}

    def measure(name: str, cands: dict[str, Callable[[], list]]) -> None:
        ref = next(iter(cands.values()))()
        diffs = {}
        for k, f in cands.items():
            got = f()
            diffs[k] = max(rel(a, r) for a, r in zip(got, ref, strict=True))
        times = best_of(cands, args.rounds)
        results[name] = {k: {"ms": round(times[k], 3), "max_rel_diff": diffs[k]} for k in cands}

    x1 = torch.rand(m, b, 1, 28, 28, generator=gen)
    w1 = torch.randn(m, 2, 1, 4, 4, generator=gen) / 4
    g1 = torch.randn(m, b, 2, 25, 25, generator=gen)
    measure("conv1", conv_cands(x1, w1, g1, input_grad=False))
    x2 = torch.randn(m, b, 2, 8, 8, generator=gen)
    w2 = torch.randn(m, 10, 1, 5, 5, generator=gen) / 5
    g2 = torch.randn(m, b, 10, 4, 4, generator=gen)
    # the second conv has 2 groups per model: as 2M models of 1 channel in, 5 out
    measure(
        "conv2",
        conv_cands(
            x2.reshape(m, b, 2, 1, 8, 8).transpose(1, 2).reshape(2 * m, b, 1, 8, 8),
            w2.reshape(2 * m, 5, 1, 5, 5),
            g2.reshape(m, b, 2, 5, 4, 4).transpose(1, 2).reshape(2 * m, b, 5, 4, 4),
            input_grad=True,
        ),
    )
    hp = torch.randn(b, 2 * m, 25, 25, generator=gen).contiguous(memory_format=CL)
    gp = torch.randn(b, 2 * m, 8, 8, generator=gen).contiguous(memory_format=CL)
    measure("pool", pool_cands(hp, gp, 3))
    data = torch.rand(2048, 784, generator=gen)  # a data set, and each model's minibatch
    data_t = data.t().contiguous()  # pixel-major, as the trainer keeps one-channel images
    pick = torch.randint(0, 2048, (m, b), generator=gen)
    cands_in: dict[str, Callable[[], list]] = {
        f"gather + {how}": partial(
            lambda h: [
                cl_input(data.index_select(0, pick.reshape(-1)).view(m, b, -1), m, 1, 28, 28, h)
            ],
            how,
        )  # fmt: skip
        for how in ("permute", "t2d")
    }
    cands_in["pixel-major gather (minibatch_maps)"] = lambda: [arch.minibatch_maps(data_t, pick)]
    measure("input", cands_in)

    params = torch.stack([arch.init(gen) for _ in range(m)])
    xs = torch.rand(m, b, arch.n_inputs, generator=gen)
    ys = torch.randint(0, 10, (m, b), generator=gen)
    net = arch.module()

    def batched() -> list[torch.Tensor]:
        p = params.detach().requires_grad_(True)
        loss = F.cross_entropy(arch.forward(p, xs).reshape(m * b, -1), ys.reshape(-1))
        loss.backward()
        return [grad_of(p) * m]

    def batched_grouped() -> list[torch.Tensor]:  # without conv_kernels' depthwise forward
        keep = conv_kernels.uses_depthwise
        conv_kernels.uses_depthwise = lambda *a: False
        try:
            return batched()
        finally:
            conv_kernels.uses_depthwise = keep

    def one_at_a_time() -> list[torch.Tensor]:
        grads = []
        for i in range(m):
            torch.nn.utils.vector_to_parameters(params[i], net.parameters())
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(xs[i].view(b, *arch.input)), ys[i]).backward()
            grads.append(torch.cat([grad_of(q).reshape(-1) for q in net.parameters()]))
        return [torch.stack(grads)]

    measure(
        "step",
        {
            "ConvSpec.forward + backward (M models)": batched,
            "the same, grouped F.conv2d forward": batched_grouped,
            "nn.Module loop (M x 1)": one_at_a_time,
        },
    )
    step = results["step"]
    out = {
        "models": m,
        "batch": b,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "layers": results,
        "step_ratio": round(
            step["nn.Module loop (M x 1)"]["ms"]
            / step["ConvSpec.forward + backward (M models)"]["ms"],
            2,
        ),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"M={m} models, B={b} per model, {out['threads']} threads, best of {args.rounds}")
    for name, cands in results.items():
        print(name)
        for k, r in cands.items():
            print(f"  {k:42s} {r['ms']:9.2f} ms   max rel diff {r['max_rel_diff']:.1e}")
    print(f"step: batched / one-at-a-time speed ratio {out['step_ratio']}")
    if args.trainer:
        trainer_ab(m, args.trainer)
    if args.profile:
        from torch.profiler import profile

        with profile(record_shapes=True) as prof:
            for _ in range(args.profile):
                batched()
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40
        )
        print(f"profile of {args.profile} batched steps (self CPU time, by op and shapes)")
        print(table)


if __name__ == "__main__":
    main()
