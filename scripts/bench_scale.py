"""How the store scales with its number of rows: per-block commit cost, `bnnctl ls` end
to end, and manifest bytes per row after compaction.

Rows are committed as blocks of synthetic tiny models (`mlp:2-1`, random weights) with
`Store.commit_block`, exactly as the engines commit them, without the training: what is
measured is the store, not the models (`--batch N`: N blocks per `Store.commit_blocks`
call, as fast producers commit). Ratios are taken within one run:

- ms per block commit over the first blocks vs the last blocks (flat = no cost that
  grows with the store; with `--batch`, a batch's time divided by its blocks);
- `bnnctl ls --where` (a subprocess, end to end) on the small store vs the large one;
- manifest bytes per row after `compact`.

    python scripts/bench_scale.py                # 250,000 rows in blocks of 4,096
    python scripts/bench_scale.py --rows 1000000 # the issue's target size
    python scripts/bench_scale.py --quick        # a few blocks, for the test suite
    python scripts/bench_scale.py --rows 25600 --block 32 --small 12800 --batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def block_rows(pop: str, start: int, n: int) -> list[dict]:
    return [
        {
            "model_id": f"{pop}.{start + i:07d}",
            "kind": "train",
            "method": "adam",
            "population": pop,
            "seed": start + i,
            "dataset": "moons",
            "task": "classification",
            "data_sha256": "0" * 64,
            "config_sha256": "1" * 64,
            "test_acc": float(np.random.default_rng(start + i).random()),
        }
        for i in range(n)
    ]


def ls_seconds(store: str, reps: int) -> float:
    cmd = [sys.executable, "-m", "bnnctl", "ls", "--store", store, "--where", "seed < 5"]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--format", "csv"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--small", type=int, default=10_000, help="rows of the small store")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="blocks per commit")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.block, a.small, a.reps = 2_048, 256, 512, 1
    if a.rows < 2 * a.block * a.batch:
        ap.error("--rows must be at least two commits of --batch blocks")

    from bnnctl.arch import ArchSpec
    from bnnctl.store import Block, Store

    arch = ArchSpec((2, 1))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "scale.zarr")
        st = Store.open(path, create=True)
        ms, small_ls, done = [], None, 0
        while done < a.rows:
            batch = []
            for _ in range(a.batch):
                n = min(a.block, a.rows - done)
                if n <= 0:
                    break
                params = rng.standard_normal((n, arch.n_params)).astype(np.float32)
                batch.append(Block(f"params/p/b{done:07d}", params, "float32", arch,
                                   block_rows("p", done, n)))  # fmt: skip
                done += n
            t0 = time.perf_counter()
            if a.batch == 1:
                st.commit_block(*batch[0])
            else:
                st.commit_blocks(batch)
            ms.append(1e3 * (time.perf_counter() - t0) / len(batch))
            if small_ls is None and done >= a.small:
                st.compact()
                small_ls = ls_seconds(path, a.reps)
        ms = ms[1:]  # the first commit pays one-off imports and setup
        k = max(1, len(ms) // 10)
        first, last = statistics.median(ms[:k]), statistics.median(ms[-k:])
        compacted = st.compact()
        manifest = Path(path) / "manifest"
        live = {Path(u).name for u in st.table().file_uris()}
        data_bytes = sum(f.stat().st_size for f in manifest.glob("*.parquet") if f.name in live)
        large_ls = ls_seconds(path, a.reps)
    out = {
        "rows": a.rows,
        "block": a.block,
        "blocks": -(-a.rows // a.block),
        "blocks_per_commit": a.batch,
        "ms_per_block_first": round(first, 1),
        "ms_per_block_last": round(last, 1),
        "per_block_growth": round(last / first, 2),
        "ls_s_small": round(small_ls or 0.0, 3),
        "small_rows": a.small,
        "ls_s_large": round(large_ls, 3),
        "ls_growth": round(large_ls / (small_ls or large_ls), 2),
        "manifest_bytes_per_row": round(data_bytes / a.rows, 1),
        "files_after_compact": compacted["files_after"],
    }
    if a.json:
        print(json.dumps(out))
        return
    print(f"{a.rows} rows in {out['blocks']} blocks of {a.block}, {a.batch} per commit")
    print(f"commit ms/block: first tenth {first:.1f}, last tenth {last:.1f} ({last / first:.2f}x)")
    print(f"ls --where: {out['ls_s_small']} s at {a.small} rows, {out['ls_s_large']} s at "
          f"{a.rows} rows ({out['ls_growth']}x)")  # fmt: skip
    print(f"manifest after compaction: {out['manifest_bytes_per_row']} bytes/row")


if __name__ == "__main__":
    main()
