"""Batched forward of M stacked CNNs: the grouped-conv implementation
(``ConvSpec.forward``: the models are the groups of one grouped ``conv2d``, ``bmm`` for
the linear layers) against ``torch.func.vmap`` over ``functional_call`` of the
``nn.Module`` (``ConvSpec.forward_vmap``), on one CPU thread. Both are checked to agree.

    python scripts/bench_conv_forward.py            # OptuNet, M=256, B=128
    python scripts/bench_conv_forward.py --quick    # M=8, B=16, for the test suite
    python scripts/bench_conv_forward.py --arch lenet5 --json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bnnctl.arch import ConvSpec


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up call), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="optunet")
    ap.add_argument("--models", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batch, args.repeats = 8, 16, 1
    torch.set_num_threads(1)
    arch = ConvSpec.parse(args.arch)
    gen = torch.Generator().manual_seed(0)
    params = torch.stack([arch.init(gen) for _ in range(args.models)])
    x = torch.randn(args.batch, *arch.input, generator=gen)
    with torch.no_grad():
        a, b = arch.forward(params, x), arch.forward_vmap(params, x)
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        t_grouped = best_time(lambda: arch.forward(params, x), args.repeats)
        t_vmap = best_time(lambda: arch.forward_vmap(params, x), args.repeats)
    out = {
        "arch": arch.name,
        "models": args.models,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "grouped_ms": 1e3 * t_grouped,
        "vmap_ms": 1e3 * t_vmap,
        "grouped_models_per_s": args.models / t_grouped,
        "vmap_models_per_s": args.models / t_vmap,
        "max_rel_diff": err,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{arch.name}: M={args.models} models, B={args.batch}, 1 thread")
    for k in ("grouped", "vmap"):
        print(
            f"  {k:8s} {out[f'{k}_ms']:9.2f} ms/batch  "
            f"{out[f'{k}_models_per_s']:10.0f} model-batches/s"
        )
    print(f"  max relative difference {err:.2e}")


if __name__ == "__main__":
    main()
