"""bnnctl: build and query datasets of thousands of neural-network checkpoints.

The library is the product; the ``bnnctl`` command is a thin layer over it::

    from bnnctl import Store, ArchSpec, load_dataset, TrainConfig, train
    store = Store.open("bnnctl.zarr", create=True)
    train(store, load_dataset("digits"), TrainConfig(epochs=5), seeds=range(8))
    store.manifest().query("test_acc > 0.9")

Packages, one concern each (data flows down this list, never up):

- :mod:`bnnctl.arch`: architectures as data; batched forward/backward; ``nn.Module`` twins.
- :mod:`bnnctl.data`: datasets (embedded and user files).
- :mod:`bnnctl.store`: the Zarr + Parquet store, manifest, ``--where``, verify.
- :mod:`bnnctl.evaluate`: likelihoods, metrics, batched outputs of stacked models.
- :mod:`bnnctl.symmetry`: permutation, scaling and sign symmetries; weight matching.
- :mod:`bnnctl.samplers`: posterior samplers, one module per method.
- :mod:`bnnctl.engines`: train, sample, canonicalize and import, each ``block -> rows``.
- :mod:`bnnctl.stats`, :mod:`bnnctl.export`: read a store, measure, plot, export.
- :mod:`bnnctl.cli`: the ``bnnctl`` command.

Names below are imported on first use, so ``import bnnctl`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bnnctl.errors import BnnctlError
from bnnctl.version import __version__

if TYPE_CHECKING:
    from bnnctl.arch import ArchSpec, ConvSpec, parse_arch
    from bnnctl.data import Dataset, load_dataset
    from bnnctl.engines.config import TrainConfig
    from bnnctl.engines.train import train
    from bnnctl.store import FORMAT_VERSION, Store

_LAZY = {
    "ArchSpec": "bnnctl.arch",
    "ConvSpec": "bnnctl.arch",
    "parse_arch": "bnnctl.arch",
    "Dataset": "bnnctl.data",
    "load_dataset": "bnnctl.data",
    "FORMAT_VERSION": "bnnctl.store",
    "Store": "bnnctl.store",
    "TrainConfig": "bnnctl.engines.config",
    "train": "bnnctl.engines.train",
}

__all__ = [
    "FORMAT_VERSION",
    "ArchSpec",
    "BnnctlError",
    "ConvSpec",
    "Dataset",
    "Store",
    "TrainConfig",
    "__version__",
    "load_dataset",
    "parse_arch",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bnnctl' has no attribute {name!r}")
