"""Import checkpoints as a population: a folder of ``.safetensors`` and ``.pt``/``.pth``
state_dicts, or ``.tgz``/``.tar.gz`` archives of them (the release format of "A
Symmetry-Aware Exploration of BNN Posteriors": 1,024 float16 safetensors per archive),
or a folder holding such archives.

Everything a user gives is read as data: PyTorch files load with ``weights_only=True``
(arbitrary pickled objects are never loaded); archive members are read in memory with
``tarfile.extractfile`` and never extracted, and a member with an absolute path, a
``..`` part, a link or a device is refused by name. A ``model.`` prefix (Lightning) is
stripped when every tensor has it. The architecture is ``arch`` (an MLP, a conv preset
or ``cnn:`` spec), the ``arch`` metadata of a bnnctl export, or inferred from the names
and shapes (an MLP, or a conv preset whose layout they match); inconsistent files are
refused, naming the first one and the tensor; every model is evaluated on the stated
dataset and committed with ``kind='import'``. Exporting float32 rows and importing them
back gives rows with identical sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

import bnnctl.device as devmod
from bnnctl.arch import PRESETS, AnyArch, ArchSpec, ConvSpec, arch_from_json
from bnnctl.arch.modules import check_state_dict
from bnnctl.data import Dataset
from bnnctl.engines import population as popmod
from bnnctl.errors import DataError, UsageError
from bnnctl.evaluate import check_arch, metrics_of
from bnnctl.evaluate.likelihood import for_task
from bnnctl.store import DTYPES, Store

IMPORT_SUFFIXES = (".safetensors", ".pt", ".pth")
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")
NAME_RE = re.compile(r"^(\d+)\.(weight|bias)$")
#: The prefix of tensor names saved through a Lightning module (stripped when all have it).
MODEL_PREFIX = "model."
#: Largest archive member read into memory (a checkpoint, not a data set).
MAX_MEMBER_BYTES = 1 << 30


# --- import ------------------------------------------------------------------------------


@dataclass
class ImportResult:
    requested: int
    skipped: int
    rows: pd.DataFrame
    arch: AnyArch
    dtype: str


Reader = Callable[[], tuple[dict[str, torch.Tensor], dict[str, str]]]


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to import: ``label`` names it in messages (a file name, or
    ``archive.tgz:member``), ``stem`` makes its model id, ``read`` gives its tensors and
    header metadata."""

    label: str
    stem: str
    read: Reader


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _stem(name: str) -> str:
    """A checkpoint file name without its suffix (``a.b.safetensors`` -> ``a.b``)."""
    return next((name[: -len(s)] for s in IMPORT_SUFFIXES if name.endswith(s)), name)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of one .safetensors or PyTorch state_dict file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
        except Exception as e:
            raise DataError(
                f"{path.name}: not a readable safetensors file ({_first_line(e)})"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for arbitrary objects, others for truncation
        raise DataError(
            f"{path.name}: not a plain PyTorch state_dict file ({_first_line(e)})"
        ) from None
    return _plain_state_dict(obj, path.name), {}


def read_checkpoint_bytes(
    data: bytes, label: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of one checkpoint held in memory (an archive member);
    its kind is that of ``label``'s suffix."""
    if label.endswith(".safetensors"):
        from safetensors.torch import load

        try:
            tensors = load(data)
            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        except Exception as e:
            raise DataError(
                f"{label}: not a readable safetensors file ({_first_line(e)})"
            ) from None
        if not isinstance(meta, dict):
            meta = {}
        return tensors, {str(k): str(v) for k, v in meta.items()}
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(
            f"{label}: not a plain PyTorch state_dict file ({_first_line(e)})"
        ) from None
    return _plain_state_dict(obj, label), {}


def _plain_state_dict(obj: object, label: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise DataError(
            f"{label}: not a plain state_dict (a dict of name -> tensor); got {type(obj).__name__}"
        )
    return dict(obj)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- archives ------------------------------------------------------------------------------


def check_member(archive: str, m: tarfile.TarInfo) -> None:
    """Refuse a member that could not be a plain file inside the archive's own folder:
    an absolute path, a ``..`` part, a link, a device or FIFO (one line naming it)."""
    name = m.name
    parts = [p for p in re.split(r"[/\\]", name) if p]
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in parts:
        raise DataError(f"{archive}: member {name!r} has a '..' path part; refused")
    if m.issym() or m.islnk():
        raise DataError(f"{archive}: member {name!r} is a link (to {m.linkname!r}); refused")
    if m.ischr() or m.isblk() or m.isfifo():
        raise DataError(f"{archive}: member {name!r} is a device or FIFO; refused")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"{archive}: member {name!r} is not a regular file; refused")


def archive_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoint members of a ``.tgz``/``.tar.gz`` archive, read into memory (never
    extracted). Every member is checked (:func:`check_member`) before its bytes are
    used; members that are not checkpoints (a README, macOS ``._`` files) are skipped."""
    out = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                check_member(path.name, m)
                base = PurePosixPath(m.name.replace("\\", "/")).name
                if m.isdir() or not base.endswith(IMPORT_SUFFIXES) or base.startswith("._"):
                    continue
                label = f"{path.name}:{m.name}"
                if m.size > MAX_MEMBER_BYTES:
                    raise DataError(
                        f"{label!r}: {m.size} bytes is too large for a checkpoint "
                        f"(at most {MAX_MEMBER_BYTES})"
                    )
                fh = tar.extractfile(m)
                if fh is None:  # pragma: no cover - check_member lets only files through
                    raise DataError(f"{label!r}: not a regular file")
                data = fh.read()
                out.append(Checkpoint(label, _stem(base), _bytes_reader(data, label)))
            # read to the end, so that gzip checks its CRC and length: a cut or damaged
            # archive is refused even when the members read so far look whole
            while tar.fileobj is not None and tar.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # a fault, not bad data
            raise
        # gzip.BadGzipFile is an OSError without errno: a damaged archive, as the others
        raise DataError(f"{path.name}: not a readable .tgz archive ({_first_line(e)})") from None
    return out


def _bytes_reader(data: bytes, label: str) -> Reader:
    return lambda: read_checkpoint_bytes(data, label)


def _file_reader(path: Path) -> Reader:
    return lambda: read_checkpoint(path)


def collect(source: Path) -> list[Checkpoint]:
    """The checkpoints of ``source``: an archive's members, or a folder's checkpoint files
    and the members of its archives (sorted by name)."""
    if source.is_file() and is_archive(source):
        return archive_checkpoints(source)
    if not source.is_dir():
        raise UsageError(
            f"import source {source} is not a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive"
        )
    out = []
    for p in sorted(source.iterdir()):
        if not p.is_file():
            continue
        if is_archive(p):
            out.extend(archive_checkpoints(p))
        elif p.suffix in IMPORT_SUFFIXES:
            out.append(Checkpoint(p.name, p.stem, _file_reader(p)))
    return out


# --- architectures -------------------------------------------------------------------------


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without one leading ``model.`` when every name has it (Lightning)."""
    if sd and all(k.startswith(MODEL_PREFIX) for k in sd):
        return {k[len(MODEL_PREFIX) :]: v for k, v in sd.items()}
    return sd


def infer_arch(
    sd: dict, source: str, activation: str = "relu", dropout: float | None = None
) -> ArchSpec:
    """The MLP whose layout has exactly these names and shapes ("<i>.weight" [out, in],
    "<i>.bias" [out], Linear indices 0, 2, 4, ... or 0, 3, 6, ... with dropout layers)."""
    matches = {k: NAME_RE.match(k) for k in sd}
    bad = [k for k, m in matches.items() if m is None]
    if bad:
        raise DataError(
            f"{source}: cannot infer an MLP from tensor names like {bad[0]!r} "
            "(expected '0.weight', '0.bias', '2.weight', ...); pass --arch"
        )
    idx = sorted({int(m.group(1)) for m in matches.values() if m is not None})
    weights = [w for i in idx if (w := sd.get(f"{i}.weight")) is not None and w.dim() == 2]
    if len(weights) != len(idx):
        raise DataError(f"{source}: every layer needs a 2-D '<i>.weight'; pass --arch")
    steps = {b - a for a, b in zip(idx, idx[1:], strict=False)}
    step = steps.pop() if len(steps) == 1 else (2 if not steps else None)
    if idx[0] != 0 or step not in (2, 3):
        raise DataError(
            f"{source}: layer indices {idx} are not those of an nn.Sequential MLP; pass --arch"
        )
    if step == 3 and not dropout:
        raise UsageError(f"{source}: layer indices step by 3 (dropout layers): pass --dropout RATE")
    widths = (weights[0].shape[1], *(w.shape[0] for w in weights))
    arch = ArchSpec(widths, activation, (dropout or 0.0) if step == 3 else 0.0)
    check_state_dict(arch, sd, source)
    return arch


def infer_any_arch(
    sd: dict, source: str, activation: str = "relu", dropout: float | None = None
) -> AnyArch:
    """:func:`infer_arch` for MLP names; otherwise the conv preset whose layout has exactly
    these names and shapes (e.g. OptuNet's ``conv1.weight`` ... ``fc2.bias``)."""
    if all(NAME_RE.match(k) for k in sd):
        return infer_arch(sd, source, activation, dropout)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    for name in PRESETS:
        spec = ConvSpec.parse(name)
        if shapes == {t.name: t.shape for t in spec.layout}:
            return spec
    raise DataError(
        f"{source}: cannot infer an architecture from tensor names like {next(iter(sd), '')!r} "
        f"(neither an MLP nor a conv preset: {', '.join(PRESETS)}); pass --arch"
    )


def _numpy(t: torch.Tensor, source: str) -> np.ndarray:
    if not t.is_floating_point():
        raise DataError(f"{source}: tensor of dtype {t.dtype} is not floating point")
    return (t if t.dtype in (torch.float16, torch.float32) else t.float()).numpy()


def _to_row(arch: AnyArch, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The ``[P]`` row of a checked state_dict, in layout order, cast to ``dtype``."""
    return np.concatenate(
        [arrays[t.name].astype(dtype, copy=False).reshape(-1) for t in arch.layout]
    )


def _load_all(
    checkpoints: list[Checkpoint],
    arch: AnyArch | None,
    activation: str,
    dropout: float | None,
    allow_nonfinite: bool = False,
    dtype: str | None = None,
) -> tuple[AnyArch, str, list[np.ndarray]]:
    """Every checkpoint checked against one architecture (given, or from the first) and
    made a row of ``dtype`` (default: float16 when every tensor is float16, else float32)."""
    rows, dtypes = [], set()
    for ck in checkpoints:
        sd, meta = ck.read()
        sd = strip_prefix(sd)
        if arch is None:
            arch = (
                arch_from_json(meta["arch"])
                if "arch" in meta
                else infer_any_arch(sd, ck.label, activation, dropout)
            )
        arrays = {k: _numpy(v, ck.label) for k, v in sd.items()}
        check_state_dict(arch, arrays, ck.label)
        if dtype is not None:  # a cast that overflows float16 is caught as non-finite below
            with np.errstate(over="ignore"):
                arrays = {k: a.astype(dtype, copy=False) for k, a in arrays.items()}
        bad = next((k for k, a in arrays.items() if not np.isfinite(a).all()), None)
        if bad is not None and not allow_nonfinite:
            raise DataError(
                f"{ck.label}: non-finite weights (NaN or Inf) in {bad}"
                + (f" as {dtype}" if dtype is not None else "")
                + "; pass `allow_nonfinite` to import them anyway"
            )
        dtypes |= {a.dtype for a in arrays.values()}
        rows.append(arrays)
    if arch is None:
        raise DataError("no checkpoint files to import")
    if dtype is None:
        dtype = "float16" if dtypes == {np.dtype(np.float16)} else "float32"
    return arch, dtype, [_to_row(arch, sd, np.dtype(dtype)) for sd in rows]


def import_folder(
    store: Store | str,
    folder: str | Path,
    dataset: Dataset,
    arch: AnyArch | None = None,
    population: str | None = None,
    activation: str = "relu",
    dropout: float | None = None,
    block_size: int = 256,
    progress: Callable[[int], None] | None = None,
    allow_nonfinite: bool = False,
    dtype: str | None = None,
    device: str = "auto",
) -> ImportResult:
    """Import every .safetensors / .pt / .pth file of ``folder`` (a folder, possibly
    holding .tgz/.tar.gz archives of such files, or one archive) as a model of population
    ``population`` (default: the folder's or archive's name), evaluated on ``dataset``.
    Checkpoints already imported (same model id ``<population>.<file stem>``) are skipped.
    Every checkpoint is read and checked before anything is written; ``store`` may be a
    path, opened (created) only then. File names must make valid model ids
    (:data:`~bnnctl.engines.population.NAME_PATTERN`), one per model; weights must be
    finite unless ``allow_nonfinite``. Rows are stored as ``dtype`` (float32 | float16;
    default: float16 when every tensor is float16, else float32). The models are evaluated
    on ``device`` (:mod:`bnnctl.device`)."""
    dev = devmod.resolve(device)
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise UsageError(f"`dropout` must be in [0, 1), got {dropout}", "dropout")
    if dtype not in (None, *DTYPES):
        raise UsageError.choice("dtype", dtype, DTYPES)
    folder = Path(folder)
    if arch is not None:
        check_arch(arch, dataset)
    checkpoints = collect(folder)
    if not checkpoints:
        raise UsageError(
            f"{folder} holds no {', '.join(IMPORT_SUFFIXES)} files"
            + ("" if is_archive(folder) else f" (or {'/'.join(ARCHIVE_SUFFIXES)} archives of them)")
        )
    for c in checkpoints:
        if not re.fullmatch(popmod.NAME_PATTERN, c.stem):
            raise DataError(
                f"{c.label!r}: a file name must make a valid model id (letters, digits, "
                "'_', '.', '-', not starting with '.' or '-'); rename the file"
            )
    seen: dict[str, str] = {}
    for c in checkpoints:
        if c.stem in seen:
            raise DataError(
                f"{folder.name}: {seen[c.stem]!r} and {c.label!r} make the same model id "
                f"{c.stem!r} (one model id each)"
            )
        seen[c.stem] = c.label
    base = folder.resolve().name
    base = next((base[: -len(s)] for s in ARCHIVE_SUFFIXES if base.endswith(s)), base)
    name = popmod.check_name(population or popmod.name_from(base, "import"))
    arch, dtype, params = _load_all(checkpoints, arch, activation, dropout, allow_nonfinite, dtype)
    check_arch(arch, dataset)
    if not isinstance(store, Store):
        store = Store.open(store, create=True)
    config = popmod.digest(
        {
            "kind": "import",
            "arch": arch.to_json(),
            "data": dataset.sha256,
            "population": name,
            "dtype": dtype,
        }
    )

    def describe(r: pd.Series) -> str:
        return (
            f"population {name!r} already holds {r['kind']} rows of {r['arch_name']} on "
            f"{r['dataset']} ({r['dtype']}); importing {arch.name} on {dataset.name} ({dtype}) "
            "needs another `population`"
        )

    popmod.claim_population(store, name, config, describe)
    done = set(store.manifest()["model_id"])
    todo = [
        (f"{name}.{c.stem}", c.label, p)
        for c, p in zip(checkpoints, params, strict=True)
        if f"{name}.{c.stem}" not in done
    ]
    committed = []
    if todo:
        store.check_writable(len(todo) * arch.n_params * np.dtype(dtype).itemsize)
        data_path = store.put_dataset(dataset)
        for s in range(0, len(todo), block_size):
            committed.append(
                _commit(
                    store,
                    todo[s : s + block_size],
                    arch,
                    dtype,
                    dataset,
                    name,
                    config,
                    data_path,
                    dev,
                )
            )
            if progress is not None:
                progress(len(todo[s : s + block_size]))
    rows = pd.concat(committed, ignore_index=True) if committed else store.manifest().iloc[0:0]
    store.maybe_compact()
    return ImportResult(len(checkpoints), len(checkpoints) - len(todo), rows, arch, dtype)


def _images(arch: AnyArch, ds: Dataset) -> Dataset:
    """``ds`` with its flat features viewed as ``[N, C, H, W]`` images for a conv net
    (stored channel-major, so this is a reshape, not a copy); ``ds`` itself for an MLP."""
    if not isinstance(arch, ConvSpec):
        return ds
    shape = tuple(arch.input)
    return Dataset(
        ds.name,
        ds.x_train.reshape(-1, *shape),
        ds.y_train,
        ds.x_test.reshape(-1, *shape),
        ds.y_test,
    )


def _commit(store, todo, arch, dtype, ds, name, config, data_path, dev) -> pd.DataFrame:
    ids = [m for m, _, _ in todo]
    params = np.stack([p for _, _, p in todo])
    flat = torch.from_numpy(params.astype(np.float32))
    metrics = metrics_of(arch, for_task(ds.task), flat, _images(arch, ds), dev)
    rows = [
        {
            "model_id": m,
            "kind": "import",
            "method": "import",
            "population": name,
            "seed": None,
            **popmod.data_columns(ds, data_path),
            "parent_id": None,
            "source": label,  # the file (or archive member) the row was read from
            "device": devmod.describe(dev),  # where it was evaluated
            "config_sha256": config,
            **{k: float(v[i]) for k, v in metrics.items()},
        }
        for i, (m, label, _) in enumerate(todo)
    ]
    h = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return store.commit_block(f"params/{name}/import-{h}", params, dtype, arch, rows)
