"""`bnnctl canonicalize` end to end, and where its time goes.

Trains N default digits MLPs (mlp:64-128-128-10, 1 epoch: the weights' values do not
change the work) into a fresh store, then times ``canonicalize(store)``, the library call
behind the command, with the function check on: models/s end to end, and the seconds
spent in each stage (reading params, the canonical form, the function check's forward
pass, evaluation, commits, the report's mode count and near-ties), from cProfile's
cumulative times of the functions that do them. The plain-loop and kernel comparisons
are in bench_canonicalize.py.

    python scripts/bench_canonicalize_e2e.py              # 3072 models (~1 min)
    python scripts/bench_canonicalize_e2e.py --quick      # 64 small models, for the tests
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time

#: stage -> (module path suffix, function name) whose cumulative time is the stage's.
STAGES = {
    "pre-flight finite check": ("bnnctl/engines/canonicalize.py", "check_finite"),
    "read params (with sha256)": ("bnnctl/store/store.py", "read_params"),
    "transform + check (blocks)": ("bnnctl/engines/canonicalize.py", "transform_block"),
    "canonical form (all calls)": ("bnnctl/symmetry/canonical.py", "canonicalize"),
    "function check (forward)": ("bnnctl/evaluate/__init__.py", "outputs"),
    "commit blocks": ("bnnctl/store/store.py", "commit_block"),
    "report: mode count": ("bnnctl/symmetry/modes.py", "count_modes"),
    "report: whole": ("bnnctl/engines/canonicalize.py", "report"),
}


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
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        res = canonicalize(Store.open(store.url))
        prof.disable()
        wall = time.perf_counter() - t0
    assert len(res.rows) == a.models
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
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
        "stages_s": stages,
    }
    if a.json:
        print(json.dumps(out))
        return
    print(
        f"canonicalize, {a.models} x {out['arch']}, check on, {out['threads']} threads: "
        f"{wall:.1f} s = {out['models_per_s']:.0f} models/s end to end (under cProfile)"
    )
    for label, s in stages.items():
        print(f"  {label:28s} {s:7.2f} s  ({100 * s / wall:4.1f} %)")


if __name__ == "__main__":
    main()
