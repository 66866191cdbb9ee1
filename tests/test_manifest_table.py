"""The manifest as a Delta Lake table: peers read it, time travel, compaction, the upgrade
from format 1, and writers racing on one population without doubling a row."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from deltalake import DeltaTable
from typer.testing import CliRunner

from bnnctl.cli.common import app
from bnnctl.errors import FormatVersionError, UsageError
from bnnctl.store import Store
from bnnctl.store.migrate import migrate
from bnnctl.store.schema import ARROW_SCHEMA

runner = CliRunner()
TINY = ["--dataset", "moons", "--arch", "mlp:2-1", "--epochs", "1"]


def bnnctl(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bnnctl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_peers_read_the_manifest_with_deltalake(trained_store):
    df = DeltaTable(str(trained_store / "manifest")).to_pandas()
    ours = Store.open(trained_store).manifest()
    assert sorted(df["model_id"]) == sorted(ours["model_id"]) and len(df) == 8
    assert set(ARROW_SCHEMA.names) <= set(df.columns)


def test_as_of_reads_the_manifest_as_it_was(store_copy):
    st = Store.open(store_copy)
    version = st.table().version()
    r = runner.invoke(
        app, ["train", "--seeds", "2", "--seed-start", "50", "--epochs", "5", "--arch",
              "mlp:64-32-32-10", "--lr", "0.01", "--block-size", "4", "--store", str(store_copy),
              "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(Store.open(store_copy).manifest()) == 10
    old = Store.open(store_copy, as_of=version)
    assert len(old.manifest()) == 8 and old.verify() == []
    r = runner.invoke(app, ["ls", "--store", str(store_copy), "--as-of", str(version), "-f", "ids"])
    assert r.exit_code == 0 and len(r.stdout.split()) == 8
    with pytest.raises(UsageError, match="no manifest version"):
        Store.open(store_copy, as_of=version + 99).manifest()
    with pytest.raises(Exception, match="read-only"):
        old.commit_block("params/x/b0", old.read_params(old.manifest().head(1)), "float32",
                         None, [])  # fmt: skip


def test_compact_merges_files_and_keeps_rows(store_copy, digits):
    from bnnctl import ArchSpec, TrainConfig, train

    # one more commit, so there are at least two files (the fixture's two blocks may
    # have shared one commit: in-process training batches fast blocks)
    arch = ArchSpec((64, 32, 32, 10))
    train(store_copy, digits, TrainConfig(epochs=5, lr=1e-2), seeds=[8], arch=arch)
    st = Store.open(store_copy)
    before = st.manifest().sort_values("model_id").reset_index(drop=True)
    files = len(st.table().file_uris())
    assert files >= 2  # one per commit
    r = runner.invoke(app, ["compact", "--store", str(store_copy), "--vacuum", "0"])
    assert r.exit_code == 0 and f"manifest files {files} -> 1" in r.stderr, r.output
    st = Store.open(store_copy)
    assert len(st.table().file_uris()) == 1
    after = st.manifest().sort_values("model_id").reset_index(drop=True)
    assert after.drop(columns="created_at").equals(before.drop(columns="created_at"))
    assert st.verify() == []


def _as_format_1(path) -> list[str]:
    """Rewrite a format-2 store as format 1 had it: one Parquet file per block."""
    st = Store.open(path)
    table = pa.Table.from_pandas(st.manifest(), preserve_index=False).cast(ARROW_SCHEMA)
    shutil.rmtree(path / "manifest")
    (path / "manifest").mkdir()
    names = []
    for array in sorted(set(table["array"].to_pylist())):
        block = table.filter(pa.compute.equal(table["array"], array))
        name = f"train-digits-{array.rsplit('/', 1)[1]}.parquet"
        pq.write_table(block, path / "manifest" / name)
        names.append(name)
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["bnnctl"] = {"format_version": 1, "created_by": "0.1.0"}
    return names


def test_migrate_upgrades_format_1_in_place_with_nothing_lost(store_copy):
    ids = sorted(Store.open(store_copy).manifest()["model_id"])
    names = _as_format_1(store_copy)
    with pytest.raises(FormatVersionError, match="run `bnnctl migrate"):
        Store.open(store_copy)
    r = runner.invoke(app, ["ls", "--store", str(store_copy)])
    assert r.exit_code == 1 and "bnnctl migrate" in r.stderr
    r = runner.invoke(app, ["migrate", "--store", str(store_copy)])
    assert r.exit_code == 0 and "8 rows" in r.stderr, r.output
    st = Store.open(store_copy)
    assert sorted(st.manifest()["model_id"]) == ids and st.verify() == []
    assert sorted(p.name for p in (store_copy / "manifest.v1").glob("*.parquet")) == names
    assert migrate(store_copy)["changed"] is False  # running it again changes nothing


def test_migrate_finishes_after_a_crash_between_the_renames(store_copy):
    ids = sorted(Store.open(store_copy).manifest()["model_id"])
    _as_format_1(store_copy)
    # as if killed after staging and the first rename: manifest.v1 exists, manifest doesn't
    from bnnctl.store import table as delta
    from bnnctl.store.migrate import read_v1

    st = Store.open(store_copy, migrating=True)
    rows = read_v1(st, "manifest")
    delta.create(str(store_copy / "manifest.v2"))
    delta.commit(str(store_copy / "manifest.v2"), rows.cast(ARROW_SCHEMA))
    (store_copy / "manifest").rename(store_copy / "manifest.v1")
    (store_copy / "manifest.v2").rename(store_copy / "manifest")
    assert migrate(store_copy)["changed"] is True
    st = Store.open(store_copy)
    assert sorted(st.manifest()["model_id"]) == ids and st.verify() == []


@pytest.mark.parametrize(
    "second",
    [
        ["--seeds", "48", "--seed-start", "16"],  # overlapping seed ranges
        ["--seeds", "64", "--block-size", "16"],  # the same seeds in other blocks
    ],
    ids=["overlap", "block-size"],
)
def test_two_writers_racing_on_one_population_commit_each_model_once(tmp_path, second):
    s = str(tmp_path / "race.zarr")
    Store.open(s, create=True)
    first = ["train", *TINY, "--store", s, "--quiet", "--seeds", "64", "--block-size", "32"]
    procs = [bnnctl(*first), bnnctl("train", *TINY, "--store", s, "--quiet", *second)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    st = Store.open(s)
    df = st.manifest()
    assert df["model_id"].is_unique and sorted(df["seed"]) == list(range(64))
    assert st.verify() == []
    st.gc(grace_seconds=0)  # the losing writer's arrays are named by no row
    assert st.orphan_arrays() == [] and Store.open(s).verify() == []


def test_racing_writers_with_different_settings_leave_one_configuration(tmp_path):
    """Two runs of one population with different learning rates, started together: the
    first to claim the population wins it (bnnctl.store.claims); the other stops with a
    conflict (exit 2) before training, never writing over the winner."""
    s = str(tmp_path / "race.zarr")
    Store.open(s, create=True)
    common = ["train", *TINY, "--store", s, "--quiet", "--seeds", "64", "--block-size", "16"]
    procs = [bnnctl(*common, "--lr", "0.001"), bnnctl(*common, "--lr", "0.002")]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], errors
    assert any(
        "being written with another configuration" in e or "was trained with lr" in e
        for e in errors
    ), errors
    st = Store.open(s)
    df = st.manifest()
    assert df["model_id"].is_unique and df["config_sha256"].nunique() == 1
    assert sorted(df["seed"]) == list(range(64)) and st.verify() == []


def test_two_canonicalize_runs_at_once_write_each_canonical_row_once(store_copy):
    """Both runs see the same rows to do and race on every block: each canonical row is
    committed once, both runs end cleanly, and the losing arrays are only orphans."""
    s = str(store_copy)
    procs = [bnnctl("canonicalize", "--store", s, "--quiet") for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        assert err.decode() == ""
    st = Store.open(s)
    df = st.manifest()
    canon = df[df["kind"] == "canonical"]
    assert df["model_id"].is_unique and len(canon) == 8
    assert sorted(canon["parent_id"]) == sorted(df.loc[df["kind"] == "train", "model_id"])
    assert st.verify() == []
    st.gc(grace_seconds=0)
    assert st.orphan_arrays() == [] and Store.open(s).verify() == []


def test_a_manifest_written_before_a_column_was_added_reads_and_grows_it(tmp_path):
    """``source`` joined the schema after format 2 (as ``device`` did): a table without it
    reads it as null, and the next commit adds it (null in the older rows) without losing
    a row. (The rewrite drops a column that is null in every row, so no row changes.)"""
    from deltalake import write_deltalake

    from bnnctl import ArchSpec, TrainConfig, load_dataset, train

    url = tmp_path / "s.zarr"
    train(url, load_dataset("moons"), TrainConfig(epochs=1), range(4), ArchSpec((2, 1)))
    old = DeltaTable(str(url / "manifest")).to_pyarrow_table().drop_columns(["source"])
    write_deltalake(str(url / "manifest"), old, mode="overwrite", schema_mode="overwrite")
    assert "source" not in DeltaTable(str(url / "manifest")).schema().to_arrow().names
    st = Store.open(url)
    assert st.manifest()["source"].isna().all() and len(st.manifest()) == 4
    assert st.verify() == []
    train(url, load_dataset("moons"), TrainConfig(epochs=1), range(4, 8), ArchSpec((2, 1)))
    assert "source" in DeltaTable(str(url / "manifest")).schema().to_arrow().names
    st = Store.open(url)
    assert sorted(st.manifest()["seed"]) == list(range(8)) and st.verify() == []
    assert (st.manifest()["device"] == "cpu").all()  # training's device, on every row
