"""Each epoch's per-model data orders, as the trainers draw them: one ``randperm(N)`` per
model from its own generator. Measured in one run, interleaved rounds:

  (a) one after another, ``torch.stack`` of ``torch.randperm`` (torch's own threads);
  (b) bnnctl's ``_start_epoch``: the models in blocks, one thread each
      (``bnnctl.threads.in_blocks``); the same permutations, checked.

On a GPU run these CPU draws come before every epoch, so they bound the run from below.

    python scripts/bench_orders.py                  # 1,024 models, N = 60,000 (MNIST)
    python scripts/bench_orders.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bnnctl import TrainConfig
from bnnctl.engines.train import _start_epoch


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--models", type=int, default=1024)
    ap.add_argument("--n", type=int, default=60000, help="training points (N)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    m, n, rounds = (16, 1000, 1) if args.quick else (args.models, args.n, args.rounds)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cpu = torch.device("cpu")

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(k) for k in range(m)]

    def plain() -> torch.Tensor:
        return torch.stack([torch.randperm(n, generator=g) for g in gens()])

    def ours() -> torch.Tensor:
        return _start_epoch(opt, TrainConfig(), 0, gens(), n, cpu)

    if not torch.equal(plain(), ours()):
        raise SystemExit("the blocked draws differ from one after another")
    times: dict[str, list[float]] = {"plain": [], "bnnctl": []}
    for _ in range(rounds):
        for name, f in (("plain", plain), ("bnnctl", ours)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    out = {
        "models": m,
        "n": n,
        "threads": torch.get_num_threads(),
        "plain_s": round(statistics.median(times["plain"]), 4),
        "bnnctl_s": round(statistics.median(times["bnnctl"]), 4),
        "ratio": round(statistics.median(times["plain"]) / statistics.median(times["bnnctl"]), 2),
        "ratios_per_round": [
            round(a / b, 2) for a, b in zip(times["plain"], times["bnnctl"], strict=True)
        ],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
