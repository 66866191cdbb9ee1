"""The GPU figures (issue goals: 3,072 default MLPs x 50 epochs in <= 20 s; 8,192 OptuNets
x 60 epochs on MNIST-size data in <= 10 min), measured on one ``--device`` in one run:

  1. train 3,072 default digits MLPs (mlp:64-128-128-10, Adam 1e-3, batch 128, 50
     epochs) in one block, into a fresh store, against a plain loop (one nn.Module +
     fused Adam at a time, on the same device) for ``--plain-models`` models;
  2. train 8,192 OptuNets on 60,000 synthetic 1x28x28 images (10,000 test; MNIST's
     size, no files needed) with OptuNet's recipe (SGD lr 0.04, weight decay 2e-4,
     batch 64) for ``--conv-epochs`` epochs, in blocks of ``--conv-block``; the 60-epoch
     time is extrapolated as wall x 60 / epochs (an upper bound: evaluation and commits
     are counted 60/epochs times);
  3. canonicalize the MLPs of (1), function check on (models/s end to end);
  4. SGHMC on digits, ``--chains`` chains of the default MLP (gradient evaluations/s).

Every figure is end to end through the library (store writes and evaluation included).
Prints one JSON object; ``--out FILE`` also writes it there. ``scripts/device_check.sh``
runs this on a GPU machine; ``--quick`` is a tiny CPU run for the test suite.

    python scripts/bench_device.py --device cuda --out figures.json
    python scripts/bench_device.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from bench_train import plain_loop, sync  # scripts/bench_train.py

from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
from bnnctl.arch import parse_arch
from bnnctl.device import resolve
from bnnctl.engines.canonicalize import canonicalize
from bnnctl.engines.sample import sample
from bnnctl.samplers import SamplerConfig
from bnnctl.testing.images import synthetic_images


def timed(dev: torch.device, fn):
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--mlps", type=int, default=3072)
    ap.add_argument("--epochs", type=int, default=50, help="MLP epochs")
    ap.add_argument("--plain-models", type=int, default=4)
    ap.add_argument("--optunets", type=int, default=8192)
    ap.add_argument("--conv-epochs", type=int, default=2)
    ap.add_argument("--conv-block", type=int, default=1024, help="OptuNets per block")
    ap.add_argument("--chains", type=int, default=1024)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    dev = resolve(a.device)
    widths = (64, 128, 128, 10)
    n_train, n_test = 60_000, 10_000
    if a.quick:
        a.mlps, a.epochs, a.plain_models, widths = 8, 1, 1, (64, 16, 10)
        a.optunets, a.conv_epochs, a.conv_block, n_train, n_test = 4, 1, 4, 256, 64
        a.chains = 4
    out: dict = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    digits = load_dataset("digits")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/device.zarr", create=True)

        # 1. MLPs in one block
        cfg = TrainConfig(epochs=a.epochs)
        plain = plain_loop(ArchSpec(widths), cfg, digits, a.plain_models, dev)
        res, wall = timed(
            dev,
            lambda: train(
                store, digits, cfg, range(a.mlps), ArchSpec(widths), "mlp",
                block_size=a.mlps, device=str(dev),
            ),
        )  # fmt: skip
        out["mlp"] = {
            "arch": ArchSpec(widths).name,
            "models": a.mlps,
            "epochs": a.epochs,
            "seconds": round(wall, 2),
            "models_per_s": round(a.mlps / wall, 1),
            "plain_models_per_s": round(plain, 3),
            "ratio_vs_plain": round(a.mlps / wall / plain, 1),
            "median_test_acc": round(float(res.rows["test_acc"].median()), 4),
            "goal_s_for_3072x50": 20,
        }

        # 2. OptuNets on MNIST-size synthetic images
        optunet = parse_arch("optunet")
        images = synthetic_images(optunet.input, n_train, n_test)
        conv_cfg = TrainConfig(
            optimizer="sgd", lr=0.04, weight_decay=2e-4, epochs=a.conv_epochs, batch_size=64
        )
        res, wall = timed(
            dev,
            lambda: train(
                store, images, conv_cfg, range(a.optunets), optunet, "optunet",
                block_size=a.conv_block, device=str(dev),
            ),
        )  # fmt: skip
        out["optunet"] = {
            "models": a.optunets,
            "n_train": n_train,
            "epochs": a.conv_epochs,
            "block_size": a.conv_block,
            "seconds": round(wall, 2),
            "model_epochs_per_s": round(a.optunets * a.conv_epochs / wall, 1),
            "extrapolated_60_epochs_s": round(wall * 60 / a.conv_epochs, 1),
            "goal_s_for_8192x60": 600,
        }

        # 3. canonicalize the MLPs, function check on
        can, wall = timed(dev, lambda: canonicalize(store, "population == 'mlp'", device=str(dev)))
        out["canonicalize"] = {
            "models": len(can.rows),
            "seconds": round(wall, 2),
            "models_per_s": round(len(can.rows) / wall, 1),
        }

        # 4. SGHMC chains of the default MLP
        scfg = SamplerConfig("sghmc", step_size=1e-4, burn_in=20, batch_size=128)
        samples = 5 if a.quick else 20
        _, wall = timed(
            dev,
            lambda: sample(
                store, scfg, samples, a.chains, digits, ArchSpec(widths), population="sghmc",
                device=str(dev),
            ),
        )  # fmt: skip
        evals = a.chains * (scfg.burn_in + samples * scfg.thin)
        out["sghmc"] = {
            "chains": a.chains,
            "grad_evals": evals,
            "seconds": round(wall, 2),
            "grad_evals_per_s": round(evals / wall, 1),
        }
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
