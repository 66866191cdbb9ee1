"""Training throughput, measured in one run on the default config (digits, MLP
64-128-128-10, Adam 1e-3, batch 128, 50 epochs):

  (a) a plain loop: one nn.Module at a time with torch.optim.Adam(fused=True);
  (b) bnnctl's trainer: `bnnctl.engines.train` into a fresh store (blocks of stacked models,
      evaluation and crash-safe writes included);
  (c) this machine's sgemm rate (torch.mm on large square matrices).

Prints models/s for (a) and (b), the ratio b/a, and (b)'s fraction of the sgemm
roofline with matmul FLOPs counted per model-epoch. `--quick` runs a tiny version.

    python scripts/bench_train.py            # ~1 min more than the training itself
    python scripts/bench_train.py --quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from roofline import sgemm_gflops  # scripts/roofline.py

from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
from bnnctl.engines.train import Population, train_models


def flops_per_model_epoch(arch: ArchSpec, n: int) -> float:
    """Matmul FLOPs of one epoch over n points: forward, weight gradients, and input
    gradients of every layer but the first."""
    macs = [a * b for a, b in zip(arch.widths[:-1], arch.widths[1:], strict=False)]
    return 2.0 * n * (2 * sum(macs) + sum(macs[1:]))


def plain_loop(arch: ArchSpec, cfg: TrainConfig, ds, n_models: int) -> float:
    """Models/s of the ordinary way: one nn.Module and optimizer per model (after one
    untimed warm-up model, as both sides get)."""
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    t0 = time.perf_counter()
    for seed in range(-1, n_models):
        if seed == 0:
            t0 = time.perf_counter()
        torch.manual_seed(seed)
        layers = []
        for i, (a, b) in enumerate(zip(arch.widths[:-1], arch.widths[1:], strict=False)):
            layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < arch.n_layers - 1 else [])
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
        for _ in range(cfg.epochs):
            order = torch.randperm(len(x))
            for s in range(0, len(x), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return n_models / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--models", type=int, default=256, help="models for bnnctl's trainer")
    ap.add_argument("--plain-models", type=int, default=8, help="models for the plain loop")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    ds = load_dataset("digits")
    arch = ArchSpec((64, 128, 128, 10))
    cfg = TrainConfig(epochs=1 if args.quick else 50)
    n_models, n_plain = (4, 1) if args.quick else (args.models, args.plain_models)

    plain = plain_loop(arch, cfg, ds, n_plain)
    train_models(Population("warm-up", arch, cfg, ds), [0, 1])  # untimed warm-up
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/bench.zarr", create=True)
        t0 = time.perf_counter()
        res = train(
            store, ds, cfg, range(n_models), arch, block_size=args.block_size, jobs=args.jobs
        )
        ours = n_models / (time.perf_counter() - t0)
        acc = float(res.rows["test_acc"].median())
    peak = sgemm_gflops(512 if args.quick else 4096, 2 if args.quick else 10)
    model_gflop = flops_per_model_epoch(arch, len(ds.x_train)) * cfg.epochs / 1e9
    out = {
        "epochs": cfg.epochs,
        "plain_models_per_s": round(plain, 3),
        "bnnctl_models_per_s": round(ours, 3),
        "ratio": round(ours / plain, 2),
        "gflop_per_model": round(model_gflop, 3),
        "sgemm_gflops": round(peak, 1),
        "roofline_models_per_s": round(peak / model_gflop, 2),
        "roofline_fraction": round(ours * model_gflop / peak, 3),
        "median_test_acc": round(acc, 4),
        "block_size": args.block_size,
        "jobs": args.jobs,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
