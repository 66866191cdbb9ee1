"""`--scheduler` overhead: wall time of `train` in-process against Dask workers, measured
in one run, and whether the workers or the client should commit the blocks.

Runs, on the same request (default: 64 models of mlp:64-8-10, 1 epoch, blocks of 8):

- in-process, torch on its default threads, and on 1 thread (what each Dask worker uses);
- ``scheduler="local:2"`` end to end: cluster start, workers importing torch, the blocks,
  cluster close (what one ``bnnctl train --scheduler local:2`` pays);
- the same blocks on an already started LocalCluster of 2 workers (``tcp://``), workers
  committing their own blocks (bnnctl's design);
- the same blocks on that cluster, workers training only and this process committing
  each block as it arrives (the alternative design).

    python scripts/bench_dask.py                  # 64 models, blocks of 8, 1 epoch
    python scripts/bench_dask.py --epochs 20      # more work per block
    python scripts/bench_dask.py --quick --json   # 8 models, one warm cluster, for the tests
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _warm() -> None:
    import bnnctl.engines.train  # noqa: F401  (torch, zarr, deltalake)


def _train_only(seeds: list[int], pop: Any, data_path: str | None) -> tuple:
    """A block trained on a worker, not committed: what ``Store.commit_block`` takes."""
    from bnnctl.engines.train import trained_block

    return tuple(trained_block(pop, seeds, data_path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--arch", default="64-8-10")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 models, no cold cluster start")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    a = ap.parse_args()
    if a.quick:
        a.models, a.block_size, a.reps = 8, 4, 1
    say = (lambda *_, **__: None) if a.json else print

    import torch
    from distributed import Client, LocalCluster

    from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
    from bnnctl.engines.train import make_population
    from bnnctl.scheduler import connect

    ds = load_dataset("digits")
    arch = ArchSpec(tuple(int(w) for w in a.arch.split("-")))
    cfg = TrainConfig(epochs=a.epochs)
    seeds = range(a.models)
    out: dict[str, Any] = {"models": a.models, "block_size": a.block_size, "epochs": a.epochs}
    out["load_average_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:

        def run(name: str, **kw: Any) -> None:
            times = []
            for r in range(a.reps):
                t0 = time.perf_counter()
                path = Path(tmp) / f"{name}-{r}.zarr"
                train(path, ds, cfg, seeds, arch, block_size=a.block_size, **kw)
                times.append(round(time.perf_counter() - t0, 2))
            out[name] = times
            say(f"{name}: {times} s", flush=True)

        train(Path(tmp) / "warm-up.zarr", ds, cfg, range(2), arch)  # lazy imports, first ops
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        run("in_process_1_thread")
        torch.set_num_threads(threads)
        run(f"in_process_{threads}_threads")
        if not a.quick:  # a cluster start of its own: seconds to tens of seconds
            run("local_2_cold", scheduler="local:2")
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                dashboard_address=":0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.ERROR,
            ) as lc,
            Client(lc, set_as_default=False) as client,
        ):
            address = lc.scheduler_address
            client.run(_warm)
            train(
                Path(tmp) / "warm-up-2.zarr",
                ds,
                cfg,
                range(4),
                arch,
                block_size=2,
                scheduler=address,
            )
            run("warm_workers_commit", scheduler=address)
            pop = make_population(ds, cfg, arch)
            blocks = [list(seeds[i : i + a.block_size]) for i in range(0, a.models, a.block_size)]
            out["warm_client_commits"] = []
            for r in range(a.reps):
                t0 = time.perf_counter()
                store = Store.open(Path(tmp) / f"client-{r}.zarr", create=True)
                data_path = store.put_dataset(ds)
                with connect(address) as cluster:
                    cluster.map(
                        _train_only,
                        [(b,) for b in blocks],
                        (pop, data_path),
                        lambda i, args: store.commit_block(*args),  # noqa: B023
                    )
                out["warm_client_commits"].append(round(time.perf_counter() - t0, 2))
                assert len(store.manifest()) == a.models
            say(f"warm_client_commits: {out['warm_client_commits']} s", flush=True)
    out["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
