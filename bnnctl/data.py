"""Datasets: the embedded defaults and the user's own files, validated.

A :class:`Dataset` holds the exact float32 features and targets that models are trained
and evaluated on. Integer targets mean classification (labels 0..C-1), real targets mean
regression. The store keeps these arrays so that any checkpoint can be re-evaluated
with plain zarr + numpy.

Datasets: ``digits`` and ``moons`` (embedded), or the user's files: an ``.npz``, a folder
of MNIST IDX files, or ``cifar10``: a folder of the CIFAR-10 binary version (images kept
flat, channel-major, as conv nets take them). Nothing is downloaded or unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from bnnctl.errors import DataError, UsageError, one_line

BUILTIN = ("digits", "digits28", "moons")
#: Datasets read from the user's copy with ``--data FOLDER`` (never downloaded).
FROM_FOLDER = ("cifar10",)
SPLITS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features flat ``[N, F]`` (images channel-major), labels or targets. ``image_shape``
    ``(C, H, W)``, for images, is how a store keeps them (``[N, C, H, W]``) and what a
    conv net's input must be; it is not part of :attr:`sha256` (the flat arrays are)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int] | None = None

    @property
    def task(self) -> str:
        return "classification" if self.y_train.dtype.kind in "iu" else "regression"

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int | None:
        if self.task != "classification":
            return None
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def n_outputs(self) -> int:
        n_classes = self.n_classes  # None exactly when the task is regression
        return n_classes if n_classes is not None else self.y_train.shape[1]

    @cached_property
    def sha256(self) -> str:
        """Content hash of the four arrays (shape, dtype and bytes)."""
        h = hashlib.sha256()
        for key in SPLITS:
            a = np.ascontiguousarray(getattr(self, key))
            h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in SPLITS}

    def default_arch_widths(self) -> tuple[int, ...]:
        """A sensible MLP for the data: digits gets DESIGN's 64-128-128-10; 2-D toy sets a
        small net; anything else two hidden layers of 128."""
        d, k = self.n_features, self.n_outputs
        if self.name == "digits":
            return (64, 128, 128, 10)
        if d <= 4:
            return (d, 16, 16, k)
        return (d, 128, 128, k)


def validate(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    """Check shapes, dtypes, labels and finiteness; return float32 features (flat) and
    int64 labels (classification) or float32 ``[N, d]`` targets (regression). Features
    given as images, ``[N, C, H, W]`` or ``[N, H, W]`` (one channel), keep that shape as
    the dataset's ``image_shape``."""
    missing = [k for k in SPLITS if k not in arrays]
    if missing:
        raise DataError(f"{name}: missing arrays {', '.join(missing)} (need {', '.join(SPLITS)})")
    shapes = {np.shape(arrays[k])[1:] for k in ("x_train", "x_test")}
    image = shapes.pop() if len(shapes) == 1 else None
    image_shape = (1, *image) if image and len(image) == 2 else image
    out = {}
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.dtype.kind not in "fiub" or x.ndim < 2 or x.shape[0] == 0:
            raise DataError(
                f"{name}: x_{split} must be a non-empty numeric array [N, features...], "
                f"got dtype {x.dtype} shape {x.shape}"
            )
        x = x.reshape(x.shape[0], -1).astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{name}: x_{split} contains NaN or Inf")
        if y.shape[0] != x.shape[0]:
            raise DataError(
                f"{name}: x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}"
            )
        if y.dtype.kind in "iu":
            if y.ndim != 1:
                raise DataError(f"{name}: integer labels y_{split} must be 1-D, got {y.shape}")
            y = y.astype(np.int64)
        elif y.dtype.kind == "f":
            if y.ndim not in (1, 2):
                raise DataError(f"{name}: y_{split} must be [N] or [N, d], got {y.shape}")
            y = y.reshape(y.shape[0], -1).astype(np.float32)
            if not np.isfinite(y).all():
                raise DataError(f"{name}: y_{split} contains NaN or Inf")
        else:
            raise DataError(
                f"{name}: y_{split} must hold integer labels or real targets, got dtype {y.dtype}"
            )
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    if out["x_train"].shape[1] != out["x_test"].shape[1]:
        raise DataError(
            f"{name}: x_train has {out['x_train'].shape[1]} features, x_test "
            f"{out['x_test'].shape[1]}"
        )
    ytr, yte = out["y_train"], out["y_test"]
    if (ytr.dtype.kind == "i") != (yte.dtype.kind == "i"):
        raise DataError(f"{name}: y_train and y_test must both be labels or both be real")
    if ytr.dtype.kind == "i":
        if ytr.min() < 0 or yte.min() < 0:
            raise DataError(f"{name}: labels must be integers 0..C-1; found a negative label")
        n_classes = int(ytr.max()) + 1
        if yte.max() >= n_classes:
            raise DataError(
                f"{name}: y_test has label {int(yte.max())} out of range: y_train has "
                f"classes 0..{n_classes - 1}"
            )
        if n_classes < 2:
            raise DataError(f"{name}: classification needs at least two classes")
    elif ytr.shape[1] != yte.shape[1]:
        raise DataError(f"{name}: y_train and y_test have different target widths")
    if image_shape is not None and len(image_shape) != 3:
        image_shape = None  # flat features, or not images
    return Dataset(name, **out, image_shape=image_shape)


def load_dataset(name: str | None = "digits", path: str | Path | None = None) -> Dataset:
    """The embedded ``digits`` (default) or ``moons``, or the user's data at ``path``:
    an ``.npz`` with x_train, y_train, x_test, y_test, a folder of MNIST IDX files, or a
    folder of the CIFAR-10 binary version (``data_batch_1.bin`` ... ``data_batch_5.bin``,
    ``test_batch.bin``; named ``cifar10``; its parent holding ``cifar-10-batches-bin/``
    will do). The pickled Python version of CIFAR-10 is refused: data is never unpickled."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            cifar = cifar_folder(p)
            if cifar is not None or name == "cifar10":
                return validate(name or "cifar10", read_cifar10(cifar or p))
            _refuse_pickles(p)
            return validate(name or p.name, _read_idx_folder(p))
        if not p.exists():
            raise DataError(f"data file {p} does not exist")
        if p.name in CIFAR_FILES:
            raise DataError(f"{p} is one CIFAR-10 batch; pass the folder that holds all six")
        _refuse_pickles(p)
        return validate(name or p.stem, _read_npz(p))
    if name == "digits":
        return _digits()
    if name == "digits28":
        return _digits28()
    if name == "moons":
        return _moons()
    if name == "cifar10":
        raise UsageError(
            "cifar10 is read from your copy of its binary version (cifar-10-binary.tar.gz, "
            "extracted): pass --data FOLDER holding data_batch_1.bin ... test_batch.bin"
        )
    raise UsageError(
        f"unknown dataset {name!r}; built in: {', '.join(BUILTIN)}; from --data FOLDER: "
        f"{', '.join(FROM_FOLDER)} (or MNIST IDX files); or use --data PATH"
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.2, stratify=y, random_state=0)
    return validate("digits", {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte})


def _digits28() -> Dataset:
    """A stand-in for MNIST that ships with bnnctl: the ``digits`` split, each 8x8 image
    upsampled to 20x20 (bilinear) and centred in 28x28 with a 4-pixel border, as MNIST
    digits sit in their frame; values in [0, 1]. So 28x28 conv nets (``optunet``) run on
    a fresh machine; real MNIST comes from ``--data``."""
    from scipy.ndimage import zoom

    d = _digits()

    def to28(x: np.ndarray) -> np.ndarray:
        img = zoom(x.reshape(-1, 8, 8), (1, 2.5, 2.5), order=1).clip(0.0, 1.0)
        return np.pad(img, ((0, 0), (4, 4), (4, 4))).reshape(len(x), 1, 28, 28)

    return validate(
        "digits28",
        {
            "x_train": to28(d.x_train),
            "y_train": d.y_train,
            "x_test": to28(d.x_test),
            "y_test": d.y_test,
        },
    )


def _moons() -> Dataset:
    """400 training points of two interleaving half-moons (as in Laurent et al.'s Fig. 1)."""
    from sklearn.datasets import make_moons

    xtr, ytr = make_moons(n_samples=400, noise=0.1, random_state=0)
    xte, yte = make_moons(n_samples=400, noise=0.1, random_state=1)
    return validate("moons", {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte})


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, pickle and format errors all mean the same to a user
        raise DataError(f"cannot read {p} as an .npz file: {e}") from None


IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(p: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), as in MNIST and Fashion-MNIST."""
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{p} is not a readable gzip file: {one_line(str(e))}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{p} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{p}: IDX header is cut off ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    n = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != n:
        raise DataError(f"{p}: IDX header says {n} bytes of data, file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        hits = [folder / f"{stem}{ext}" for ext in ("", ".gz")]
        hits += [folder / f"{stem.replace('-idx', '.idx')}{ext}" for ext in ("", ".gz")]
        found = next((h for h in hits if h.exists()), None)
        if found is None:
            raise DataError(f"{folder}: no {stem}[.gz] (expected MNIST-format IDX files)")
        a = read_idx(found)
        arrays[key] = a.astype(np.float32) / 255.0 if key.startswith("x") else a.astype(np.int64)
    return arrays


# --- CIFAR-10, binary version ------------------------------------------------------------

CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_FILES = (*CIFAR_TRAIN, CIFAR_TEST)
#: One record: a label byte, then 32x32 red, 32x32 green, 32x32 blue bytes (row-major).
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_SHAPE = (3, 32, 32)
#: Names of the pickled Python version (and common pickle suffixes): refused, never read.
PICKLE_NAMES = (*(f.removesuffix(".bin") for f in CIFAR_FILES), "batches.meta")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".p")


def cifar_folder(folder: Path) -> Path | None:
    """The folder holding the CIFAR-10 binary batches: ``folder`` itself or its
    ``cifar-10-batches-bin`` (as the archive extracts); None when neither has any."""
    for f in (folder, folder / "cifar-10-batches-bin"):
        if any((f / n).is_file() for n in CIFAR_FILES):
            return f
    return None


def _refuse_pickles(p: Path) -> None:
    """Refuse the pickled Python version of CIFAR-10 clearly, by name: a folder holding
    ``data_batch_1`` ... or ``cifar-10-batches-py/``, or such a file (or a ``.pkl``)."""
    if p.is_file():
        hit = p if p.name in PICKLE_NAMES or p.suffix in PICKLE_SUFFIXES else None
    else:
        names = [p / n for n in PICKLE_NAMES] + [p / "cifar-10-batches-py"]
        hit = next((q for q in names if q.exists()), None)
    if hit is not None:
        raise DataError(
            f"{hit} is pickled Python data (CIFAR-10's python version); bnnctl never "
            "unpickles data: use the binary version (data_batch_1.bin ... test_batch.bin)"
        )


def read_cifar_batch(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: pixels ``[N, 3072]`` uint8 (channel-major: 1,024 red,
    then green, then blue, each 32x32 row-major) and labels ``[N]`` int64 in 0..9."""
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p.parent}: no {p.name} (expected the CIFAR-10 binary version)") from None
    if not raw or len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{p}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD:,}-byte CIFAR-10 "
            "records (1 label byte + 3,072 pixel bytes); truncated?"
        )
    rec = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(
            f"{p}: label {int(labels.max())} is not a CIFAR-10 class (0..9); CIFAR-100's "
            "binary format has two label bytes and is not read as cifar10"
        )
    return rec[:, 1:], labels


def read_cifar10(folder: Path) -> dict[str, np.ndarray]:
    """The CIFAR-10 binary version in ``folder`` (all five training batches and the test
    batch): pixels as float32 / 255, flat and channel-major (C, H, W = 3, 32, 32, as
    ``cifar_small`` takes them), labels int64."""
    out = {}
    for split, files in (("train", CIFAR_TRAIN), ("test", (CIFAR_TEST,))):
        parts = [read_cifar_batch(folder / f) for f in files]
        x = np.concatenate([a for a, _ in parts]).astype(np.float32)
        x /= 255.0
        x = x.reshape(len(x), 3, 32, 32)  # the records' own layout: channel-major planes
        out[f"x_{split}"], out[f"y_{split}"] = x, np.concatenate([b for _, b in parts])
    return out
