"""The store against the interchange contract: plain pandas/zarr/numpy readers, the JSON
Schema, round trips, format versions, and faults that verify must catch."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator

from bnnctl import FORMAT_VERSION, ArchSpec, Store
from bnnctl.errors import FormatVersionError, StoreError, StoreNotFoundError
from bnnctl.store.schema import SCHEMA_FILES, render

ROOT = Path(__file__).resolve().parents[1]


def test_schema_files_are_current():
    for name, make in SCHEMA_FILES.items():
        assert (ROOT / "schemas" / name).read_text() == render(make), f"regenerate schemas/{name}"


@pytest.mark.parametrize("arch", ["mlp:64-8-10", "optunet", "lenet5", "cifar_small"])
def test_arch_schema_accepts_every_kind_and_refuses_malformed_specs(arch):
    from bnnctl.arch import parse_arch

    schema = json.loads((ROOT / "schemas" / "arch.schema.json").read_text())
    validator = Draft202012Validator(schema)
    spec = json.loads(parse_arch(arch).to_json())
    assert not list(validator.iter_errors(spec))
    broken = {**spec, "kind": "resnet"}
    assert list(validator.iter_errors(broken))
    if spec["kind"] == "cnn":
        bad_layer = {**spec, "layers": [*spec["layers"], {"op": "batchnorm"}]}
        assert list(validator.iter_errors(bad_layer))


def test_manifest_readable_by_pandas_and_conforms_to_schema(trained_store):
    df = pd.read_parquet(trained_store / "manifest")  # the contract: one call reads it whole
    assert len(df) == 8 and df["model_id"].is_unique
    schema = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())
    validator = Draft202012Validator(schema)
    for rec in json.loads(df.to_json(orient="records", date_format="iso")):
        errors = list(validator.iter_errors(rec))
        assert not errors, errors[0].message
    assert set(df["kind"]) == {"train"} and df["parent_id"].isna().all()
    assert (df["created_at"].dt.tz is not None) and (df["test_acc"] > 0.8).all()


def test_plain_zarr_numpy_reevaluation_matches_manifest(trained_store):
    """Anyone can re-evaluate a checkpoint from the store with zarr + numpy alone."""
    df = pd.read_parquet(trained_store / "manifest")
    root = zarr.open_group(str(trained_store), mode="r")
    for rec in df.itertuples():
        arr = root[rec.array]
        row = arr[rec.row]
        tensors = {
            t["name"]: row[t["offset"] : t["offset"] + int(np.prod(t["shape"]))].reshape(t["shape"])
            for t in arr.attrs["layout"]
        }
        data = root[rec.data]
        h = data["x_test"][:]
        names = [n for n in tensors if n.endswith(".weight")]
        for i, n in enumerate(names):
            h = h @ tensors[n].T + tensors[n.replace("weight", "bias")]
            if i < len(names) - 1:
                h = np.maximum(h, 0)
        acc = (h.argmax(1) == data["y_test"][:]).mean()
        assert abs(acc - rec.test_acc) < 1e-6
        import hashlib

        assert hashlib.sha256(row.astype("<f4").tobytes()).hexdigest() == rec.sha256


@given(
    m=st.integers(1, 5),
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    dtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=15, deadline=None)
def test_commit_then_read_round_trip(tmp_path_factory, m, widths, dtype, seed):
    store = Store.open(tmp_path_factory.mktemp("rt") / "s.zarr", create=True)
    arch = ArchSpec(tuple(widths))
    params = np.random.default_rng(seed).normal(size=(m, arch.n_params)).astype(np.float32)
    rows = [
        dict(
            model_id=f"x.{i}",
            kind="import",
            method="test",
            population="x",
            dataset="d",
            task="classification",
            data=None,
            data_sha256="0" * 64,
            config_sha256="c",
        )
        for i in range(m)
    ]
    store.commit_block("params/x/b0", params, dtype, arch, rows)
    man = Store.open(store.url).manifest()
    back = store.read_params(man.iloc[::-1])
    np.testing.assert_array_equal(back[::-1], params.astype(dtype).astype(np.float32))
    assert store.verify() == []


def test_refuses_other_format_versions_and_non_stores(tmp_path, store_copy):
    g = zarr.open_group(str(store_copy), mode="r+")
    g.attrs["bnnctl"] = {"format_version": FORMAT_VERSION + 1}
    with pytest.raises(FormatVersionError, match=f"format version {FORMAT_VERSION + 1}"):
        Store.open(store_copy)
    g.attrs["bnnctl"] = {"format_version": True}  # a bool is not a version
    with pytest.raises(FormatVersionError, match="version True"):
        Store.open(store_copy)
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(StoreError, match="regular file"):
        Store.open(tmp_path / "file.zarr", create=True)
    with pytest.raises(StoreNotFoundError):
        Store.open(tmp_path / "absent.zarr")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="a")
    with pytest.raises(StoreError, match="not a bnnctl store"):
        Store.open(tmp_path / "foreign.zarr")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Store.open(tmp_path / "full", create=True)


def test_unwritable_store_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        # root ignores permissions: then use a path no one can create
        target = "/proc/bnnctl-test.zarr" if os.access(ro, os.W_OK) else str(ro / "s.zarr")
        with pytest.raises(StoreError, match="cannot"):
            Store.open(target, create=True)
    finally:
        ro.chmod(0o700)


def test_verify_catches_corrupted_shard(store_copy):
    store = Store.open(store_copy)
    rec = store.manifest().iloc[0]
    shard = next((store_copy / rec["array"]).rglob("c/*/*"))
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = Store.open(store_copy).verify()
    assert problems and all("sha256 mismatch" in p.message for p in problems)
    assert rec["model_id"] in {p.model_id for p in problems} or rec["row"] != 0


def test_truncated_manifest_file_is_a_clear_error(store_copy):
    f = sorted((store_copy / "manifest").glob("*.parquet"))[0]
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(StoreError, match="manifest table is unreadable"):
        Store.open(store_copy).manifest()
    problems = Store.open(store_copy).verify()
    assert [p.where for p in problems] == ["manifest"]


def test_committed_arrays_are_never_written_again_nor_ids_committed_twice(store_copy):
    """A block committed again under the same array name goes to a fresh array; the
    rows already committed are not committed twice, and the first array is intact."""
    store = Store.open(store_copy)
    man = store.manifest()
    rec = man.iloc[0]
    arch = ArchSpec.from_json(rec["arch"])
    before = (store_copy / rec["array"]).stat().st_mtime_ns, store.read_params(man)
    row = {c: rec[c] for c in ("model_id", "kind", "method", "population", "dataset", "task")}
    row |= {"data_sha256": rec["data_sha256"], "config_sha256": rec["config_sha256"]}
    again = store.commit_block(rec["array"], np.zeros((1, arch.n_params)), "float32", arch, [row])
    assert again.empty  # the id was committed already: nothing new
    after = Store.open(store_copy)
    assert after.manifest()["model_id"].tolist() == man["model_id"].tolist()
    assert (store_copy / rec["array"]).stat().st_mtime_ns == before[0]
    np.testing.assert_array_equal(after.read_params(after.manifest()), before[1])
    assert after.verify() == [] and len(after.orphan_arrays()) == 1


def test_orphan_arrays_are_listed_but_are_not_problems(store_copy):
    from typer.testing import CliRunner

    from bnnctl.cli.common import app

    store = Store.open(store_copy)
    store.group.create_array("params/digits/s999998-999999", shape=(2, 3), dtype="float32")
    assert store.orphan_arrays() == ["params/digits/s999998-999999"]
    assert store.verify() == []
    r = CliRunner().invoke(app, ["verify", "--store", str(store_copy)])
    assert (
        r.exit_code == 0 and "params/digits/s999998-999999 is named by no manifest row" in r.output
    )


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_no_read_leaves_the_store_with_corrupted_weights(store_copy, tmp_path, damage):
    """A flipped byte or a deleted shard (which zarr would read back as zeros) is refused
    by every read that leaves the store, naming the model: export, stats re-evaluation,
    canonicalize, sample --from all go through read_params."""
    from typer.testing import CliRunner

    from bnnctl.cli.common import app

    store = Store.open(store_copy)
    rec = store.manifest().iloc[0]
    shard = next((store_copy / rec["array"]).rglob("c/*/*"))
    if damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[4 * 7] ^= 0xFF  # a byte of the block's first row
        shard.write_bytes(bytes(raw))
    else:
        shard.unlink()
    first = Store.open(store_copy).manifest().query(f"array == '{rec['array']}'")
    with pytest.raises(StoreError, match="do not match their sha256"):
        Store.open(store_copy).read_params(first)
    runner = CliRunner()
    for args in (
        ["export", "--where", "seed >= 0", str(tmp_path / f"out-{damage}")],
        ["stats", "--ensemble"],
        ["canonicalize"],
        ["sample", "--method", "laplace", "--from", "seed >= 0", "--samples", "1"],
    ):
        r = runner.invoke(app, [*args, "--store", str(store_copy)])
        assert r.exit_code == 1 and "do not match their sha256" in r.stderr, (args, r.output)
        assert r.stderr.count("\n") == 1
    assert not (tmp_path / f"out-{damage}").exists()


@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 7),
            st.sampled_from(["model_id", "kind", "sha256", "data_sha256", "row", "n_params",
                             "seed", "test_acc", "arch"]),
            st.sampled_from([None, "", "x", "import", "canonical", "A" * 64, "a" * 64, -1, 0, 3,
                             2.5]),
        ),
        max_size=6,
    )
)  # fmt: skip
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_schema_mask_flags_every_row_the_json_schema_rejects(trained_store, edits):
    """verify validates only the rows rows_to_validate flags: that must be every row the
    JSON Schema rejects, whatever is edited into the manifest."""
    import pyarrow as pa

    from bnnctl.store.schema import ARROW_SCHEMA, json_schema, rows_to_validate

    records = Store.open(trained_store).manifest().to_dict("records")
    for i, col, value in edits:
        if isinstance(value, str) == (ARROW_SCHEMA.field(col).type == pa.string()) or value is None:
            records[i][col] = value
    schema = pa.schema([f.with_nullable(True) for f in ARROW_SCHEMA])
    table = pa.Table.from_pylist(
        [{k: (None if v is pd.NA or v != v else v) for k, v in r.items()} for r in records],
        schema=schema,
    )
    mask = rows_to_validate(table).to_pylist()
    validator = Draft202012Validator(json_schema())
    for flagged, rec in zip(mask, table.to_pylist(), strict=True):
        rec["created_at"] = rec["created_at"].isoformat() if rec["created_at"] else None
        if any(True for _ in validator.iter_errors(rec)):
            assert flagged, rec


def test_put_dataset_tolerates_a_concurrent_or_crashed_writer(tmp_path):
    """Two writers storing the same dataset at once (the race a CI run caught: the second
    found the group the first had just created), and a copy a crashed writer left half
    done, both end as the dataset, marked complete."""
    from bnnctl import load_dataset

    ds = load_dataset("moons")
    st = Store.open(tmp_path / "s.zarr", create=True)
    path = f"data/{ds.sha256[:16]}"
    # the other writer got as far as the group and x_train (complete), no mark yet
    g = st.group.require_group(path)
    g.create_array(name="x_train", data=ds.x_train, chunks=ds.x_train.shape)
    # and a crashed one left y_test with the wrong values
    g.create_array(name="y_test", data=ds.y_test + 1, chunks=ds.y_test.shape)
    assert Store.open(tmp_path / "s.zarr").put_dataset(ds) == path
    back = Store.open(tmp_path / "s.zarr").load_data(path)
    assert back.sha256 == ds.sha256
    assert zarr.open_group(str(tmp_path / "s.zarr" / path), mode="r").attrs["sha256"] == ds.sha256
