"""Benchmark `bnnctl stats`: BMA + curve, 1,000 sampled pairwise-MI pairs, and a comparison
of two halves (agreement, TV, weight-space MMD²) on N default MLPs (mlp:64-128-128-10,
digits). The store is filled with N freshly initialised models (nn.Linear default init,
committed in shards of 64 as train does): evaluation cost does not depend on training.

Reports, measured in this run: total seconds (target < 30 s for N = 3072), the per-model
evaluation rate (read + forward on the stored test set), that rate against a
one-model-at-a-time torch.nn loop, and the forward pass's GFLOP/s against an sgemm
roofline.

    python scripts/bench_stats.py            # N = 3072
    python scripts/bench_stats.py --quick    # N = 16, a few seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from roofline import sgemm_gflops  # scripts/roofline.py

from bnnctl import ArchSpec, Store, load_dataset
from bnnctl.arch import modules as models
from bnnctl.stats.report import compute


def fill(path: Path, n: int, arch: ArchSpec) -> Store:
    st = Store.open(path, create=True)
    ds = load_dataset("digits")
    data = st.put_dataset(ds)
    for s in range(0, n, 64):
        seeds = range(s, min(n, s + 64))
        params = np.stack([arch.init(torch.Generator().manual_seed(k)).numpy() for k in seeds])
        rows = [
            {
                "model_id": f"bench.{k:06d}",
                "kind": "train",
                "method": "init",
                "population": "bench",
                "seed": k,
                "dataset": "digits",
                "task": "classification",
                "data": data,
                "data_sha256": ds.sha256,
                "config_sha256": "0" * 64,
            }
            for k in seeds
        ]
        st.commit_block(f"params/bench/b{s:06d}", params, "float32", arch, rows)
    return st


def loop_rate(st: Store, arch: ArchSpec, x: np.ndarray, n: int) -> float:
    """Models/s of reading and running one nn.Module at a time."""
    man = st.manifest().head(n)
    xt = torch.from_numpy(x)
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(n):
            net = models.load(arch, st.read_params(man.iloc[k : k + 1])[0])
            torch.softmax(net(xt), -1)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="16 models, 50 pairs: a smoke run for tests"
    )
    ap.add_argument("--models", type=int, default=3072)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    n = 16 if args.quick else args.models
    args.pairs = min(args.pairs, 50) if args.quick else args.pairs
    arch = ArchSpec((64, 128, 128, 10))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        st = fill(Path(tmp) / "bench.zarr", n, arch)
        fill_s = time.perf_counter() - t0
        st = Store.open(st.url)
        t0 = time.perf_counter()
        rep, _ = compute(
            st,
            ensemble=True,
            pairs=args.pairs,
            compare_exprs=(f"seed < {n // 2}", f"seed >= {n // 2}"),
        )
        total = time.perf_counter() - t0
        ev = rep["evaluation"]
        data = st.load_data(st.manifest()["data"].iloc[0])
        loop = loop_rate(st, arch, data.x_test, min(n, 64))
    flops = (
        2
        * n
        * ev["n_test"]
        * sum(a * b for a, b in zip(arch.widths, arch.widths[1:], strict=False))
    )
    peak = sgemm_gflops(2048, 5)
    out = {
        "models": n,
        "arch": arch.name,
        "n_test": ev["n_test"],
        "pairs": rep["ensemble"]["diversity"]["n_pairs"],
        "fill_s": fill_s,
        "stats_total_s": total,
        "eval_s": ev["seconds"],
        "eval_models_per_s": ev["models_per_s"],
        "loop_models_per_s": loop,
        "speedup_vs_loop": ev["models_per_s"] / loop,
        "eval_gflops": flops / ev["seconds"] / 1e9,
        "sgemm_gflops": peak,
        "roofline_fraction": flops / ev["seconds"] / 1e9 / peak,
        "mmd_n": [rep["compare"]["mmd"]["before"]["n_a"], rep["compare"]["mmd"]["before"]["n_b"]],
        "target_s": 30.0,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"stats on {n} x {arch.name}: {total:.2f} s total (target < 30 s for 3072); evaluation "
            f"{ev['models_per_s']:.0f} models/s "
            f"({out['speedup_vs_loop']:.1f}x the nn.Module loop's {loop:.0f}/s; "
            f"{out['eval_gflops']:.0f} GFLOP/s = {out['roofline_fraction']:.0%} of sgemm "
            f"{peak:.0f}); {out['pairs']} MI pairs; MMD on {out['mmd_n']} models",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
