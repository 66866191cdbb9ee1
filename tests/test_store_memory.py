"""memory:// stores: every command on a store that lives in this process only (its arrays
in fsspec's memory filesystem, its manifest in a temporary directory removed at exit).
The commands run in-process (a memory store is gone when its process ends)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import fsspec
import numpy as np
import pytest
from typer.testing import CliRunner

from bnnctl import ArchSpec, Store
from bnnctl.cli.common import app

runner = CliRunner()
TINY = ["--dataset", "moons", "--arch", "mlp:2-4-2", "--epochs", "1"]


@pytest.fixture
def mem():
    url = f"memory://bnnctl-test/{uuid.uuid4().hex[:8]}.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def ok(*args: str, input: str | None = None):
    r = runner.invoke(app, list(args), input=input)
    assert r.exit_code == 0, r.output
    return r


def test_every_command_on_a_memory_store(mem, tmp_path):
    r = ok("train", *TINY, "--seeds", "6", "--block-size", "2", "--store", mem)
    assert "trained 6 models" in r.stderr
    # the arrays are in fsspec's memory filesystem, under the store's path
    assert fsspec.filesystem("memory").glob(mem.removeprefix("memory:/") + "/params/*/*/zarr.json")
    r = ok("ls", "--store", mem, "--where", "seed < 3", "--format", "ids")
    assert r.stdout.split() == [f"moons.00000{k}" for k in range(3)]
    assert "ok: 6 checkpoints" in ok("verify", "--store", mem).stderr
    ok("canonicalize", "--store", mem, "--quiet")
    ok("sample", "--method", "sghmc", "--chains", "2", "--samples", "2", "--burn-in", "2",
       "--dataset", "moons", "--arch", "mlp:2-4-2", "--quiet", "--store", mem)  # fmt: skip
    man = Store.open(mem).manifest()
    assert sorted(man["kind"].value_counts().items()) == [
        ("canonical", 6), ("sample", 4), ("train", 6)
    ]  # fmt: skip
    ok("stats", "--store", mem, "--where", "kind == 'train'")
    ok("export", "--store", mem, "--where", "kind == 'train'", str(tmp_path / "out"))
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 6
    ok("import", str(tmp_path / "out"), "--dataset", "moons", "--store", mem)
    assert "manifest files" in ok("compact", "--store", mem).stderr
    ok("migrate", "--store", mem)
    ok("gc", "--store", mem, "--grace", "0")
    st = Store.open(mem)
    assert st.verify() == [] and st.orphan_arrays() == []
    assert len(st.manifest()) == 22 and st.manifest()["model_id"].is_unique
    # the same weights as the rows that were exported and imported again
    rows = st.manifest().sort_values("created_at")
    train = rows[rows["kind"] == "train"].sort_values("seed")
    imported = rows[rows["kind"] == "import"].sort_values("model_id")
    np.testing.assert_array_equal(st.read_params(train), st.read_params(imported))


def test_a_memory_store_removed_and_made_again_starts_empty(mem):
    arch = ArchSpec((2, 1))
    rows = [{"model_id": "a", "kind": "import", "method": "m", "population": "p",
             "dataset": "d", "task": "classification", "data_sha256": "0" * 64,
             "config_sha256": "c"}]  # fmt: skip
    Store.open(mem, create=True).commit_block("params/p/b", np.ones((1, 3)), "float32", arch, rows)
    assert len(Store.open(mem).manifest()) == 1
    fsspec.filesystem("memory").rm(mem, recursive=True)
    assert Store.open(mem, create=True).manifest().empty


def test_a_memory_store_lives_in_its_process_only(mem):
    code = (
        "import sys; from bnnctl import Store; s = Store.open(sys.argv[1], create=True); "
        "print(s.table_uri)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, mem], capture_output=True, text=True, check=True
    )
    table = r.stdout.strip()
    assert "bnnctl-memory-" in table and not fsspec.filesystem("file").exists(table)
    r = runner.invoke(app, ["ls", "--store", mem])
    assert r.exit_code == 1 and "no bnnctl store" in r.stderr


def test_memory_store_with_a_scheduler_is_refused_before_any_work():
    """Dask workers are other processes: a memory:// store is out of their reach."""
    res = CliRunner().invoke(
        app,
        ["train", "--store", "memory://sched.zarr", "--scheduler", "local:1", "--seeds", "2"],
    )
    assert res.exit_code == 2, res.output
    assert "memory:// store lives in this process only" in res.output
