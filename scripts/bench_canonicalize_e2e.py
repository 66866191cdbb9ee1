"""`bnnctl canonicalize` end to end, and where its time goes.

Trains N default digits MLPs (mlp:64-128-128-10, 1 epoch: the weights' values do not
change the work) into a fresh store, then times ``canonicalize(store)``, the library call
behind the command, with the function check on: models/s end to end, and the seconds
spent in each stage (reading params, the canonical form, the function check's forward
pass, evaluation, commits, the report's mode count and near-ties), from cProfile's
cumulative times of the functions that do them, summed over the engine's threads. The
plain-loop and kernel comparisons are in bench_canonicalize.py.

    python scripts/bench_canonicalize_e2e.py              # 3072 models (~1.5 min)
    python scripts/bench_canonicalize_e2e.py --quick      # 64 small models, for the tests
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import threading
import time

#: stage -> (module path suffix, function name) whose cumulative time is the stage's.
STAGES = {
    "blocks (read/transform/commit)": ("bnnctl/engines/canonicalize.py", "_run_kept"),
    "read + finite check": ("bnnctl/engines/canonicalize.py", "read_finite"),
    "read params (with sha256)": ("bnnctl/store/store.py", "read_params"),
    "transform + check (blocks)": ("bnnctl/engines/canonicalize.py", "transform_block"),
    "canonical form (all calls)": ("bnnctl/symmetry/canonical.py", "canonicalize"),
    "function check (forward)": ("bnnctl/evaluate/__init__.py", "outputs"),
    "near-ties for the report": ("bnnctl/engines/canonicalize.py", "report_near_ties"),
    "commit blocks": ("bnnctl/store/store.py", "commit_block"),
    "report: mode count": ("bnnctl/symmetry/modes.py", "count_modes"),
    "report: whole": ("bnnctl/engines/canonicalize.py", "report"),
}


def _profile_thread(profs: list[cProfile.Profile]) -> None:
    """Run on a new thread's first event: profile the thread with a profiler of its own."""
    sys.setprofile(None)
    prof = cProfile.Profile()
    profs.append(prof)
    prof.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=3072)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    widths = (64, 128, 128, 10)
    if a.quick:
        a.models, widths = 64, (64, 16, 10)

    import torch

    from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
    from bnnctl.engines.canonicalize import canonicalize

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/e2e.zarr", create=True)
        train(
            store,
            load_dataset("digits"),
            TrainConfig(epochs=1),
            range(a.models),
            ArchSpec(widths),
            block_size=512,
        )
        # first without the profiler (whose per-call hooks slow the threads down), on a copy
        shutil.copytree(store.root, f"{tmp}/plain.zarr")
        t0, c0 = time.perf_counter(), time.process_time()
        plain = canonicalize(Store.open(f"{tmp}/plain.zarr"))
        plain_wall, plain_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert len(plain.rows) == a.models
        profs = [cProfile.Profile()]
        threading.setprofile(lambda *_: _profile_thread(profs))  # the engine's threads too
        t0 = time.perf_counter()
        profs[0].enable()
        res = canonicalize(Store.open(store.url))
        profs[0].disable()
        wall = time.perf_counter() - t0
        threading.setprofile(None)  # type: ignore[arg-type]
    assert len(res.rows) == a.models
    merged = pstats.Stats(profs[0])
    for p in profs[1:]:  # the threads have ended: their profiles are complete
        p.create_stats()
        merged.add(p)
    stats = merged.stats  # type: ignore[attr-defined]
    stages = {}
    for label, (path, fn) in STAGES.items():
        cum = [v[3] for (file, _, name), v in stats.items() if file.endswith(path) and name == fn]
        stages[label] = max(cum) if cum else 0.0
    out = {
        "models": a.models,
        "arch": ArchSpec(widths).name,
        "threads": torch.get_num_threads(),
        "seconds": wall,
        "models_per_s": a.models / wall,
        "seconds_unprofiled": plain_wall,
        "models_per_s_unprofiled": a.models / plain_wall,
        "cpu_seconds_unprofiled": plain_cpu,
        "stages_s": stages,
    }
    if a.json:
        print(json.dumps(out))
        return
    print(
        f"canonicalize, {a.models} x {out['arch']}, check on, {out['threads']} threads: "
        f"{plain_wall:.1f} s = {a.models / plain_wall:.0f} models/s end to end "
        f"({plain_cpu:.1f} CPU-seconds); under cProfile {wall:.1f} s = "
        f"{out['models_per_s']:.0f} models/s"
    )
    print(
        "  stage times are summed over the engine's threads (its reads and commits run on "
        "an I/O thread, blocks on workers, side by side): they can add up to more than the wall"
    )
    for label, s in stages.items():
        print(f"  {label:28s} {s:7.2f} s  ({100 * s / wall:4.1f} % of wall)")


if __name__ == "__main__":
    main()
