"""Training throughput, measured in one run on the default config (digits, MLP
64-128-128-10, Adam 1e-3, batch 128, 50 epochs):

  (a) a plain loop: one nn.Module at a time with torch.optim.Adam(fused=True);
  (b) bnnctl's trainer: `bnnctl.engines.train` into a fresh store (blocks of stacked models,
      evaluation and crash-safe writes included);
  (c) this machine's sgemm rate (torch.mm on large square matrices).

Prints models/s for (a) and (b), the ratio b/a, and (b)'s fraction of the sgemm
roofline with matmul FLOPs counted per model-epoch. `--quick` runs a tiny version.

`--arch optunet` (or any conv preset / `cnn:` string) measures conv nets instead, on
synthetic 1x28x28 images (2048 train, 512 test, 10 classes; no MNIST files needed) with
OptuNet's recipe (SGD lr 0.04, momentum 0.9, weight decay 2e-4, batch 64, x0.5 at
milestones), for `--epochs` epochs (default 3): (a) is `ConvSpec.module()` +
torch.optim.SGD + MultiStepLR one model at a time, (b) bnnctl's trainer into a store.

    python scripts/bench_train.py            # ~1 min more than the training itself
    python scripts/bench_train.py --quick
    python scripts/bench_train.py --arch optunet --block-size 64

Measured (shared 2-core CPU, torch 2.13, 2 threads, `--arch optunet`: 256 models in
blocks of 64 against 8 plain models, 3 epochs of 2048 images, 3 interleaved rounds):
2.30x on an idle machine (15.6 against 6.78 models/s), 1.4-2.4x while other jobs ran;
the 5x goal is not met. `python scripts/bench_conv_layers.py --trainer 5 --profile 20`
compares the layers' alternatives and profiles a step: the first conv (forward and
weight gradient, oneDNN) is the largest part, then the input's layout copy, pooling and
relu backward. README's Performance section has the details.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from roofline import sgemm_gflops  # scripts/roofline.py

from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
from bnnctl.arch import ConvSpec, modules
from bnnctl.engines.train import Population, train_models
from bnnctl.testing.images import synthetic_images


def flops_per_model_epoch(arch: ArchSpec, n: int) -> float:
    """Matmul FLOPs of one epoch over n points: forward, weight gradients, and input
    gradients of every layer but the first."""
    macs = [a * b for a, b in zip(arch.widths[:-1], arch.widths[1:], strict=False)]
    return 2.0 * n * (2 * sum(macs) + sum(macs[1:]))


def emit(out: dict, as_json: bool) -> None:
    """Print the figures as one JSON object or as aligned lines."""
    if as_json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:>22}: {v}")


def plain_loop(
    arch: ArchSpec | ConvSpec,
    cfg: TrainConfig,
    ds,
    n_models: int,
    device: torch.device = torch.device("cpu"),
) -> float:
    """Models/s of the ordinary way: one nn.Module and optimizer per model (after one
    untimed warm-up model, as both sides get): an MLP with fused Adam, a conv net
    (``ConvSpec.module()``) with SGD and MultiStepLR, as each population is trained;
    on ``device`` (timed to the GPU's end on a GPU)."""
    x, y = torch.from_numpy(ds.x_train).to(device), torch.from_numpy(ds.y_train).to(device)
    if isinstance(arch, ConvSpec):
        x = x.view(-1, *arch.input)
    t0 = time.perf_counter()
    for seed in range(-1, n_models):
        if seed == 0:
            sync(device)
            t0 = time.perf_counter()
        torch.manual_seed(seed)
        sched = None
        if isinstance(arch, ConvSpec):
            net = arch.module()
            opt: torch.optim.Optimizer = torch.optim.SGD(
                net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, list(cfg.lr_milestones), cfg.lr_gamma or 0.1
            )
        else:
            net = modules.build(arch)
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
        net.to(device)
        for _ in range(cfg.epochs):
            order = torch.randperm(len(x), device=device)
            for s in range(0, len(x), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
    sync(device)
    return n_models / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_main(args) -> None:
    arch = ConvSpec.parse(args.arch)
    epochs = 1 if args.quick else args.epochs
    ds = synthetic_images(arch.input, *((256, 64) if args.quick else (2048, 512)))
    cfg = (
        TrainConfig(
            optimizer="sgd",
            lr=0.04,
            weight_decay=2e-4,
            epochs=epochs,
            batch_size=64,
            schedule="step",
            lr_milestones=tuple(e for e in (1, 2) if e < epochs),
            lr_gamma=0.5,
        )
        if epochs > 1
        else TrainConfig(optimizer="sgd", lr=0.04, weight_decay=2e-4, epochs=1, batch_size=64)
    )
    n_models, n_plain = (4, 1) if args.quick else (args.models, args.plain_models)
    block = min(args.block_size or 64, n_models)
    train_models(Population("warm-up", arch, cfg, ds), [0, 1])  # untimed warm-up
    rounds = []
    for _ in range(1 if args.quick else args.rounds):  # interleaved: the machine is shared
        plain = plain_loop(arch, cfg, ds, n_plain)
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(f"{tmp}/bench.zarr", create=True)
            t0 = time.perf_counter()
            res = train(store, ds, cfg, range(n_models), arch, block_size=block, jobs=args.jobs)
            ours = n_models / (time.perf_counter() - t0)
        rounds.append((plain, ours))
    plain = float(np.median([r[0] for r in rounds]))
    ours = float(np.median([r[1] for r in rounds]))
    out = {
        "arch": arch.name,
        "n_params": arch.n_params,
        "n_train": len(ds.x_train),
        "epochs": cfg.epochs,
        "plain_models_per_s": round(plain, 3),
        "bnnctl_models_per_s": round(ours, 3),
        "ratio": round(ours / plain, 2),
        "ratios_per_round": [round(o / p, 2) for p, o in rounds],
        "median_test_acc": round(float(res.rows["test_acc"].median()), 4),
        "block_size": block,
        "models": n_models,
        "plain_models": n_plain,
        "jobs": args.jobs,
        "threads": torch.get_num_threads(),
    }
    emit(out, args.json)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--models", type=int, default=256, help="models for bnnctl's trainer")
    ap.add_argument("--plain-models", type=int, default=8, help="models for the plain loop")
    ap.add_argument("--block-size", type=int, default=None, help="default 32 (MLP), 64 (conv)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--arch", default=None, help="a conv preset or cnn: string (default: MLP)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (conv nets only)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (conv nets only)")
    args = ap.parse_args()
    if args.arch is not None:
        conv_main(args)
        return
    args.block_size = args.block_size or 32
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
    emit(out, args.json)


if __name__ == "__main__":
    main()
