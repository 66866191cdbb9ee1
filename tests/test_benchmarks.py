"""Benchmarks must not rot: each runs in its tiny --quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_quick():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (
        out["bnnctl_models_per_s"] > 0 and out["plain_models_per_s"] > 0 and out["sgemm_gflops"] > 0
    )
    assert 0 < out["roofline_fraction"] < 1.5


def test_bench_store_quick():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_store.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "zstd-3" in r.stdout and "none" in r.stdout


def test_bench_cli_quick():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_cli.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["baseline_s"] > 0 and out["ls_s"] > 0 and out["ls_ratio"] > 0


def test_bench_scale_quick():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rows"] == 2048 and out["ms_per_block_last"] > 0 and out["ls_s_large"] > 0
    assert out["files_after_compact"] == 1 and 0 < out["manifest_bytes_per_row"] < 1000


def test_bench_verify_quick():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_verify.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["problems"] == 0 and out["verify_mb_per_s"] > 0 and out["sha256_mb_per_s"] > 0
