"""Export a selection of checkpoints to files others can load, and import such files.

Export formats (``out`` is always a folder, written under a temporary name next to it and
renamed into place when complete, so a crash never leaves a half-written export):

- ``safetensors``: one ``<model_id>.safetensors`` per model, tensors named as the PyTorch
  state_dict ("0.weight", "0.bias", ...), header metadata ``model_id``, ``arch`` (JSON),
  ``sha256`` (of the stored row), ``dtype``; plus ``metadata.parquet`` (the manifest rows
  and a ``file`` column) and a ``README.md`` model card (Hugging Face style front matter).
  ``dtype='float16'`` halves the size, as Laurent et al.'s released dataset.
- ``npz``: one ``models.npz`` with ``params [n, P]``, ``model_id [n]``, ``sha256 [n]``,
  ``arch`` and ``layout`` (JSON strings); loads with ``np.load(allow_pickle=False)``.
- ``torch``: one ``<model_id>.pt`` state_dict per model (tensors only), which loads into
  ``bnnctl.models.build(arch)`` and into a plain ``nn.Sequential`` of Linear/activation
  (/Dropout) layers with ``torch.load(path, weights_only=True)``.

Import reads a folder of ``.safetensors`` and ``.pt``/``.pth`` state_dicts (PyTorch files
with ``weights_only=True``: arbitrary pickled objects are never loaded), infers the
architecture from the names and shapes (or the ``arch`` metadata of a bnnctl export) when
it is not given, refuses inconsistent files naming the first one, evaluates every model
on the stated dataset and commits them with ``kind='import'``. Exporting float32 rows and
importing them back gives rows with identical sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bnnctl import __version__, models
from bnnctl.arch import ArchSpec
from bnnctl.data import Dataset
from bnnctl.errors import ConflictError, DataError, UsageError
from bnnctl.likelihood import for_task
from bnnctl.store import Store
from bnnctl.train import check_arch, metrics_of

FORMATS = ("safetensors", "npz", "torch")
IMPORT_SUFFIXES = (".safetensors", ".pt", ".pth")
NAME_RE = re.compile(r"^(\d+)\.(weight|bias)$")


# --- export ------------------------------------------------------------------------------


def export(
    store: Store,
    rows: pd.DataFrame,
    fmt: str,
    out: str | Path,
    dtype: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write ``rows`` to the folder ``out`` in format ``fmt``; returns the files written.
    ``dtype`` (float32 | float16) defaults to each row's stored dtype. Refuses a non-empty
    ``out`` unless ``force`` (then it is replaced whole, after the new export is complete)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if dtype not in (None, "float32", "float16"):
        raise UsageError(f"unknown dtype {dtype!r}; choose float32 or float16")
    if rows.empty:
        raise UsageError("nothing to export: the selection is empty")
    if fmt == "npz" and rows["arch"].nunique() > 1:
        raise UsageError("--to npz stacks one architecture; the selection has several (use safetensors or torch)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"export destination {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"export destination {out} is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = _write(store, rows.reset_index(drop=True), fmt, tmp, dtype)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / f.name for f in files]


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished export to ``out`` (replacing an old one only at the end)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_stem(model_id: str) -> str:
    """A file name for a model id (path separators and odd characters as '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_id).lstrip(".") or "model"


def _write(store: Store, rows: pd.DataFrame, fmt: str, folder: Path, dtype: str | None) -> list[Path]:
    params = np.empty(len(rows), dtype=object)
    for _, idx in rows.groupby("arch", sort=False).indices.items():
        block = store.read_params(rows.iloc[idx])
        for k, i in enumerate(idx):
            params[i] = block[k]
    dtypes = [dtype or d for d in rows["dtype"]]
    stems = [file_stem(m) for m in rows["model_id"]]
    if len(set(stems)) != len(stems):
        raise UsageError("two selected model ids map to the same file name")
    files: list[Path] = []
    if fmt == "npz":
        files.append(_write_npz(rows, np.stack(list(params)), dtypes, folder))
    else:
        for i, rec in enumerate(rows.itertuples(index=False)):
            arch = ArchSpec.from_json(rec.arch)
            row = params[i].astype(dtypes[i])
            path = folder / f"{stems[i]}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
            if fmt == "safetensors":
                _write_safetensors(arch, row, rec, path)
            else:
                models.save(arch, row, path)
            files.append(path)
    meta = rows.assign(file=[f.name for f in files] if fmt != "npz" else files[0].name, export_dtype=dtypes)
    meta.to_parquet(folder / "metadata.parquet", index=False)
    (folder / "README.md").write_text(model_card(meta, fmt))
    return [*files, folder / "metadata.parquet", folder / "README.md"]


def _write_safetensors(arch: ArchSpec, row: np.ndarray, rec, path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {t.name: np.ascontiguousarray(row[t.offset : t.offset + t.size].reshape(t.shape)) for t in arch.layout}
    meta = {"format": "pt", "model_id": rec.model_id, "arch": arch.to_json(), "sha256": rec.sha256,
            "stored_dtype": rec.dtype, "dtype": str(row.dtype), "bnnctl_version": __version__}
    save_file(tensors, str(path), metadata=meta)


def _write_npz(rows: pd.DataFrame, params: np.ndarray, dtypes: list[str], folder: Path) -> Path:
    if len(set(dtypes)) > 1:
        raise UsageError("--to npz needs one dtype; the selection mixes float16 and float32 rows: pass --dtype")
    arch = ArchSpec.from_json(rows["arch"].iloc[0])
    path = folder / "models.npz"
    np.savez(
        path, params=params.astype(dtypes[0]), model_id=rows["model_id"].to_numpy(dtype=str),
        sha256=rows["sha256"].to_numpy(dtype=str), arch=np.array(arch.to_json()),
        layout=np.array(json.dumps([t.to_json() for t in arch.layout])),
    )
    return path


def model_card(meta: pd.DataFrame, fmt: str) -> str:
    """A README in the Hugging Face model-card style: what the files are and how to load them."""
    archs = ", ".join(sorted(set(meta["arch_name"])))
    datasets = ", ".join(sorted(set(meta["dataset"])))
    acc = meta["test_acc"].dropna().astype(float) if "test_acc" in meta else pd.Series(dtype=float)
    acc_line = f"- test accuracy: median {acc.median():.4f}, min {acc.min():.4f}, max {acc.max():.4f}\n" if len(acc) else ""
    load = {
        "safetensors": "from safetensors.torch import load_file\nnet.load_state_dict(load_file(\"<model_id>.safetensors\"))",
        "torch": "net.load_state_dict(torch.load(\"<model_id>.pt\", weights_only=True))",
        "npz": "z = np.load(\"models.npz\", allow_pickle=False)  # params [n, P], model_id, layout (JSON)",
    }[fmt]
    return f"""---
library_name: bnnctl
tags: [bayesian-neural-networks, model-zoo, weight-space, {fmt}]
datasets: [{datasets}]
---
# {len(meta)} checkpoints exported by bnnctl {__version__}

- architecture(s): {archs} (activation {", ".join(sorted(set(meta["activation"])))})
- dataset(s): {datasets}
- kinds: {", ".join(f"{k} ({n})" for k, n in meta["kind"].value_counts().sort_index().items())}
- methods: {", ".join(sorted(set(meta["method"])))}
- file dtype: {", ".join(sorted(set(meta["export_dtype"])))}
{acc_line}
`metadata.parquet` holds one manifest row per model (training configuration, metrics,
lineage, the sha256 of the row as stored) and the `file` it is in. Tensors use PyTorch
`state_dict` names and conventions (Linear weight is `[out, in]`), in the order of an
`nn.Sequential` of Linear/activation(/Dropout) layers:

```python
import torch
from bnnctl.arch import ArchSpec
from bnnctl.models import build
net = build(ArchSpec.from_json(arch_json))   # or your own nn.Sequential
{load}
```

Import back into a store with `bnnctl import <folder> --dataset <name>`.
"""


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
            raise DataError(f"{path.name}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for arbitrary objects, others for truncation
        raise DataError(f"{path.name}: not a plain PyTorch state_dict file ({_first_line(e)})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DataError(f"{path.name}: not a plain state_dict (a dict of name -> tensor); got {type(obj).__name__}")
    return dict(obj), {}


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def infer_arch(sd: dict, source: str, activation: str = "relu", dropout: float | None = None) -> ArchSpec:
    """The MLP whose layout has exactly these names and shapes ("<i>.weight" [out, in],
    "<i>.bias" [out], Linear indices 0, 2, 4, ... or 0, 3, 6, ... with dropout layers)."""
    bad = [k for k in sd if not NAME_RE.match(k)]
    if bad:
        raise DataError(f"{source}: cannot infer an MLP from tensor names like {bad[0]!r} "
                        "(expected '0.weight', '0.bias', '2.weight', ...); pass --arch")
    idx = sorted({int(NAME_RE.match(k).group(1)) for k in sd})
    weights = [sd.get(f"{i}.weight") for i in idx]
    if any(w is None or w.dim() != 2 for w in weights):
        raise DataError(f"{source}: every layer needs a 2-D '<i>.weight'; pass --arch")
    steps = {b - a for a, b in zip(idx, idx[1:], strict=False)}
    step = steps.pop() if len(steps) == 1 else (2 if not steps else None)
    if idx[0] != 0 or step not in (2, 3):
        raise DataError(f"{source}: layer indices {idx} are not those of an nn.Sequential MLP; pass --arch")
    if step == 3 and not dropout:
        raise UsageError(f"{source}: layer indices step by 3 (dropout layers): pass --dropout RATE")
    widths = (weights[0].shape[1], *(w.shape[0] for w in weights))
    arch = ArchSpec(widths, activation, dropout if step == 3 else 0.0)
    models.check_state_dict(arch, sd, source)
    return arch


def _numpy(t: torch.Tensor, source: str) -> np.ndarray:
    if not t.is_floating_point():
        raise DataError(f"{source}: tensor of dtype {t.dtype} is not floating point")
    return (t if t.dtype in (torch.float16, torch.float32) else t.float()).numpy()


def _load_all(files: list[Path], arch: ArchSpec | None, activation: str, dropout: float | None):
    """Every file's state_dict checked against one architecture (given, or from the first)."""
    rows, dtypes = [], set()
    for path in files:
        sd, meta = read_checkpoint(path)
        if arch is None:
            arch = ArchSpec.from_json(meta["arch"]) if "arch" in meta else infer_arch(sd, path.name, activation, dropout)
        arrays = {k: _numpy(v, path.name) for k, v in sd.items()}
        models.check_state_dict(arch, arrays, path.name)
        dtypes |= {a.dtype for a in arrays.values()}
        rows.append(arrays)
    dtype = "float16" if dtypes == {np.dtype(np.float16)} else "float32"
    return arch, dtype, [models.to_row(arch, sd, np.dtype(dtype)) for sd in rows]


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
) -> ImportResult:
    """Import every .safetensors / .pt / .pth file of ``folder`` as a model of population
    ``population`` (default: the folder's name), evaluated on ``dataset``. Files already
    imported (same model id ``<population>.<file stem>``) are skipped. Every file is read
    and checked before anything is written; ``store`` may be a path, opened (created)
    only then."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"import source {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix in IMPORT_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{folder} holds no {', '.join(IMPORT_SUFFIXES)} files")
    stems = [p.stem for p in files]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup:
        raise DataError(f"{folder}: two files are named {dup!r} (one model id each)")
    name = population or re.sub(r"[^A-Za-z0-9_.-]", "_", folder.resolve().name).lstrip(".-") or "import"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise UsageError(f"population name {name!r} may use letters, digits, '_', '.', '-' only")
    arch, dtype, params = _load_all(files, arch, activation, dropout)
    check_arch(arch, dataset)
    if not isinstance(store, Store):
        store = Store.open(store, create=True)
    config = hashlib.sha256(json.dumps({"kind": "import", "arch": arch.to_json(), "data": dataset.sha256,
                                        "population": name, "dtype": dtype}, sort_keys=True).encode()).hexdigest()
    _check_population(store, name, config, arch, dataset, dtype)
    done = set(store.manifest()["model_id"])
    todo = [(f"{name}.{s}", p) for s, p in zip(stems, params, strict=True) if f"{name}.{s}" not in done]
    committed = []
    if todo:
        data_path = store.put_dataset(dataset)
        for s in range(0, len(todo), block_size):
            committed.append(_commit(store, todo[s : s + block_size], arch, dtype, dataset, name, config, data_path))
            if progress is not None:
                progress(len(todo[s : s + block_size]))
    rows = pd.concat(committed, ignore_index=True) if committed else store.manifest().iloc[0:0]
    return ImportResult(len(files), len(files) - len(todo), rows, arch, dtype)


def _check_population(store: Store, name: str, config: str, arch: ArchSpec, ds: Dataset, dtype: str) -> None:
    mine = store.population(name)
    if mine.empty or (mine["config_sha256"] == config).all():
        return
    r = mine.iloc[0]
    raise ConflictError(
        f"population {name!r} already holds {r['kind']} rows of {r['arch_name']} on {r['dataset']} "
        f"({r['dtype']}); importing {arch.name} on {ds.name} ({dtype}) needs another --population"
    )


def _commit(store, todo, arch, dtype, ds, name, config, data_path) -> pd.DataFrame:
    ids = [m for m, _ in todo]
    params = np.stack([p for _, p in todo])
    metrics = metrics_of(arch, for_task(ds.task), torch.from_numpy(params.astype(np.float32)), ds)
    rows = [{
        "model_id": m, "kind": "import", "method": "import", "population": name, "seed": None,
        "dataset": ds.name, "task": ds.task, "data": data_path, "data_sha256": ds.sha256,
        "parent_id": None, "config_sha256": config, **{k: float(v[i]) for k, v in metrics.items()},
    } for i, m in enumerate(ids)]
    h = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return store.commit_block(f"params/{name}/import-{h}", params, dtype, arch, rows, f"import-{name}-{h}")
