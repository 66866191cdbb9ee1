"""``--scheduler``: blocks on Dask workers give the in-process rows bit for bit, a killed
worker's block is re-run with nothing doubled, and bad values or a missing ``distributed``
end as one line.

One LocalCluster of 2 worker processes serves the module, joined by its ``tcp://``
address: starting a cluster and importing torch in its workers is most of the cost, so
``--scheduler local:2`` itself (the same blocks, on a cluster it starts) is exercised by
``verify``, whose workers need no torch.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.cli import app
from bnnctl.engines.canonicalize import canonicalize
from bnnctl.engines.sample import chain_blocks, make_plan, run_chains, run_plan
from bnnctl.errors import EnvironmentFault, MissingDependencyError, UsageError
from bnnctl.samplers import SamplerConfig
from bnnctl.scheduler import parse

distributed = pytest.importorskip("distributed")

runner = CliRunner()
TINY = ["--arch", "mlp:64-8-10", "--epochs", "1"]
ARCH = ArchSpec((64, 8, 10))


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes with bnnctl's engines already imported."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        ) as lc,
        distributed.Client(lc, set_as_default=False) as client,
    ):
        client.run(importlib.import_module, "bnnctl.engines.train")
        yield lc.scheduler_address, client


def cli(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.stderr
    return r.stderr


def shas(path: Path) -> dict[str, str]:
    man = Store.open(path).manifest()
    return dict(zip(man["model_id"], man["sha256"], strict=True))


def test_train_on_workers_matches_in_process_and_local_clusters_verify(tmp_path, cluster):
    address, _ = cluster
    args = ["train", *TINY, "--seeds", "8", "--block-size", "2"]
    cli(*args, "--store", str(tmp_path / "a.zarr"))
    log = cli(*args, "--scheduler", address, "--store", str(tmp_path / "b.zarr"))
    assert "trained 8 models in" in log  # the summary, as in-process
    assert shas(tmp_path / "a.zarr") == shas(tmp_path / "b.zarr")
    log = cli("verify", "--scheduler", "local:2", "--store", str(tmp_path / "b.zarr"))
    assert "ok: 8 checkpoints verified" in log


def test_sample_and_canonicalize_on_workers_match_in_process(tmp_path, cluster, digits):
    address, _ = cluster
    for name in ("a", "b"):
        sched = None if name == "a" else address
        path = tmp_path / f"{name}.zarr"
        train(path, digits, TrainConfig(epochs=1), range(4), ARCH, block_size=2, scheduler=sched)
        steps: list[int] = []
        cfg = SamplerConfig("sghmc", burn_in=2)
        store, plan = make_plan(path, cfg, 4, 5, digits, ARCH, segment=2)
        res = run_plan(store, plan, steps.append, sched)
        assert sum(steps) == plan.total_steps and len(res.rows) == 20
        done: list[int] = []
        canon = canonicalize(path, block_size=8, progress=done.append, scheduler=sched)
        assert sum(done) == len(canon.rows) == 24 and canon.report["models"] == 24
    assert shas(tmp_path / "a.zarr") == shas(tmp_path / "b.zarr")
    arrays = set(Store.open(tmp_path / "b.zarr").manifest()["array"].str.rsplit(".", n=1).str[0])
    assert {
        "params/digits-sghmc/c00000-00002/seg000001",
        "params/digits-sghmc/c00003-00004/seg000001",
    } <= arrays


def test_full_batch_hmc_matches_in_process_at_the_workers_thread_count(tmp_path, cluster, digits):
    """HMC's full-batch gradient sums over all points in one matrix product, whose rounding
    depends on torch's thread count (Dask workers use one: README) and, in MKL, on the
    data's memory alignment (the posterior copies it to aligned memory)."""
    address, _ = cluster
    cfg = SamplerConfig("hmc", burn_in=2, leapfrog=3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = run_plan(*make_plan(tmp_path / "a.zarr", cfg, 2, 3, digits, ARCH))
    finally:
        torch.set_num_threads(before)
    b = run_plan(*make_plan(tmp_path / "b.zarr", cfg, 2, 3, digits, ARCH), None, address)
    assert shas(tmp_path / "a.zarr") == shas(tmp_path / "b.zarr")
    assert list(a.accept_rate) == list(b.accept_rate)


def test_a_run_resumed_elsewhere_keeps_its_chain_blocks(tmp_path, digits):
    """A Dask run killed after one block of chains finished, resumed in-process: the
    finished block stays, the other chains run as a block of their own, and the rows are
    those of an uninterrupted in-process run."""
    cfg = SamplerConfig("sghmc", burn_in=2)
    whole = run_plan(*make_plan(tmp_path / "a.zarr", cfg, 4, 5, digits, ARCH, segment=2))
    store, plan = make_plan(tmp_path / "b.zarr", cfg, 4, 5, digits, ARCH, segment=2)
    run_chains(store, plan, range(0, 2))  # as a worker would have, before the kill
    assert chain_blocks(plan, {range(0, 2): [0, 1]}, 1) == [range(0, 2), range(2, 5)]
    resumed = run_plan(store, plan)
    assert resumed.skipped_segments == 0 and len(resumed.rows) == 12
    assert shas(tmp_path / "a.zarr") == shas(tmp_path / "b.zarr") and len(whole.rows) == 20
    assert run_plan(store, plan).rows.empty  # finished: a no-op
    assert store.verify() == []


def test_a_killed_worker_block_is_rerun_and_nothing_doubled(tmp_path, cluster, digits):
    address, client = cluster
    path = tmp_path / "k.zarr"
    seeds = range(12)
    cfg = TrainConfig(epochs=20, batch_size=32)
    with ThreadPoolExecutor(1) as ex:
        run = ex.submit(
            train, path, digits, cfg, seeds, ArchSpec((64, 32, 10)), None, 2, 1, scheduler=address
        )
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline and not run.done():
            busy = [
                w
                for w, keys in client.processing().items()
                if any(str(k).startswith("_scheduled_block") for k in keys)  # training a block
            ]
            if busy and (path / "zarr.json").exists() and len(Store.open(path).manifest()) >= 2:
                victim = busy[0]
            time.sleep(0.05)
        assert victim is not None, "no block was running to kill"
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        result = run.result(timeout=240)  # the nanny restarts the worker meanwhile
    man = Store.open(path).manifest()
    assert sorted(man["seed"]) == list(seeds) and man["model_id"].is_unique
    assert sorted(result.rows["seed"]) == list(seeds)
    assert Store.open(path).verify() == []


def test_verify_on_workers_finds_the_same_problems(store_copy, cluster):
    address, _ = cluster
    assert Store.open(store_copy).verify(scheduler=address) == []
    row = Store.open(store_copy).manifest().sort_values("model_id").iloc[0]
    shard = next(p for p in (store_copy / row["array"] / "c").rglob("*") if p.is_file())
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    here = Store.open(store_copy).verify()
    assert here and Store.open(store_copy).verify(scheduler=address) == here
    r = runner.invoke(app, ["verify", "--scheduler", address, "--store", str(store_copy)])
    assert r.exit_code == 1 and "sha256 mismatch" in r.stdout


def test_stats_ensemble_on_workers_matches_in_process(store_copy, cluster, monkeypatch):
    """The re-evaluation's forward passes on workers, in blocks of 3 models: the same
    outputs bit for bit, so the same report."""
    import bnnctl.stats.members as members
    from bnnctl.stats.report import compute

    address, _ = cluster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count
    try:
        here, ctx_here = compute(Store.open(store_copy), ensemble=True, pairs=50)
        monkeypatch.setattr(members, "MODEL_BATCH", 3)
        there, ctx = compute(Store.open(store_copy), ensemble=True, pairs=50, scheduler=address)
    finally:
        torch.set_num_threads(threads)
    assert len(ctx.members.rows) == 8  # three blocks of at most 3
    assert torch.equal(ctx.members.out, ctx_here.members.out)
    for r in (here, there):
        r["evaluation"].pop("models_per_s", None)
        r["evaluation"].pop("seconds", None)
    assert there == here
    r = runner.invoke(
        app, ["stats", "--scheduler", address, "--ensemble", "--store", str(store_copy)]
    )
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["stats", "--scheduler", address, "--store", str(store_copy)])
    assert r.exit_code == 2 and "--ensemble, --ood or --plot" in r.stderr


@pytest.mark.parametrize("value", ["local:0", "local:-1", "foo", "tcp://host", "tcp://h:99999"])
def test_bad_scheduler_values_are_usage_errors(value):
    with pytest.raises(UsageError, match="`scheduler`"):
        parse(value)
    assert parse("local:3").workers == 3 and parse("tcp://10.0.0.5:8786").address


@pytest.mark.parametrize("command", ["train", "sample", "canonicalize", "verify"])
def test_missing_distributed_is_one_line_exit_3_and_nothing_written(
    command, tmp_path, monkeypatch, digits
):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    store = tmp_path / "new.zarr"
    r = runner.invoke(app, [command, "--scheduler", "local:2", "--store", str(store)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 3 and len(lines) == 1, r.stderr
    assert "--scheduler needs the distributed package" in lines[0] and "pip install" in lines[0]
    assert not store.exists()
    with pytest.raises(MissingDependencyError):
        train(store, digits, scheduler="local:2")


def test_an_unreachable_scheduler_is_an_environment_fault(tmp_path, digits):
    import dask

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(EnvironmentFault, match="cannot reach the Dask scheduler"),
    ):
        train(
            tmp_path / "u.zarr",
            digits,
            TrainConfig(epochs=1),
            range(2),
            ARCH,
            scheduler="tcp://127.0.0.1:9",
        )


def test_importing_the_cli_does_not_import_distributed():
    code = "import sys, bnnctl.cli, bnnctl.scheduler; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
