"""bnnctl: build and query datasets of thousands of neural-network checkpoints.

The library is the product; the `bnnctl` command is a thin layer over it::

    from bnnctl import Store, ArchSpec, load_dataset, TrainConfig, train
    store = Store.open("bnnctl.zarr", create=True)
    train(store, load_dataset("digits"), TrainConfig(epochs=5), seeds=range(8))
    store.manifest().query("test_acc > 0.9")
"""

__version__ = "0.1.0"

#: Version of the on-disk store format this code reads and writes.
FORMAT_VERSION = 1

from bnnctl.arch import ArchSpec  # noqa: E402
from bnnctl.data import Dataset, load_dataset  # noqa: E402
from bnnctl.errors import BnnctlError  # noqa: E402
from bnnctl.store import Store  # noqa: E402
from bnnctl.train import TrainConfig, train  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "ArchSpec",
    "BnnctlError",
    "Dataset",
    "Store",
    "TrainConfig",
    "load_dataset",
    "train",
    "__version__",
]
