"""`bnnctl import` of the paper's release format, and where its time goes.

Packs N OptuNets (random float16 weights of ``ConvSpec.parse("optunet").layout``'s
names and shapes, one safetensors file per model, 1,024 per ``.tgz`` as "A
Symmetry-Aware Exploration of BNN Posteriors" releases them) into a temporary folder,
writes a synthetic 28x28, 10-class IDX dataset (MNIST's format; ``--n-train`` and
``--n-test`` images), then times ``bnnctl import FOLDER --arch optunet --data IDX``
(the command, in process) into a fresh store: imports per second end to end, and the
seconds spent reading the archives (gunzip + tar, members into memory), decoding and
checking the safetensors, evaluating the models and committing the blocks (timed by
wrapping the importer's functions that do each, so no profiler slows the run).

    python scripts/bench_import.py                 # 8,192 models in 8 archives
    python scripts/bench_import.py --quick --json  # 64 models in 2 archives, for the tests
"""

from __future__ import annotations

import argparse
import functools
import json
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnnctl.testing.images import idx_folder


def pack(folder: Path, n: int, per_archive: int) -> int:
    """``n`` random float16 OptuNets as ``mnist-optunet-<a>-<b>.tgz`` archives of
    ``per_archive`` safetensors files each (in an ``mnist-optunet/`` folder, as the
    release); returns the archives' total size in bytes."""
    import io

    from safetensors.numpy import save

    from bnnctl.arch import ConvSpec

    layout = ConvSpec.parse("optunet").layout
    rng = np.random.default_rng(1)
    folder.mkdir()
    size = 0
    for start in range(0, n, per_archive):
        stop = min(start + per_archive, n)
        path = folder / f"mnist-optunet-{start}-{stop - 1}.tgz"
        with tarfile.open(path, "w:gz") as tar:
            for k in range(start, stop):
                sd = {
                    t.name: (rng.standard_normal(t.shape) * 0.3).astype(np.float16) for t in layout
                }
                data = save(sd)
                info = tarfile.TarInfo(f"mnist-optunet/{k}.safetensors")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        size += path.stat().st_size
    return size


def timed(module: Any, name: str, totals: dict[str, float], label: str) -> None:
    """Wrap ``module.name`` so that its wall time adds to ``totals[label]``."""
    fn: Callable = getattr(module, name)

    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            totals[label] += time.perf_counter() - t0

    setattr(module, name, run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8192)
    ap.add_argument("--per-archive", type=int, default=1024)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.models, a.per_archive, a.n_train, a.n_test = 64, 32, 100, 100

    import torch
    from typer.testing import CliRunner

    from bnnctl import Store
    from bnnctl.cli import app
    from bnnctl.engines import importer
    from bnnctl.store import store as store_mod

    torch.set_num_threads(a.threads)
    stages = {
        "read archives (gunzip + tar)": 0.0,
        "decode + check safetensors": 0.0,
        "evaluate (metrics)": 0.0,
        "commit blocks": 0.0,
    }
    timed(importer, "archive_checkpoints", stages, "read archives (gunzip + tar)")
    timed(importer, "_load_all", stages, "decode + check safetensors")
    timed(importer, "metrics_of", stages, "evaluate (metrics)")
    timed(store_mod.Store, "commit_block", stages, "commit blocks")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        size = pack(root / "release", a.models, a.per_archive)
        pack_s = time.perf_counter() - t0
        data = idx_folder(root / "mnist", a.n_train, a.n_test)
        store = root / "s.zarr"
        args = ["import", str(root / "release"), "--arch", "optunet", "--data", str(data)]
        args += ["--store", str(store), "--quiet"]
        t0 = time.perf_counter()
        r = CliRunner().invoke(app, args)
        wall = time.perf_counter() - t0
        if r.exit_code != 0:
            raise SystemExit(f"bnnctl import failed ({r.exit_code}): {r.output}")
        rows = Store.open(store).manifest()
    assert len(rows) == a.models and (rows["dtype"] == "float16").all()
    out = {
        "models": a.models,
        "archives": -(-a.models // a.per_archive),
        "archive_mb": size / 1e6,
        "n_train": a.n_train,
        "n_test": a.n_test,
        "threads": torch.get_num_threads(),
        "pack_s": pack_s,
        "seconds": wall,
        "imports_per_s": a.models / wall,
        "stages_s": stages,
        "command": "bnnctl import RELEASE_FOLDER --arch optunet --data IDX_FOLDER --store S",
    }
    if a.json:
        print(json.dumps(out))
        return
    print(
        f"bnnctl import, {a.models} float16 OptuNets in {out['archives']} archives "
        f"({out['archive_mb']:.1f} MB), evaluated on {a.n_train}+{a.n_test} synthetic 28x28 "
        f"images, {out['threads']} thread(s): {wall:.1f} s = {out['imports_per_s']:.0f} "
        "imports/s end to end"
    )
    for label, s in stages.items():
        print(f"  {label:30s} {s:7.2f} s  ({100 * s / wall:4.1f} %)")
    other = wall - sum(stages.values())
    print(f"  {'other (data, manifest, ...)':30s} {other:7.2f} s")


if __name__ == "__main__":
    main()
