"""What compression buys on trained weights, and what it costs on reads.

Trains a block of default digits MLPs (64-128-128-10, Adam, 50 epochs), writes the same
params with each codec in bnnctl's layout (one chunk per model, one shard per block),
and reports in one run: stored bytes relative to raw, time to read the whole array, and
time to read one random model, each relative to the uncompressed array.

    python scripts/bench_store.py            # 64 models, 50 epochs
    python scripts/bench_store.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from bnnctl import ArchSpec, TrainConfig, load_dataset
from bnnctl.engines.train import Population, train_models

CODECS = {
    "none": None,
    "zstd-3": ZstdCodec(level=3),
    "blosc-zstd-shuffle": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
    "blosc-lz4-bitshuffle": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
}


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name != "zarr.json")


def timed(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", type=int, default=64)
    args = ap.parse_args()
    m, epochs = (4, 1) if args.quick else (args.models, 50)
    pop = Population(
        "bench", ArchSpec((64, 128, 128, 10)), TrainConfig(epochs=epochs), load_dataset("digits")
    )
    params = train_models(pop, list(range(m)))[0].numpy()
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in CODECS.items():
            for dtype in ("float32", "float16"):
                path = Path(tmp) / f"{name}-{dtype}"
                arr = zarr.create_array(
                    str(path),
                    shape=params.shape,
                    dtype=dtype,
                    chunks=(1, params.shape[1]),
                    shards=params.shape,
                    compressors=codec,
                )
                arr[:] = params.astype(dtype)
                reader = zarr.open_array(str(path), mode="r")
                whole = timed(lambda r=reader: r[:], 5 if args.quick else 20)
                one = timed(lambda r=reader: r[int(rng.integers(m))], 20 if args.quick else 200)
                results[(name, dtype)] = (folder_bytes(path), whole, one)
    print(
        f"{m} trained models x {params.shape[1]} params; relative to uncompressed of the same dtype"
    )
    print(f"{'codec':>22} {'dtype':>8} {'size':>7} {'read all':>9} {'read one':>9} {'ms/one':>7}")
    for (name, dtype), (size, whole, one) in results.items():
        base = results[("none", dtype)]
        print(
            f"{name:>22} {dtype:>8} {size / base[0]:7.3f} {whole / base[1]:9.2f} "
            f"{one / base[2]:9.2f} {one * 1e3:7.2f}"
        )


if __name__ == "__main__":
    main()
