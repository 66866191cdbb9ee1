"""The command line: every command documented, clean errors, pipelines, and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from deltalake import DeltaTable
from typer.testing import CliRunner

from bnnctl import ArchSpec, Store
from bnnctl.cli.common import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def bnnctl(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnnctl", *args], capture_output=True, text=True, **kw
    )


def commands() -> list[str]:
    return sorted(c.name for c in app.registered_commands)


def test_every_command_has_help_with_an_example_and_a_readme_section():
    readme = (ROOT / "README.md").read_text()
    assert {"train", "ls", "verify"} <= set(commands())
    for name in commands():
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example: bnnctl" in result.output, f"{name} --help has no example"
        assert f"### `bnnctl {name}`" in readme, f"README does not document {name}"


def test_train_ls_verify(tmp_path):
    s = str(tmp_path / "s.zarr")
    r = runner.invoke(
        app, ["train", "--seeds", "3", "--epochs", "2", "--arch", "mlp:64-8-10", "--store", s]
    )
    assert r.exit_code == 0, r.output
    assert "trained 3 models" in r.output and "test accuracy median" in r.output
    r = runner.invoke(
        app,
        ["ls", "--store", s, "--format", "csv", "--sort", "-seed", "--columns", "model_id,seed"],
    )
    assert r.exit_code == 0 and r.output.splitlines() == [
        "model_id,seed",
        "digits.000002,2",
        "digits.000001,1",
        "digits.000000,0",
    ]
    r = runner.invoke(
        app, ["ls", "--store", s, "--format", "json", "--where", "seed >= 1", "--limit", "1"]
    )
    assert [d["seed"] for d in json.loads(r.output)] == [1]
    r = runner.invoke(app, ["ls", "--store", s, "--format", "jsonl", "--columns", "all"])
    assert len([json.loads(line) for line in r.output.splitlines()]) == 3
    r = runner.invoke(app, ["ls", "--store", s, "--format", "ids"])
    assert r.output.split() == ["digits.000000", "digits.000001", "digits.000002"]
    r = runner.invoke(app, ["ls", "--store", s])
    assert "digits.000001" in r.output and "mlp:64-8-10" in r.output
    r = runner.invoke(app, ["verify", "--store", s])
    assert r.exit_code == 0 and "ok: 3 checkpoints" in r.output
    r = runner.invoke(
        app, ["train", "--seeds", "3", "--epochs", "2", "--arch", "mlp:64-8-10", "--store", s]
    )
    assert r.exit_code == 0 and "3 already in the store" in r.output


@pytest.mark.parametrize(
    "args,msg",
    [
        (["train", "--seeds", "0"], "--seeds must be at least 1"),
        (["train", "--seeds", "-4"], "--seeds must be at least 1"),
        (["train", "--seed-start", "-1"], "--seed-start"),
        (["train", "--dataset", "imagenet"], "unknown dataset"),
        (["train", "--arch", "resnet18"], "cannot parse architecture"),
        (["train", "--arch", "mlp:64-8-3"], "3 outputs"),
        (["train", "--optimizer", "lbfgs"], "'lbfgs' is not one of"),
        (["train", "--activation", "swish"], "'swish' is not one of"),
        (["train", "--dtype", "bfloat16"], "dtype"),
        (["ls", "--where", "test_acc >>> 2"], "--where: syntax error"),
        (["ls", "--where", "no_such_column > 1"], "--where: unknown column 'no_such_column'"),
        (["ls", "--columns", "nope"], "unknown column"),
        (["ls", "--sort", "nope"], "unknown column"),
    ],
)
def test_bad_input_is_one_clear_line(store_copy, args, msg):
    before = sorted(p.name for p in (store_copy / "manifest").iterdir())
    r = runner.invoke(app, [*args, "--store", str(store_copy)])
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert r.output.strip().startswith("error:") and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in (store_copy / "manifest").iterdir()) == before


def test_bad_data_files_and_store_paths(tmp_path, store_copy):
    np.savez(
        tmp_path / "nan.npz",
        x_train=np.full((4, 2), np.nan),
        y_train=np.arange(4) % 2,
        x_test=np.zeros((2, 2)),
        y_test=np.arange(2),
    )
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    (tmp_path / "file").write_text("x")
    g = zarr.open_group(str(store_copy), mode="r+")
    g.attrs["bnnctl"] = {"format_version": 99}
    cases = [
        (
            ["train", "--data", str(tmp_path / "nan.npz"), "--store", str(tmp_path / "a.zarr")],
            "NaN",
        ),
        (
            ["train", "--data", str(tmp_path / "broken.npz"), "--store", str(tmp_path / "a.zarr")],
            "cannot read",
        ),
        (["train", "--store", str(tmp_path / "file")], "regular file"),
        (["train", "--arch", "mlp:64-8-3", "--store", str(tmp_path / "a.zarr")], "3 outputs"),
        (["train", "--population", "a b", "--store", str(tmp_path / "a.zarr")], "population name"),
        (["train", "--jobs", "0", "--store", str(tmp_path / "a.zarr")], "--jobs"),
        (["ls", "--store", str(tmp_path / "absent.zarr")], "no bnnctl store"),
        (["ls", "--store", str(store_copy)], "format version 99"),
        (["verify", "--store", str(store_copy)], "format version 99"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, (
            args,
            r.output,
        )
    assert not (tmp_path / "a.zarr").exists()  # refused before any store was created


def test_appending_another_arch_to_a_population(store_copy):
    r = runner.invoke(
        app,
        [
            "train",
            "--seeds",
            "2",
            "--seed-start",
            "8",
            "--arch",
            "mlp:64-16-10",
            "--store",
            str(store_copy),
        ],
    )
    assert (
        r.exit_code == 2 and "population 'digits' was trained with arch mlp:64-32-32-10" in r.output
    )
    assert len(Store.open(store_copy).manifest()) == 8


def test_verify_reports_problems_by_model_id(store_copy):
    store = Store.open(store_copy)
    rec = store.manifest().sort_values("model_id").iloc[0]
    arr = zarr.open_array(str(store_copy / rec["array"]), mode="r+")
    row = arr[rec["row"]]
    row[0] += 1.0
    arr[rec["row"]] = row  # silently change committed bytes
    r = bnnctl("verify", "--store", str(store_copy))
    assert r.returncode == 1
    assert rec["model_id"] in r.stdout and "sha256 mismatch" in r.stdout
    assert "1 problem" in r.stderr


def test_pipeline_head_ends_quietly(tmp_path):
    store = Store.open(tmp_path / "big.zarr", create=True)
    arch = ArchSpec((2, 1))
    n = 3000
    rows = [
        dict(
            model_id=f"m.{i:05d}",
            kind="import",
            method="x",
            population="big",
            dataset="d",
            task="classification",
            data=None,
            data_sha256="0" * 64,
            config_sha256="c",
        )
        for i in range(n)
    ]
    store.commit_block("params/big/b0", np.zeros((n, arch.n_params)), "float32", arch, rows)
    r = subprocess.run(
        f"{sys.executable} -m bnnctl ls --store {tmp_path / 'big.zarr'} --columns all "
        "--format jsonl | head -n 2",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert len(r.stdout.splitlines()) == 2 and r.stderr == ""


@pytest.mark.parametrize("kill_after_commits", [0, 1])
def test_kill_9_then_rerun_gives_exactly_the_requested_rows(tmp_path, kill_after_commits):
    s = tmp_path / "k.zarr"
    args = [
        sys.executable,
        "-m",
        "bnnctl",
        "train",
        "--seeds",
        "8",
        "--block-size",
        "2",
        "--epochs",
        "40",
        "--arch",
        "mlp:64-24-10",
        "--store",
        str(s),
        "--quiet",
    ]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = s / "manifest" / "_delta_log"
        commits = len(list(log.glob("*.json"))) - 1 if log.exists() else 0  # 0: the creation
        if commits >= kill_after_commits and (s / "params").exists():
            break
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    if (s / "manifest" / "_delta_log").exists():
        assert len(DeltaTable(str(s / "manifest")).to_pandas()) < 8
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    df = Store.open(s).manifest()
    assert sorted(df["seed"]) == list(range(8)) and df["model_id"].is_unique
    v = bnnctl("verify", "--store", str(s))
    assert v.returncode == 0 and "ok: 8 checkpoints" in v.stderr
    left = Store.open(s).orphan_arrays()  # what the kill left: named by no row
    removed = Store.open(s).gc(grace_seconds=0)
    # gc also removes zarr *.partial files, which a kill mid-write can leave in any array
    assert sorted(p for p in removed if not p.endswith(".partial")) == sorted(left)
    assert not list(s.glob("params/**/*.partial"))
    assert Store.open(s).orphan_arrays() == [] and Store.open(s).verify() == []


def test_progress_without_a_terminal_prints_plain_lines(monkeypatch, capsys):
    """A log file (nohup, CI) gets a plain progress line about every PLAIN_PROGRESS_EVERY
    seconds, with done/total, rate and ETA; --quiet prints nothing."""
    from bnnctl.cli import common

    monkeypatch.setattr(common, "PLAIN_PROGRESS_EVERY", 0.0)
    with common.progress(False, "train", 40, per_item=4) as advance:
        for _ in range(10):
            advance(4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("train: 10/10 models, ")
    assert "models/s" in lines[-1] and ", eta " in lines[0]
    with common.progress(True, "train", 40) as advance:
        advance(40)
    assert capsys.readouterr().err == ""


def test_where_examples_in_readme_and_help_are_accepted(trained_store):
    """Every --where / --from expression the docs show parses under the safe grammar."""
    import re

    from bnnctl.store.where import check_where

    columns = Store.open(trained_store).manifest().columns
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "cli.md").read_text()
    found = re.findall(r"""--(?:where|from|compare) (["'])(.+?)\1""", docs)
    exprs = {e for _, e in found} | set(re.findall(r'--compare "([^"]+)" "([^"]+)"', docs)[0])
    assert len(exprs) >= 8
    for expr in exprs:
        check_where(expr, columns)


def test_ls_parquet_snapshot_reads_back_with_pandas(trained_store, tmp_path):
    import pandas as pd

    out = tmp_path / "snap.parquet"
    with out.open("wb") as fh:
        r = subprocess.run(
            [sys.executable, "-m", "bnnctl", "ls", "--store", str(trained_store), "--columns",
             "all", "--format", "parquet", "--where", "seed < 3"],
            stdout=fh, stderr=subprocess.PIPE, text=False,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    snap = pd.read_parquet(out)
    ours = Store.open(trained_store).manifest().query("seed < 3")
    assert sorted(snap["model_id"]) == sorted(ours["model_id"])
    assert list(snap.columns) == list(ours.columns)
