"""The corruption corpus: hypothesis damages a store the way disks, crashes and other tools
do (flipped bytes, truncated or deleted chunks, dropped, duplicated or edited manifest rows,
an edited arch, layout or schema). ``verify`` must name every damaged model, and reading
the damaged rows (what every command that builds on them does) must refuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
from bnnctl.errors import BnnctlError
from bnnctl.export import export

N_MODELS, BLOCK = 8, 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corrupt") / "s.zarr"
    train(
        Store.open(path, create=True),
        load_dataset("moons"),
        TrainConfig(epochs=1),
        seeds=range(N_MODELS),
        arch=ArchSpec((2, 4, 2)),
        block_size=BLOCK,
    )
    assert Store.open(path).verify() == []
    return path


def rows(store: Path):
    return DeltaTable(str(store / "manifest")).to_pandas().sort_values("model_id")


def rewrite(store: Path, df) -> None:
    write_deltalake(
        str(store / "manifest"),
        pa.Table.from_pandas(df, preserve_index=False),
        mode="overwrite",
        schema_mode="overwrite",
    )


def shard(store: Path, rec) -> Path:
    return store / rec["array"] / "c" / "0" / "0"


# Each corruption takes (store, the target row, data drawn for it) and returns the model ids
# verify must name, and whether reading the target row must refuse.
def flip(store, rec, draw):
    path = shard(store, rec)
    chunk = int(rec["n_params"]) * 4  # float32, uncompressed: chunk k at k * chunk
    offset = int(rec["row"]) * chunk + draw(st.integers(0, chunk - 1))
    data = bytearray(path.read_bytes())
    data[offset] ^= draw(st.integers(1, 255))
    path.write_bytes(bytes(data))
    return {rec["model_id"]}, True


def flip_index(store, rec, draw):
    """A byte of the shard's index (after the chunks): the block is unreadable."""
    path = shard(store, rec)
    data = bytearray(path.read_bytes())
    offset = draw(st.integers(BLOCK * int(rec["n_params"]) * 4, len(data) - 1))
    data[offset] ^= draw(st.integers(1, 255))
    path.write_bytes(bytes(data))
    return "block", True


def truncate(store, rec, draw):
    path = shard(store, rec)
    data = path.read_bytes()
    path.write_bytes(data[: draw(st.integers(0, len(data) - 1))])
    return "block", True


def delete(store, rec, draw):
    shard(store, rec).unlink()
    return "block", True


def drop_row(store, rec, draw):
    df = rows(store)
    rewrite(store, df[df["model_id"] != rec["model_id"]])
    return {rec["model_id"]}, False


def duplicate_row(store, rec, draw):
    df = rows(store)
    write_deltalake(
        str(store / "manifest"),
        pa.Table.from_pandas(df[df["model_id"] == rec["model_id"]], preserve_index=False),
        mode="append",
    )
    return {rec["model_id"]}, True


def edit_column(column, value):
    def edit(store, rec, draw):
        df = rows(store)
        df[column] = df[column].astype(object)
        df.loc[df["model_id"] == rec["model_id"], column] = value(rec)
        rewrite(store, df)
        return {rec["model_id"]}, column in ("sha256", "row", "arch")

    edit.__name__ = f"edit_{column}"
    return edit


def edit_layout(store, rec, draw):
    meta_path = store / rec["array"] / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["layout"] = meta["attributes"]["layout"][::-1]
    meta_path.write_text(json.dumps(meta))
    return "block", False


def drop_column(store, rec, draw):
    column = draw(st.sampled_from(["sha256", "array", "row", "arch", "n_params"]))
    rewrite(store, rows(store).drop(columns=[column]))
    return "all", True


CORRUPTIONS = [
    flip,
    flip_index,
    truncate,
    delete,
    drop_row,
    duplicate_row,
    edit_column("sha256", lambda r: "0" * 64),
    edit_column("row", lambda r: (int(r["row"]) + 1) % BLOCK),
    edit_column("arch", lambda r: '{"kind": "mlp", "widths": [2, -4, 2]}'),
    edit_column("test_acc", lambda r: 1.5),
    edit_layout,
    drop_column,
]


@settings(
    max_examples=48,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_verify_names_every_damaged_model_and_reads_refuse(pristine, tmp_path, data):
    store = tmp_path / f"s{np.random.default_rng().integers(1 << 62)}.zarr"
    shutil.copytree(pristine, store)
    try:
        all_rows = rows(store)
        rec = all_rows.iloc[data.draw(st.integers(0, N_MODELS - 1), label="target")]
        corrupt = data.draw(st.sampled_from(CORRUPTIONS), label="corruption")
        expected, must_refuse = corrupt(store, rec, data.draw)
        block = set(all_rows.loc[all_rows["array"] == rec["array"], "model_id"])
        named = {p.model_id for p in Store.open(store).verify()}
        if expected == "block":
            assert named & block, named
        elif expected == "all":
            assert named, "verify found nothing"
        else:
            assert expected <= named, (expected, named)
        if must_refuse:
            with pytest.raises(BnnctlError):
                s = Store.open(store)
                man = s.manifest()
                target = man[man["model_id"] == rec["model_id"]] if "model_id" in man else man
                export(s, target if len(target) else man, "safetensors", tmp_path / "out")
    finally:
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
