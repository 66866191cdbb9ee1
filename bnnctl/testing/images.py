"""Synthetic image data for tests and benchmarks (no MNIST or CIFAR files here): a random
flat dataset for a given image shape, and MNIST-format IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from bnnctl.data import Dataset, validate


def synthetic_images(
    shape: tuple[int, int, int] = (1, 28, 28), n_train: int = 256, n_test: int = 64, seed: int = 0
) -> Dataset:
    """Random images of ``shape`` (C, H, W) in [0, 1], 10 classes (features flat,
    channel-major, as every dataset holds them; ``image_shape`` is ``shape``)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    return validate(
        "synthetic" + "x".join(map(str, shape)),
        {
            "x_train": rng.random((n_train, d), dtype=np.float32).reshape(n_train, *shape),
            "y_train": rng.integers(0, 10, n_train),
            "x_test": rng.random((n_test, d), dtype=np.float32).reshape(n_test, *shape),
            "y_test": rng.integers(0, 10, n_test),
        },
    )


def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> None:
    """An IDX file of unsigned bytes (MNIST's format), gzipped when ``gz``."""
    raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw += a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def idx_folder(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A synthetic MNIST-format folder (created): random 28x28 images and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return folder
