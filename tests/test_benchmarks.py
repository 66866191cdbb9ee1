"""Benchmarks must not rot: each runs in its tiny --quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick(script: str, *args: str) -> str:
    """Run ``scripts/<script> --quick``; its stdout (the run must succeed)."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bench_train_quick():
    out = json.loads(quick("bench_train.py", "--json"))
    assert (
        out["bnnctl_models_per_s"] > 0 and out["plain_models_per_s"] > 0 and out["sgemm_gflops"] > 0
    )
    assert 0 < out["roofline_fraction"] < 1.5


def test_bench_store_quick():
    out = quick("bench_store.py")
    assert "zstd-3" in out and "none" in out


def test_bench_cli_quick():
    out = json.loads(quick("bench_cli.py", "--json"))
    assert out["baseline_s"] > 0 and out["ls_s"] > 0 and out["ls_ratio"] > 0


def test_bench_scale_quick():
    out = json.loads(quick("bench_scale.py", "--json"))
    assert out["rows"] == 2048 and out["ms_per_block_last"] > 0 and out["ls_s_large"] > 0
    assert out["files_after_compact"] == 1 and 0 < out["manifest_bytes_per_row"] < 1000


def test_bench_verify_quick():
    out = json.loads(quick("bench_verify.py", "--json"))
    assert out["problems"] == 0 and out["verify_mb_per_s"] > 0 and out["sha256_mb_per_s"] > 0


def test_bench_keys_quick():
    out = json.loads(quick("bench_keys.py", "--json"))
    forms = {r["form"]: r for r in out["rows"]}
    assert forms["weight matching to a medoid"]["distance_vs_matching"] == 1.0
    assert {"pc", "mean", "scale only (no perm)"} <= set(forms)
    assert 0 <= out["pc_layer2_flipped_share"] <= 0.5


def test_bench_canonicalize_e2e_quick():
    out = json.loads(quick("bench_canonicalize_e2e.py", "--json"))
    assert out["models"] == 64 and out["models_per_s"] > 0
    assert out["stages_s"]["read params (with sha256)"] > 0 and out["stages_s"]["report: whole"] > 0


def test_bench_dask_quick():
    pytest.importorskip("distributed")
    out = json.loads(quick("bench_dask.py", "--json"))
    assert out["models"] == 8 and len(out["warm_workers_commit"]) == 1
    assert all(t > 0 for t in out["in_process_1_thread"] + out["warm_client_commits"])


def test_bench_import_quick():
    out = json.loads(quick("bench_import.py", "--json"))
    assert out["models"] == 64 and out["archives"] == 2 and out["imports_per_s"] > 0
    assert out["stages_s"]["read archives (gunzip + tar)"] > 0
    assert out["stages_s"]["evaluate (metrics)"] > 0 and out["stages_s"]["commit blocks"] > 0


def test_bench_conv_layers_quick():
    out = json.loads(quick("bench_conv_layers.py", "--json"))
    assert {"conv1", "conv2", "pool", "input", "step"} <= set(out["layers"])
    for cands in out["layers"].values():
        for r in cands.values():
            assert r["ms"] > 0 and r["max_rel_diff"] < 1e-4
    assert out["step_ratio"] > 0


def test_bench_device_quick(tmp_path):
    """The GPU run's script, on the CPU with tiny sizes: every section reports."""
    out_file = tmp_path / "figures.json"
    out = json.loads(quick("bench_device.py", "--device", "cpu", "--out", str(out_file)))
    assert out == json.loads(out_file.read_text()) and out["device"] == "cpu"
    assert out["mlp"]["models_per_s"] > 0 and out["mlp"]["plain_models_per_s"] > 0
    assert out["optunet"]["models"] == 4 and out["optunet"]["extrapolated_60_epochs_s"] > 0
    assert out["canonicalize"]["models"] == 8 and out["sghmc"]["grad_evals_per_s"] > 0


def test_bench_orders_quick():
    out = json.loads(quick("bench_orders.py"))
    assert out["plain_s"] > 0 and out["bnnctl_s"] > 0 and out["models"] == 16
