"""`bnnctl sample` and the sample engine: rows, resume, starts, bad input, benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import bnnctl.cli  # noqa: F401  (registers the commands)
from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.cli.common import app
from bnnctl.engines.sample import sample
from bnnctl.samplers import SamplerConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "mlp:64-8-10", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(app, ["sample", *map(str, args)])


def manifest(path) -> pd.DataFrame:
    return Store.open(path).manifest()


@pytest.fixture
def regression_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    y = x @ [1.0, -0.5] + 0.3 + 0.5 * rng.normal(size=60)
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=x, y_train=y[:, None], x_test=x[:20], y_test=y[:20, None])
    return path


def test_sghmc_from_prior_commits_rows(tmp_path):
    st = tmp_path / "s.zarr"
    res = run(
        "--method",
        "sghmc",
        "--chains",
        3,
        "--samples",
        4,
        "--burn-in",
        5,
        "--thin",
        2,
        "--segment",
        2,
        "--store",
        st,
        *TINY,
    )
    assert res.exit_code == 0, res.output
    df = manifest(st)
    assert len(df) == 12 and set(df["kind"]) == {"sample"} and set(df["method"]) == {"sghmc"}
    assert df["array"].nunique() == 2  # two segments, one block each
    assert sorted(df["step"].unique()) == [7, 9, 11, 13]
    assert df["parent_id"].isna().all() and (df["burn_in"] == 5).all()
    assert df["test_acc"].between(0, 1).all() and df["test_nll"].notna().all()
    assert Store.open(st).verify() == []
    assert not (st / "state" / "digits-sghmc").exists()  # finished: no resume point left


def test_hmc_on_regression_data_records_acceptance(tmp_path, regression_npz):
    st = tmp_path / "s.zarr"
    res = run(
        "--method",
        "hmc",
        "--data",
        regression_npz,
        "--arch",
        "mlp:2-1",
        "--noise-std",
        0.5,
        "--chains",
        4,
        "--samples",
        5,
        "--burn-in",
        10,
        "--step-size",
        0.05,
        "--store",
        st,
    )
    assert res.exit_code == 0, res.output
    assert "acceptance median" in res.output
    df = manifest(st)
    assert len(df) == 20 and df["accept_rate"].between(0, 1).all()
    assert (df["noise_std"] == 0.5).all() and df["test_rmse"].notna().all()
    assert df["step_size"].gt(0).all()


@pytest.mark.parametrize(
    "method, step", [("sgld", 1e-4), ("sghmc", 1e-5), ("hmc", 1e-3), ("mfvi", 1e-3)]
)
def test_resume_after_a_crash_gives_the_same_samples(tmp_path, monkeypatch, method, step):
    """Killed after a segment's state is saved but before its commit, then re-run: the
    same rows, bit for bit, as an uninterrupted run (positions, momenta, step sizes,
    optimizer moments and RNG states all resume)."""
    args = [
        "--method",
        method,
        "--chains",
        2,
        "--samples",
        6,
        "--segment",
        2,
        "--burn-in",
        3,
        "--step-size",
        step,
        "--leapfrog",
        2,
        *TINY,
    ]
    whole = tmp_path / "whole.zarr"
    assert run(*args, "--store", whole).exit_code == 0
    crashed = tmp_path / "crashed.zarr"
    real, calls = Store.commit_block, []

    def crash_on_second(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Store, "commit_block", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        sample(
            Store.open(crashed, create=True),
            SamplerConfig(method, step_size=step, burn_in=3, leapfrog=2),
            samples=6,
            chains=2,
            dataset=_digits(),
            arch=ArchSpec((64, 8, 10)),
            segment=2,
        )
    monkeypatch.setattr(Store, "commit_block", real)
    first = manifest(crashed)
    assert first["array"].nunique() == 1
    res = run(*args, "--store", crashed)
    assert res.exit_code == 0, res.output
    a, b = manifest(whole), manifest(crashed)
    assert len(b) == len(a) and b["model_id"].is_unique
    pd.testing.assert_series_equal(
        a.set_index("model_id")["sha256"].sort_index(),
        b.set_index("model_id")["sha256"].sort_index(),
    )
    assert Store.open(crashed).verify() == []
    again = run(*args, "--store", crashed)  # complete: nothing more to do
    assert again.exit_code == 0 and len(manifest(crashed)) == len(a)


def _digits():
    from bnnctl.data import load_dataset

    return load_dataset("digits")


def test_multi_and_single_mode_starts(store_copy):
    res = run(
        "--method",
        "laplace",
        "--from",
        "seed < 3",
        "--samples",
        2,
        "--store",
        store_copy,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    df = manifest(store_copy)
    lap = df[df["population"] == "digits-laplace"]
    draws = lap[lap["method"] == "laplace"]
    assert len(draws) == 6 and set(draws["parent_id"]) == {
        "digits.000000",
        "digits.000001",
        "digits.000002",
    }
    assert len(lap[lap["method"] == "laplace-std"]) == 3
    # single mode: all chains from one checkpoint
    res = run(
        "--method",
        "sghmc",
        "--from",
        "model_id == 'digits.000004'",
        "--chains",
        3,
        "--samples",
        1,
        "--burn-in",
        2,
        "--store",
        store_copy,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    sg = manifest(store_copy).query("population == 'digits-sghmc'")
    assert len(sg) == 3 and set(sg["parent_id"]) == {"digits.000004"}
    assert Store.open(store_copy).verify() == []


def test_mfvi_stores_q_mean_and_std(tmp_path):
    st = tmp_path / "s.zarr"
    res = run(
        "--method", "mfvi", "--chains", 2, "--samples", 3, "--burn-in", 5, "--store", st, *TINY
    )
    assert res.exit_code == 0, res.output
    df = manifest(st)
    assert df["method"].value_counts().to_dict() == {"mfvi": 6, "mfvi-mean": 2, "mfvi-std": 2}
    store = Store.open(st)
    std = store.read_params(df[df["method"] == "mfvi-std"])
    assert (std > 0).all()


def test_mc_dropout_needs_dropout(tmp_path, store_copy, digits):
    res = run("--method", "mc_dropout", "--from", "seed < 2", "--store", store_copy)
    assert res.exit_code == 2 and "dropout" in res.output
    st = tmp_path / "d.zarr"
    train(
        Store.open(st, create=True),
        digits,
        TrainConfig(epochs=1),
        seeds=range(2),
        arch=ArchSpec((64, 8, 10), dropout=0.5),
    )
    res = run(
        "--method",
        "mc_dropout",
        "--from",
        "kind == 'train'",
        "--samples",
        3,
        "--store",
        st,
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    df = manifest(st).query("kind == 'sample'")
    assert len(df) == 6
    params = Store.open(st).read_params(df)
    w2 = params[:, 64 * 8 + 8 : 64 * 8 + 8 + 80].reshape(-1, 10, 8)  # next layer's columns
    dropped = (np.abs(w2).sum(1) == 0).mean()
    assert 0.2 < dropped < 0.8


def test_divergent_chains_are_reported_not_stored(tmp_path):
    st = tmp_path / "s.zarr"
    res = run(
        "--method",
        "sgld",
        "--chains",
        2,
        "--samples",
        2,
        "--burn-in",
        0,
        "--step-size",
        1e30,
        "--store",
        st,
        *TINY,
    )
    assert res.exit_code == 1 and "diverged" in res.output
    assert manifest(st).empty
    # HMC rejects divergent proposals and counts them
    res = run(
        "--method",
        "hmc",
        "--chains",
        2,
        "--samples",
        2,
        "--burn-in",
        0,
        "--step-size",
        50,
        "--leapfrog",
        3,
        "--store",
        st,
        "--arch",
        "mlp:64-8-10",
    )
    assert res.exit_code == 0, res.output
    assert "divergent transitions rejected" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nuts"], "'nuts' is not one of"),
        (["--samples", 0], "--samples"),
        (["--prior-var", -1], "--prior-var"),
        (["--step-size", -0.1], "--step-size"),
        (["--chains", 0], "--chains"),
        (["--method", "laplace"], "--from"),
        (["--arch", "mlp:3-10"], "inputs"),
    ],
)
def test_bad_input_leaves_no_store(tmp_path, args, message):
    st = tmp_path / "s.zarr"
    res = run(*args, "--store", st)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not st.exists()


def test_bad_from_leaves_store_untouched(store_copy, digits):
    before = sorted(p.name for p in (store_copy / "manifest").iterdir())
    for expr, message in [
        ("seed > 100", "selects no checkpoints"),
        ("seed <", "--from: syntax error"),
        ("seed < 3", "not a multiple"),
    ]:
        res = run("--method", "sghmc", "--from", expr, "--chains", 4, "--store", store_copy)
        assert res.exit_code == 2 and message in res.output, res.output
    assert sorted(p.name for p in (store_copy / "manifest").iterdir()) == before
    train(
        Store.open(store_copy),
        digits,
        TrainConfig(epochs=1),
        seeds=[0],
        arch=ArchSpec((64, 8, 10)),
        population="other",
    )
    before = sorted(p.name for p in (store_copy / "manifest").iterdir())
    res = run("--method", "sghmc", "--from", "seed == 0", "--store", store_copy)
    assert res.exit_code == 2 and "mixes architectures" in res.output
    assert sorted(p.name for p in (store_copy / "manifest").iterdir()) == before


def test_other_settings_in_a_population_conflict(tmp_path):
    st = tmp_path / "s.zarr"
    assert run("--chains", 2, "--samples", 1, "--burn-in", 1, "--store", st, *TINY).exit_code == 0
    res = run("--chains", 2, "--samples", 1, "--burn-in", 2, "--store", st, *TINY)
    assert res.exit_code == 2 and "--population" in res.output


def test_help_has_example():
    res = CliRunner().invoke(app, ["sample", "--help"])
    assert res.exit_code == 0 and "Example: bnnctl sample" in res.output


@pytest.mark.parametrize("arch", [[], ["--arch", "optunet"]])
def test_bench_quick_runs(arch):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_sample.py"), "--quick", "--json", *arch],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["together_evals_per_s"] > 0 and res["speedup"] > 0
    assert (res["roofline_fraction"] is None) == bool(arch)


def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_samples(tmp_path):
    """A real SIGKILL at an arbitrary point of a multi-segment run, then the same command:
    the same rows, bit for bit, as a run that was never interrupted."""
    import os
    import signal
    import time

    args = [
        "sample",
        "--method",
        "sghmc",
        "--chains",
        "4",
        "--samples",
        "60",
        "--segment",
        "4",
        "--thin",
        "20",
        "--step-size",
        "1e-5",
        "--arch",
        "mlp:64-24-10",
        "--quiet",
    ]
    whole, killed = tmp_path / "whole.zarr", tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "bnnctl", *args]
    p = subprocess.Popen(
        [*cmd, "--store", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "manifest").glob("*.parquet"))) < 2:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert 0 < len(manifest(killed)) < 240  # killed part-way
    assert subprocess.run([*cmd, "--store", str(killed)], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "--store", str(whole)], capture_output=True).returncode == 0
    a, b = manifest(whole), manifest(killed)
    assert len(a) == 240 and b["model_id"].is_unique
    pd.testing.assert_series_equal(
        a.set_index("model_id")["sha256"].sort_index(),
        b.set_index("model_id")["sha256"].sort_index(),
    )
    assert Store.open(killed).verify() == []
