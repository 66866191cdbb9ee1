"""Import a folder of ``.safetensors`` and ``.pt``/``.pth`` state_dicts as a population.

PyTorch files are read with ``weights_only=True``: arbitrary pickled objects are never
loaded. The architecture is inferred from the names and shapes (or the ``arch`` metadata
of a bnnctl export) when it is not given; inconsistent files are refused, naming the
first one; every model is evaluated on the stated dataset and committed with
``kind='import'``. Exporting float32 rows and importing them back gives rows with
identical sha256.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bnnctl.arch import ArchSpec, modules
from bnnctl.data import Dataset
from bnnctl.engines import population as popmod
from bnnctl.errors import DataError, UsageError
from bnnctl.evaluate import check_arch, metrics_of
from bnnctl.evaluate.likelihood import for_task
from bnnctl.store import Store

IMPORT_SUFFIXES = (".safetensors", ".pt", ".pth")
NAME_RE = re.compile(r"^(\d+)\.(weight|bias)$")


# --- import ------------------------------------------------------------------------------


@dataclass
class ImportResult:
    requested: int
    skipped: int
    rows: pd.DataFrame
    arch: ArchSpec
    dtype: str


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
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise DataError(
            f"{path.name}: not a plain state_dict (a dict of name -> tensor); "
            f"got {type(obj).__name__}"
        )
    return dict(obj), {}


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


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
    modules.check_state_dict(arch, sd, source)
    return arch


def _numpy(t: torch.Tensor, source: str) -> np.ndarray:
    if not t.is_floating_point():
        raise DataError(f"{source}: tensor of dtype {t.dtype} is not floating point")
    return (t if t.dtype in (torch.float16, torch.float32) else t.float()).numpy()


def _load_all(
    files: list[Path],
    arch: ArchSpec | None,
    activation: str,
    dropout: float | None,
    allow_nonfinite: bool = False,
):
    """Every file's state_dict checked against one architecture (given, or from the first)."""
    rows, dtypes = [], set()
    for path in files:
        sd, meta = read_checkpoint(path)
        if arch is None:
            arch = (
                ArchSpec.from_json(meta["arch"])
                if "arch" in meta
                else infer_arch(sd, path.name, activation, dropout)
            )
        arrays = {k: _numpy(v, path.name) for k, v in sd.items()}
        modules.check_state_dict(arch, arrays, path.name)
        bad = next((k for k, a in arrays.items() if not np.isfinite(a).all()), None)
        if bad is not None and not allow_nonfinite:
            raise DataError(
                f"{path.name}: non-finite weights (NaN or Inf) in {bad}; "
                "pass `allow_nonfinite` to import them anyway"
            )
        dtypes |= {a.dtype for a in arrays.values()}
        rows.append(arrays)
    if arch is None:
        raise DataError("no checkpoint files to import")
    dtype = "float16" if dtypes == {np.dtype(np.float16)} else "float32"
    return arch, dtype, [modules.to_row(arch, sd, np.dtype(dtype)) for sd in rows]


def import_folder(
    store: Store | str,
    folder: str | Path,
    dataset: Dataset,
    arch: ArchSpec | None = None,
    population: str | None = None,
    activation: str = "relu",
    dropout: float | None = None,
    block_size: int = 256,
    progress: Callable[[int], None] | None = None,
    allow_nonfinite: bool = False,
) -> ImportResult:
    """Import every .safetensors / .pt / .pth file of ``folder`` as a model of population
    ``population`` (default: the folder's name), evaluated on ``dataset``. Files already
    imported (same model id ``<population>.<file stem>``) are skipped. Every file is read
    and checked before anything is written; ``store`` may be a path, opened (created)
    only then. File names must make valid model ids (:data:`~bnnctl.engines.population.
    NAME_PATTERN`); weights must be finite unless ``allow_nonfinite``."""
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise UsageError(f"`dropout` must be in [0, 1), got {dropout}", "dropout")
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"import source {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix in IMPORT_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{folder} holds no {', '.join(IMPORT_SUFFIXES)} files")
    stems = [p.stem for p in files]
    for p in files:
        if not re.fullmatch(popmod.NAME_PATTERN, p.stem):
            raise DataError(
                f"{p.name!r}: a file name must make a valid model id (letters, digits, "
                "'_', '.', '-', not starting with '.' or '-'); rename the file"
            )
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup:
        raise DataError(f"{folder}: two files are named {dup!r} (one model id each)")
    name = popmod.check_name(population or popmod.name_from(folder.resolve().name, "import"))
    arch, dtype, params = _load_all(files, arch, activation, dropout, allow_nonfinite)
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

    popmod.existing_rows(store, name, config, describe)
    done = set(store.manifest()["model_id"])
    todo = [
        (f"{name}.{s}", p) for s, p in zip(stems, params, strict=True) if f"{name}.{s}" not in done
    ]
    committed = []
    if todo:
        store.check_writable(len(todo) * arch.n_params * np.dtype(dtype).itemsize)
        data_path = store.put_dataset(dataset)
        for s in range(0, len(todo), block_size):
            committed.append(
                _commit(
                    store, todo[s : s + block_size], arch, dtype, dataset, name, config, data_path
                )
            )
            if progress is not None:
                progress(len(todo[s : s + block_size]))
    rows = pd.concat(committed, ignore_index=True) if committed else store.manifest().iloc[0:0]
    store.maybe_compact()
    return ImportResult(len(files), len(files) - len(todo), rows, arch, dtype)


def _commit(store, todo, arch, dtype, ds, name, config, data_path) -> pd.DataFrame:
    ids = [m for m, _ in todo]
    params = np.stack([p for _, p in todo])
    metrics = metrics_of(arch, for_task(ds.task), torch.from_numpy(params.astype(np.float32)), ds)
    rows = [
        {
            "model_id": m,
            "kind": "import",
            "method": "import",
            "population": name,
            "seed": None,
            **popmod.data_columns(ds, data_path),
            "parent_id": None,
            "config_sha256": config,
            **{k: float(v[i]) for k, v in metrics.items()},
        }
        for i, m in enumerate(ids)
    ]
    h = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return store.commit_block(f"params/{name}/import-{h}", params, dtype, arch, rows)
