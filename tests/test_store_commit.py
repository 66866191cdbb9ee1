"""Committing blocks: the array bnnctl writes by hand is the array zarr would write, the
manifest commit inserts each model_id once even against a stale view or a racing writer,
and several blocks commit in one transaction."""

from __future__ import annotations

import json
import multiprocessing
import sys
from datetime import datetime, timezone
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
import pytest
import zarr
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings

from bnnctl import ArchSpec, Store
from bnnctl.errors import EnvironmentFault
from bnnctl.store import Block, shards
from bnnctl.store import table as delta
from bnnctl.store.schema import ARROW_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_scale import block_rows  # noqa: E402  (the rows the benchmark commits)


@given(
    rows=st.integers(1, 9),
    width=st.integers(1, 40),
    dtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**31),
    attrs=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
)
@settings(max_examples=30, deadline=None)
def test_hand_written_array_is_what_zarr_writes_and_reads(
    tmp_path_factory, rows, width, dtype, seed, attrs
):
    tmp = tmp_path_factory.mktemp("arr")
    bits = np.random.default_rng(seed).integers(0, 2**32, size=(rows, width), dtype=np.uint32)
    # every bit pattern of the dtype, NaNs and infinities included
    stored = bits.astype(np.uint16).view("<f2") if dtype == "float16" else bits.view("<f4")
    shards.write_array(LocalFileSystem(), str(tmp / "ours"), stored, attrs)
    ours = zarr.open_array(str(tmp / "ours"), mode="r")
    back = np.asarray(ours[:])
    assert back.dtype == np.dtype(dtype) and back.shape == (rows, width)
    assert back.tobytes() == stored.tobytes()
    assert dict(ours.attrs) == attrs
    # zarr's own array of the same layout: the same metadata, byte for byte the same shard
    theirs = zarr.create_array(
        str(tmp / "theirs"),
        shape=(rows, width),
        dtype=dtype,
        chunks=(1, width),
        shards=(rows, width),
        compressors=None,
        attributes=attrs,
    )
    theirs[:] = stored
    meta = json.loads((tmp / "ours" / "zarr.json").read_text())
    assert meta == json.loads((tmp / "theirs" / "zarr.json").read_text())
    assert (tmp / "ours/c/0/0").read_bytes() == (tmp / "theirs/c/0/0").read_bytes()
    assert shards.whole_shard_layout(meta) == (rows, width)


def test_an_array_is_never_written_over(tmp_path):
    fs = LocalFileSystem()
    shards.write_array(fs, str(tmp_path / "a"), np.zeros((2, 3), "<f4"), {})
    before = (tmp_path / "a" / "c/0/0").read_bytes()
    with pytest.raises(FileExistsError):
        shards.write_array(fs, str(tmp_path / "a"), np.ones((2, 3), "<f4"), {})
    assert (tmp_path / "a" / "c/0/0").read_bytes() == before


def test_committed_arrays_sit_in_zarr_groups(tmp_path):
    s = Store.open(tmp_path / "s.zarr", create=True)
    arch = ArchSpec((2, 1))
    out = s.commit_block("params/p/b0", np.ones((3, arch.n_params)), "float32", arch,
                         block_rows("p", 0, 3))  # fmt: skip
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert isinstance(g["params"], zarr.Group) and isinstance(g["params/p"], zarr.Group)
    (path,) = set(out["array"])
    arr = g[path]
    assert isinstance(arr, zarr.Array) and arr.attrs["arch"] == json.loads(arch.to_json())
    np.testing.assert_array_equal(arr[:], np.ones((3, arch.n_params)))
    assert [k for k, _ in g["params/p"].arrays()] == [path.rsplit("/", 1)[1]]


def _rows(ids: list[str]) -> pa.Table:
    """Manifest rows with these ids (and ``row`` their position), every required column
    filled."""
    fill = {pa.string(): "x", pa.int64(): 0, pa.float64(): 0.0, pa.bool_(): False}
    filled = {f.name: fill.get(f.type) for f in ARROW_SCHEMA if not f.nullable}
    filled["created_at"] = datetime.now(timezone.utc)
    return pa.Table.from_pylist(
        [{**filled, "model_id": i, "row": k} for k, i in enumerate(ids)], schema=ARROW_SCHEMA
    )


def _ids(uri: str) -> list[str]:
    return DeltaTable(uri).to_pyarrow_table(columns=["model_id"])["model_id"].to_pylist()


def test_delta_rs_commits_with_no_retries_only_on_the_version_read(tmp_path):
    """What :func:`bnnctl.store.table.commit` relies on: with ``max_commit_retries=0``,
    delta-rs writes version v + 1 of a table read at v, or fails; it never lands a
    blind append on a newer version that another writer made."""
    uri = str(tmp_path / "m")
    delta.create(uri)
    stale, other = DeltaTable(uri), DeltaTable(uri)
    write_deltalake(other, _rows(["a"]), mode="append")
    with pytest.raises(CommitFailedError):
        write_deltalake(
            stale, _rows(["b"]), mode="append",
            commit_properties=CommitProperties(max_commit_retries=0),
        )  # fmt: skip
    assert _ids(uri) == ["a"] and DeltaTable(uri).version() == 1


def test_a_stale_writer_inserts_only_ids_not_committed(tmp_path):
    uri = str(tmp_path / "m")
    delta.create(uri)
    stale = DeltaTable(uri)  # read before the other writer commits
    assert delta.commit(uri, _rows(["a", "b"]))["model_id"].to_pylist() == ["a", "b"]
    inserted = delta.commit(stale, _rows(["b", "c", "a", "d", "c"]))
    assert inserted["model_id"].to_pylist() == ["c", "d"]  # a repeated id: its first row
    assert inserted["row"].to_pylist() == [1, 3]
    assert sorted(_ids(uri)) == ["a", "b", "c", "d"]
    assert delta.commit(stale, _rows(["a", "d"])).num_rows == 0


def _race(uri: str, ids: list[str], seed: int, out) -> None:
    rng = np.random.default_rng(seed)
    dt, mine = DeltaTable(uri), []
    for _ in range(12):
        pick = sorted(rng.choice(ids, size=6, replace=False).tolist())
        mine += delta.commit(dt, _rows(pick))["model_id"].to_pylist()
    out.put(mine)


def test_racing_writers_insert_each_id_once(tmp_path):
    """Three processes commit random overlapping sets of 40 ids at once: every id in
    the table once, and each insertion reported by exactly one writer."""
    uri = str(tmp_path / "m")
    delta.create(uri)
    ids = [f"p.{i:03d}" for i in range(40)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(uri, ids, s, out)) for s in range(3)]
    for p in procs:
        p.start()
    reported = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    table = _ids(uri)
    assert len(table) == len(set(table))
    assert sorted(sum(reported, [])) == sorted(table)


def test_commit_blocks_commits_several_blocks_in_one_transaction(tmp_path):
    s = Store.open(tmp_path / "s.zarr", create=True)
    arch = ArchSpec((2, 3, 1))
    rng = np.random.default_rng(0)
    first = rng.normal(size=(4, arch.n_params))
    s.commit_block("params/p/b0", first, "float32", arch, block_rows("p", 0, 4))
    version = s.table().version()
    params = [rng.normal(size=(n, arch.n_params)) for n in (4, 3, 5)]
    blocks = [
        Block("params/p/b0", params[0], "float32", arch, block_rows("p", 0, 4)),  # committed
        Block("params/p/b4", params[1], "float16", arch, block_rows("p", 2, 3)),  # 2 new
        Block("params/p/b7", params[2], "float32", arch, block_rows("p", 4, 5)),  # 1 repeated
    ]
    out = s.commit_blocks(blocks)
    assert s.table().version() == version + 1  # one transaction
    assert [list(o["model_id"]) for o in out] == [
        [], ["p.0000004"], ["p.0000005", "p.0000006", "p.0000007", "p.0000008"]
    ]  # fmt: skip
    assert list(out[1]["row"]) == [2] and list(out[2]["row"]) == [1, 2, 3, 4]
    man = Store.open(s.url).manifest().set_index("model_id")
    assert len(man) == 9 and man.index.is_unique
    back = s.read_params(man.reset_index())
    want = {f"p.{i:07d}": first[i] for i in range(4)}
    want["p.0000004"] = params[1][2].astype(np.float16)
    want |= {f"p.{4 + i:07d}": params[2][i] for i in range(1, 5)}
    for i, mid in enumerate(man.index):
        np.testing.assert_array_equal(back[i], np.float32(want[mid]))
    assert s.verify() == [] and len(s.orphan_arrays()) == 1  # the first block's second try
    assert s.commit_blocks([]) == []


def test_a_fault_before_the_commit_removes_every_array_of_the_batch(tmp_path, monkeypatch):
    s = Store.open(tmp_path / "s.zarr", create=True)
    arch = ArchSpec((2, 1))
    before = DeltaTable(s.table_uri).version()

    def full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(delta.Writer, "commit", full)
    blocks = [Block(f"params/p/b{i}", np.ones((2, 3)), "float32", arch, block_rows("p", 2 * i, 2))
              for i in range(3)]  # fmt: skip
    with pytest.raises(EnvironmentFault, match="committing blocks p/b0, p/b1, p/b2"):
        s.commit_blocks(blocks)
    assert s.orphan_arrays() == []
    assert [p.name for p in (tmp_path / "s.zarr/params/p").iterdir()] == ["zarr.json"]
    assert DeltaTable(s.table_uri).version() == before


def test_a_writer_checkpoints_its_log(tmp_path):
    s = Store.open(tmp_path / "s.zarr", create=True)
    arch = ArchSpec((2, 1))
    for i in range(delta.CHECKPOINT_EVERY):
        s.commit_block(f"params/p/b{i}", np.ones((1, 3)), "float32", arch, block_rows("p", i, 1))
    log = tmp_path / "s.zarr/manifest/_delta_log"
    assert len(list(log.glob("*.checkpoint.parquet"))) == 1
    assert len(Store.open(s.url).manifest()) == delta.CHECKPOINT_EVERY


def test_a_fault_after_the_commit_point_keeps_the_committed_arrays(tmp_path, monkeypatch):
    """A fault raised once the rows are in (as delta-rs's post-commit work may): the
    arrays the committed rows name stay, and the store verifies."""
    s = Store.open(tmp_path / "s.zarr", create=True)
    arch = ArchSpec((2, 1))
    commit = delta.Writer.commit

    def commit_then_fail(self, rows):
        commit(self, rows)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(delta.Writer, "commit", commit_then_fail)
    with pytest.raises(EnvironmentFault, match="committed before the fault; re-run"):
        s.commit_block("params/p/b0", np.ones((2, 3)), "float32", arch, block_rows("p", 0, 2))
    st = Store.open(s.url)
    assert len(st.manifest()) == 2 and st.verify() == [] and st.orphan_arrays() == []
