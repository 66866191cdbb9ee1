"""`bnnctl verify` throughput against the machine's limit: MB/s of params verified end to
end (manifest read, JSON Schema checks, every row re-read and re-hashed) and MB/s of
plain sha256 over the same bytes in memory, measured in one run.

    python scripts/bench_verify.py            # 16 blocks of 64 default MLPs (107 MB)
    python scripts/bench_verify.py --quick    # 2 blocks, for the test suite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import block_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.blocks, a.reps = 2, 1

    from bnnctl.arch import ArchSpec
    from bnnctl.store import Store

    arch = ArchSpec((64, 128, 128, 10))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "v.zarr")
        st = Store.open(path, create=True)
        blocks = []
        for b in range(a.blocks):
            p = rng.standard_normal((64, arch.n_params)).astype(np.float32)
            st.commit_block(f"params/p/b{b}", p, "float32", arch, block_rows("p", 64 * b, 64))
            blocks.append(p)
        mb = sum(p.nbytes for p in blocks) / 1e6
        times, limit = [], []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            problems = Store.open(path).verify()
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for p in blocks:
                for row in p:
                    hashlib.sha256(row.tobytes()).hexdigest()
            limit.append(time.perf_counter() - t0)
    out = {
        "mb": round(mb, 1),
        "problems": len(problems),
        "verify_mb_per_s": round(mb / statistics.median(times), 1),
        "sha256_mb_per_s": round(mb / statistics.median(limit), 1),
    }
    out["fraction_of_sha256"] = round(out["verify_mb_per_s"] / out["sha256_mb_per_s"], 3)
    if a.json:
        print(json.dumps(out))
        return
    print(
        f"verify: {out['verify_mb_per_s']} MB/s of params ({mb:.0f} MB, {len(problems)} problems)"
    )
    print(f"plain sha256 of the same rows in memory: {out['sha256_mb_per_s']} MB/s")
    print(f"verify runs at {out['fraction_of_sha256']:.0%} of the hashing limit")


if __name__ == "__main__":
    main()
