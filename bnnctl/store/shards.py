"""Whole-shard reads and writes of params arrays, without zarr's per-chunk machinery.

A params array is one shard per block of one chunk per model (Zarr v3's
``sharding_indexed`` codec, uncompressed inner chunks). zarr-python decodes such a shard
chunk by chunk, which on a local disk runs at about a fifth of the speed of reading the
file (``scripts/bench_verify.py``). Readers that want whole shards (``verify``, and
``read_params`` when most of a block is asked for) read each shard file in one request
here and decode it with the sharding spec: the chunks' bytes, then an index of
``(offset, nbytes)`` little-endian uint64 pairs per chunk (``2**64 - 1`` twice for a
chunk never written) followed by its crc32c.

Only the exact layout :meth:`~bnnctl.store.Store.commit_block` writes is decoded here
(:func:`whole_shard_layout`); for any other array the callers read through zarr. Writes
take the same shortcut: :func:`write_array` writes a block's ``zarr.json`` (the metadata
zarr-python writes for that layout, checked against zarr's own in the tests) and its one
shard (:func:`encode_shard`), which zarr would write chunk by chunk at about 1 ms per
chunk (a block of 4,096 tiny models took over a second); creating the array through zarr
cost a few ms of a tiny block's commit besides.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: Index entry of a chunk that was never written.
EMPTY = 2**64 - 1


def whole_shard_layout(meta: dict) -> tuple[int, int] | None:
    """``(rows per shard, n_params)`` when the array metadata ``meta`` (its ``zarr.json``)
    is the layout bnnctl writes: 2-D, float32 or float16, a regular grid of shards of
    whole rows split into one-row chunks, raw little-endian bytes, the index at the end
    with a crc32c; None for anything else. (``meta`` may also be zarr's
    ``metadata.to_dict()``, which has tuples where the JSON has lists.)"""
    meta = _plain(meta)
    try:
        if meta["data_type"] not in ("float32", "float16") or len(meta["shape"]) != 2:
            return None
        rows, width = meta["chunk_grid"]["configuration"]["chunk_shape"]
        (codec,) = meta["codecs"]
        conf = codec["configuration"]
        ok = (
            meta["chunk_grid"]["name"] == "regular"
            and meta["chunk_key_encoding"]
            == {"name": "default", "configuration": {"separator": "/"}}
            and not meta.get("storage_transformers")
            and width == meta["shape"][1]
            and codec["name"] == "sharding_indexed"
            and conf["chunk_shape"] == [1, width]
            and conf["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}]
            and conf["index_codecs"]
            == [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
            and conf.get("index_location", "end") == "end"
        )
    except (KeyError, TypeError, ValueError):
        return None
    return (int(rows), int(width)) if ok else None


def _plain(x: Any) -> Any:
    """``x`` with tuples as lists, as JSON reads it."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return [_plain(v) for v in x] if isinstance(x, list | tuple) else x


#: The ``zarr.json`` of a Zarr v3 group without attributes (as zarr-python writes it).
GROUP_JSON = json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2)


def array_metadata(rows: int, width: int, dtype: str, attributes: dict) -> dict:
    """The ``zarr.json`` zarr-python writes for a params array of one shard of ``rows``
    one-row chunks of ``width`` values, uncompressed (``create_array(shape=(rows, width),
    chunks=(1, width), shards=(rows, width), compressors=None)``): the layout
    :func:`whole_shard_layout` accepts. Uncompressed: trained float32 weights compress by
    only ~7-10 % (scripts/bench_store.py), and decompression would slow every read."""
    raw = {"name": "bytes", "configuration": {"endian": "little"}}
    sharding = {
        "chunk_shape": [1, width],
        "codecs": [raw],
        "index_codecs": [raw, {"name": "crc32c"}],
        "index_location": "end",
    }
    return {
        "shape": [rows, width],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [rows, width]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
        "attributes": attributes,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def write_array(fs: Any, array_root: str, stored: np.ndarray, attributes: dict) -> None:
    """Write the 2-D array ``stored`` (C-contiguous little-endian float32 or float16) as a
    new Zarr v3 array of one shard at ``array_root`` (a folder of ``fs`` where nothing
    is; its parent groups are the caller's): ``zarr.json`` first, so that an array cut
    short by a crash is still found (and removed) by ``gc``, then the shard."""
    rows, width = stored.shape
    dtype = str(stored.dtype.newbyteorder("="))
    meta = array_metadata(rows, width, dtype, attributes)
    # exist_ok=False: on a local disk, an array already there is refused, never rewritten
    fs.makedirs(f"{array_root}/c/0", exist_ok=False)
    fs.pipe_file(f"{array_root}/zarr.json", json.dumps(meta, indent=2).encode())
    fs.pipe_file(f"{array_root}/c/0/0", encode_shard(stored))


def encode_shard(stored: np.ndarray) -> bytes:
    """The shard file of a whole 2-D array of one-row chunks: the rows back to back, then
    the index (every chunk present, in order) and its crc32c. ``stored`` must already be
    C-contiguous little-endian (as commit_block stores it)."""
    import google_crc32c

    rows, width = stored.shape
    if not (stored.flags.c_contiguous and stored.dtype.byteorder in "<="):
        raise ValueError("a shard is encoded from a C-contiguous little-endian array")
    chunk = width * stored.dtype.itemsize
    index = np.empty((rows, 2), dtype="<u8")
    index[:, 0] = np.arange(rows, dtype=np.uint64) * np.uint64(chunk)
    index[:, 1] = chunk
    crc = google_crc32c.value(index.tobytes()).to_bytes(4, "little")
    return b"".join([stored.tobytes(), index.tobytes(), crc])


def decode_shard(raw: bytes | None, rows: int, width: int, dtype: str, fill: float) -> np.ndarray:
    """The ``[rows, width]`` values of one shard file's bytes (None: no file, every chunk
    is the fill value). Raises ValueError when the file is not a shard of this shape."""
    import google_crc32c  # zarr's own dependency for this checksum

    if raw is None:
        return np.full((rows, width), fill, dtype=dtype)
    dt = np.dtype(dtype).newbyteorder("<")
    chunk = width * dt.itemsize
    index_bytes = 16 * rows + 4
    if len(raw) < index_bytes:
        raise ValueError(f"shard of {len(raw)} bytes is shorter than its index")
    index = raw[-index_bytes:-4]
    if google_crc32c.value(index) != int.from_bytes(raw[-4:], "little"):
        raise ValueError("shard index checksum mismatch")
    pairs = np.frombuffer(index, dtype="<u8").reshape(rows, 2)
    data = np.frombuffer(raw, dtype=np.uint8, count=len(raw) - index_bytes)
    expected = np.arange(rows, dtype=np.uint64) * np.uint64(chunk)
    if (pairs[:, 0] == expected).all() and (pairs[:, 1] == chunk).all():
        # chunks in order and back to back (as commit_block writes them): one view
        return data[: rows * chunk].view(dt).reshape(rows, width).astype(dtype, copy=False)
    out = np.full((rows, width), fill, dtype=dtype)
    for r, (offset, nbytes) in enumerate(pairs.tolist()):
        if offset == EMPTY and nbytes == EMPTY:
            continue
        if nbytes != chunk or offset + nbytes > data.size:
            raise ValueError(f"chunk {r} of the shard has a bad index entry")
        out[r] = data[offset : offset + nbytes].view(dt)
    return out


def read_whole(fs: Any, array_root: str, meta: dict) -> np.ndarray | None:
    """Every row of the params array at ``array_root`` (its folder; ``meta`` its
    ``zarr.json``), a shard file per request; None when its layout is not
    :func:`whole_shard_layout`'s (read it through zarr then)."""
    layout = whole_shard_layout(meta)
    if layout is None:
        return None
    rows, width = layout
    n = int(meta["shape"][0])
    fill = float(meta.get("fill_value") or 0.0)
    parts = []
    for s in range(-(-n // rows)):
        try:
            raw = fs.cat_file(f"{array_root}/c/{s}/0")
        except FileNotFoundError:
            raw = None
        parts.append(decode_shard(raw, rows, width, meta["data_type"], fill))
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out[:n]
