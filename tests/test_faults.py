"""Faults of the environment and of training: a full disk, a read-only store, non-finite
weights, internal errors. Each ends as one line and an exit code, with nothing committed
half-way and nothing lost.

The disk and read-only cases mount a small tmpfs or a read-only bind mount, so they need
root (CI runs as root); elsewhere they skip, saying why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bnnctl import Store
from bnnctl.cli import app

runner = CliRunner()
TINY = ["--arch", "mlp:64-8-10", "--epochs", "1", "--quiet"]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a tmpfs or a read-only bind mount needs root",
)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextmanager
def mounted(*args: str, target: Path) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@needs_root
def test_read_only_store_refuses_every_writer_before_work(store_copy, tmp_path):
    (tmp_path / "ck").mkdir()
    from bnnctl.export import export

    s = Store.open(store_copy)
    export(s, s.manifest().head(1), "safetensors", tmp_path / "ck", force=True)
    with mounted("--bind", str(store_copy.parent), target=tmp_path / "ro") as ro:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        store = str(ro / store_copy.name)
        before = snapshot(Path(store))
        for args in (
            ["train", "--seeds", "2", "-p", "new", *TINY],
            ["canonicalize"],
            ["sample", "--method", "sgld", "--chains", "2", "--samples", "2", "--arch",
             "mlp:64-8-10"],
            ["import", str(tmp_path / "ck"), "-p", "imported"],
        ):  # fmt: skip
            r = runner.invoke(app, [*args, "--store", store])
            assert r.exit_code == 3, (args, r.stderr)
            assert one_line(r) == f"error: cannot write to {store}: read-only file system"
        for args in (["ls"], ["verify"], ["stats"]):
            r = runner.invoke(app, [*args, "--store", store])
            assert r.exit_code == 0, (args, r.stderr)
        assert snapshot(Path(store)) == before


@needs_root
def test_too_little_space_is_refused_before_training(tmp_path):
    with mounted("-t", "tmpfs", "-o", "size=3m", "tmpfs", target=tmp_path / "small") as disk:
        store = disk / "s.zarr"
        r = runner.invoke(app, ["train", "--seeds", "512", *TINY, "--store", str(store)])
        assert r.exit_code == 3
        assert one_line(r).startswith(f"error: not enough space for {store}: ")
        assert not list(store.glob("params/*/*"))  # nothing trained, nothing written


@needs_root
def test_disk_full_while_committing_loses_nothing(tmp_path, monkeypatch):
    """The disk fills after the pre-flight check (another process wrote): the block is not
    committed, its array is removed, and a re-run once space is back completes the run."""
    with mounted("-t", "tmpfs", "-o", "size=6m", "tmpfs", target=tmp_path / "disk") as disk:
        store = str(disk / "s.zarr")
        r = runner.invoke(app, ["train", "--seeds", "4", *TINY, "--store", store])
        assert r.exit_code == 0, r.stderr
        before = snapshot(Path(store) / "manifest")
        fill(disk)
        monkeypatch.setattr(Store, "check_writable", lambda self, planned_bytes=0: None)
        r = runner.invoke(
            app, ["train", "--seeds", "4", "--seed-start", "4", *TINY, "--store", store]
        )
        assert r.exit_code == 3
        assert one_line(r) == (
            "error: no space left on device while committing block digits/s000004-000007 "
            "(nothing committed; re-run to continue)"
        )
        assert snapshot(Path(store) / "manifest") == before
        assert Store.open(store).orphan_arrays() == []
        (disk / "filler").unlink()
        monkeypatch.undo()
        r = runner.invoke(app, ["train", "--seeds", "8", *TINY, "--store", store])
        assert r.exit_code == 0, r.stderr
        s = Store.open(store)
        assert sorted(s.manifest()["seed"]) == list(range(8)) and s.verify() == []


def test_non_finite_training_is_refused_unless_allowed(tmp_path):
    store = str(tmp_path / "s.zarr")
    args = ["train", "--seeds", "4", *TINY, "--lr", "1e30", "--store", store]
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    line = one_line(r)
    assert "error: block digits/s000000-000003: model digits.0000" in line
    assert "has non-finite weights" in line
    assert "--allow-nonfinite" in line and "--lr" in line
    assert Store.open(store).manifest().empty
    r = runner.invoke(app, [*args, "--allow-nonfinite"])
    assert r.exit_code == 0, r.stderr
    s = Store.open(store)
    man = s.manifest()
    params = s.read_params(man)
    metrics = man[["train_loss", "train_nll", "test_nll"]].to_numpy(float)
    finite = np.isfinite(params).all(1) & np.isfinite(metrics).all(1)
    assert not finite.all()
    flagged = {p.model_id for p in s.verify() if "non-finite" in p.message}
    assert flagged == set(man["model_id"][~finite])
    r = runner.invoke(app, ["verify", "--store", store])
    assert r.exit_code == 1 and "non-finite" in r.stdout


def test_internal_errors_are_one_line_unless_debugging(store_copy, monkeypatch):
    from bnnctl.store import store as store_mod

    def broken(self, *a, **kw):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(store_mod.Store, "rows", broken)
    monkeypatch.delenv("BNNCTL_DEBUG", raising=False)
    r = runner.invoke(app, ["ls", "--store", str(store_copy)])
    assert r.exit_code == 1
    assert one_line(r) == (
        "error: internal error: RuntimeError: a bug over two lines (re-run with "
        "`bnnctl --debug ...` or BNNCTL_DEBUG=1 for the traceback)"
    )
    r = runner.invoke(app, ["--debug", "ls", "--store", str(store_copy)])
    assert isinstance(r.exception, RuntimeError)  # the traceback is shown
    monkeypatch.setenv("BNNCTL_DEBUG", "1")
    r = runner.invoke(app, ["ls", "--store", str(store_copy)])
    assert isinstance(r.exception, RuntimeError)


def test_missing_optional_dependency_is_an_environment_error(store_copy, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    r = runner.invoke(app, ["ls", "--store", "s3://bucket/store"])
    assert r.exit_code == 3
    assert one_line(r) == "error: store s3://bucket/store needs the s3fs package: pip install s3fs"
