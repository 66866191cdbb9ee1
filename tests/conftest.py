"""Shared fixtures: small stores trained once per test session."""

from __future__ import annotations

import pytest
import torch

from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = usefixtures("one_thread")``): small
    problems, where OpenMP barriers stall on a busy machine, and bit-for-bit checks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory, digits):
    """A store with 8 small digits MLPs (mlp:64-32-32-10, relu, Adam lr 1e-2, 5 epochs: ~90 %
    test accuracy), population 'digits'. Session-scoped and shared: tests must not write to
    it (copy it first)."""
    path = tmp_path_factory.mktemp("stores") / "trained.zarr"
    store = Store.open(path, create=True)
    train(
        store,
        digits,
        TrainConfig(epochs=5, lr=1e-2),
        seeds=range(8),
        arch=ArchSpec((64, 32, 32, 10)),
        block_size=4,
    )
    return path


@pytest.fixture
def store_copy(trained_store, tmp_path):
    """A private, writable copy of ``trained_store``."""
    import shutil

    dst = tmp_path / "copy.zarr"
    shutil.copytree(trained_store, dst)
    return dst
