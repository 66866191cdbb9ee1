"""How long the CLI takes to start, next to the imports it cannot avoid.

Times fresh subprocesses (median of N runs, interleaved) of:

    baseline   python -c "import pandas, pyarrow, zarr"   (what reading a manifest needs)
    version    python -m bnnctl --version
    ls         python -m bnnctl ls --where "seed < 5" --store STORE --format csv
    torch      python -c "import torch"                    (what a torch import costs)

and reports each as a multiple of the baseline. Goal: ls within 1.5x of the baseline.
STORE holds --rows tiny moons models (trained first, in a temporary folder unless --store).

    python scripts/bench_cli.py             # 7 runs each, 3,072 rows
    python scripts/bench_cli.py --quick     # 2 runs each, 64 rows
    python scripts/bench_cli.py --json
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

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5


def cases(store: Path) -> dict[str, list[str]]:
    bnnctl = [sys.executable, "-m", "bnnctl"]
    return {
        "baseline": [sys.executable, "-c", "import pandas, pyarrow, zarr"],
        "version": [*bnnctl, "--version"],
        "ls": [*bnnctl, "ls", "--where", "seed < 5", "--store", str(store), "--format", "csv"],
        "torch": [sys.executable, "-c", "import torch"],
    }


def run(cmd: list[str]) -> float:
    """Wall seconds of one run of ``cmd``; exits if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return seconds


def build(store: Path, rows: int) -> None:
    print(f"training {rows} tiny models into {store} ...", file=sys.stderr)
    model = ["--dataset", "moons", "--arch", "mlp:2-1", "--epochs", "1", "--block-size", "512"]
    train = [sys.executable, "-m", "bnnctl", "train", "--seeds", str(rows), *model]
    run([*train, "--store", str(store), "--quiet"])


def measure(store: Path, reps: int, warmup: bool) -> dict[str, float]:
    """Median seconds per case; runs are interleaved so drift hits every case alike."""
    todo = cases(store)
    if warmup:
        for cmd in todo.values():
            run(cmd)
    times: dict[str, list[float]] = {name: [] for name in todo}
    for _ in range(reps):
        for name, cmd in todo.items():
            times[name].append(run(cmd))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 runs each on 64 rows, no warm-up")
    ap.add_argument("--reps", type=int, help="runs per case (default 7, --quick 2)")
    ap.add_argument("--rows", type=int, help="models in the store (default 3072, --quick 64)")
    ap.add_argument("--store", type=Path, help="store to use; built there if it does not exist")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    reps = args.reps or (2 if args.quick else 7)
    rows = args.rows or (64 if args.quick else 3072)

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "bench.zarr"
        reused = store.exists()
        if not reused:
            build(store, rows)
        med = measure(store, reps, warmup=not args.quick)

    ratio = {name: s / med["baseline"] for name, s in med.items()}
    out = {
        "reps": reps,
        "rows": None if reused else rows,
        **{f"{name}_s": round(s, 4) for name, s in med.items()},
        **{f"{name}_ratio": round(r, 3) for name, r in ratio.items() if name != "baseline"},
        "ls_goal_ratio": GOAL,
        "ls_goal_met": ratio["ls"] <= GOAL,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    size = "an existing store" if reused else f"{rows} rows"
    print(f"bnnctl startup, median of {reps} runs, {size}")
    print(f"{'case':<10}{'median s':>10}{'x baseline':>12}")
    for name, s in med.items():
        print(f"{name:<10}{s:>10.3f}{ratio[name]:>12.2f}")
    verdict = "met" if out["ls_goal_met"] else "NOT met"
    print(f"goal: ls within {GOAL}x of the baseline: {ratio['ls']:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
