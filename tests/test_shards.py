"""Whole-shard reads (bnnctl.store.shards) against zarr's own reads of the same arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnctl.store.shards import decode_shard, encode_shard, read_whole, whole_shard_layout


def make(tmp_path, name, rows, width, shard_rows, dtype, written, **kw):
    arr = zarr.create_array(
        zarr.storage.LocalStore(tmp_path),
        name=name,
        shape=(rows, width),
        dtype=dtype,
        chunks=(1, width),
        shards=(shard_rows, width),
        compressors=kw.pop("compressors", None),
        **kw,
    )
    data = np.random.default_rng(rows * 7 + width).standard_normal((rows, width)).astype(dtype)
    for r in written:  # only these rows: the others stay unwritten chunks (fill value)
        arr[r] = data[r]
    meta = json.loads((tmp_path / name / "zarr.json").read_text())
    return arr, meta


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    width=st.integers(1, 50),
    shard_rows=st.integers(1, 16),
    dtype=st.sampled_from(["float32", "float16"]),
    data=st.data(),
)
def test_read_whole_equals_zarr(tmp_path_factory, rows, width, shard_rows, dtype, data):
    tmp = tmp_path_factory.mktemp("s")
    written = data.draw(st.sets(st.integers(0, rows - 1)))
    arr, meta = make(tmp, "a", rows, width, shard_rows, dtype, sorted(written))
    assert whole_shard_layout(meta) == (shard_rows, width)
    got = read_whole(LocalFileSystem(), str(tmp / "a"), meta)
    want = arr[:]
    assert got is not None and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_other_layouts_are_left_to_zarr(tmp_path):
    _, zstd = make(tmp_path, "z", 4, 8, 4, "float32", [0], compressors=zarr.codecs.ZstdCodec())
    assert whole_shard_layout(zstd) is None
    zarr.create_array(zarr.storage.LocalStore(tmp_path), name="u", shape=(4, 8), dtype="f4")
    meta = json.loads((tmp_path / "u" / "zarr.json").read_text())
    assert whole_shard_layout(meta) is None and read_whole(LocalFileSystem(), "", meta) is None
    assert whole_shard_layout({"node_type": "group"}) is None


def test_damaged_shards_are_refused(tmp_path):
    _, meta = make(tmp_path, "a", 8, 6, 8, "float32", range(8))
    raw = (tmp_path / "a" / "c" / "0" / "0").read_bytes()
    flipped = bytearray(raw)
    flipped[-10] ^= 1  # inside the index: its checksum fails
    with pytest.raises(ValueError, match="checksum"):
        decode_shard(bytes(flipped), 8, 6, "float32", 0.0)
    with pytest.raises(ValueError, match="shorter"):
        decode_shard(raw[:20], 8, 6, "float32", 0.0)
    # a flipped data byte is read as it is (the rows' sha256 catch it)
    flipped = bytearray(raw)
    flipped[0] ^= 1
    out = decode_shard(bytes(flipped), 8, 6, "float32", 0.0)
    assert out.tobytes()[1:] == raw[1 : 8 * 6 * 4]


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    width=st.integers(1, 50),
    dtype=st.sampled_from(["float32", "float16"]),
)
def test_encoded_shards_read_back_through_zarr(tmp_path_factory, rows, width, dtype):
    """What commit_block writes is what zarr reads (and what read_whole reads)."""
    tmp = tmp_path_factory.mktemp("w")
    arr = zarr.create_array(
        zarr.storage.LocalStore(tmp),
        name="a",
        shape=(rows, width),
        dtype=dtype,
        chunks=(1, width),
        shards=(rows, width),
        compressors=None,
    )
    data = np.random.default_rng(rows + width).standard_normal((rows, width)).astype(dtype)
    data[0] = 0.0  # an all-fill-value row: zarr itself would not write that chunk
    (tmp / "a" / "c" / "0").mkdir(parents=True)
    (tmp / "a" / "c" / "0" / "0").write_bytes(encode_shard(np.ascontiguousarray(data)))
    np.testing.assert_array_equal(arr[:], data)
    np.testing.assert_array_equal(arr[rows - 1], data[rows - 1])  # one chunk by its index
    meta = json.loads((tmp / "a" / "zarr.json").read_text())
    np.testing.assert_array_equal(read_whole(LocalFileSystem(), str(tmp / "a"), meta), data)


def test_encode_refuses_big_endian_or_strided():
    a = np.zeros((3, 4), dtype=">f4")
    with pytest.raises(ValueError):
        encode_shard(a)
    with pytest.raises(ValueError):
        encode_shard(np.zeros((3, 8), dtype="<f4")[:, ::2])
