"""Export a selection of checkpoints to files others can load.

Formats (``out`` is a folder, written under a temporary name next to it and renamed
into place when complete, so a crash never leaves a half-written export):

- ``safetensors``: one ``<model_id>.safetensors`` per model, tensors named as the PyTorch
  state_dict ("0.weight", "0.bias", ... of an MLP; "conv1.weight", "fc1.bias", ... of a
  conv net, as :meth:`~bnnctl.arch.ConvSpec.module` names them), header metadata
  ``model_id``, ``arch`` (JSON), ``sha256`` (of the stored row), ``dtype``; plus
  ``metadata.parquet`` (the manifest rows and a ``file`` column) and a ``README.md``
  model card (Hugging Face style front matter).
  ``dtype='float16'`` halves the size, as Laurent et al.'s released dataset.
- ``npz``: one ``models.npz`` with ``params [n, P]``, ``model_id [n]``, ``sha256 [n]``,
  ``arch`` and ``layout`` (JSON strings); loads with ``np.load(allow_pickle=False)``.
- ``torch``: one ``<model_id>.pt`` state_dict per model (tensors only), which loads with
  ``torch.load(path, weights_only=True)`` into ``bnnctl.arch.modules.build(arch)`` and a
  plain ``nn.Sequential`` of Linear/activation (/Dropout) layers (an MLP), or into
  ``arch_from_json(arch).module()`` (a conv net).

Every format works for MLPs and conv nets alike (``arch`` is read with
:func:`bnnctl.arch.arch_from_json`).

``archive=True`` (``safetensors`` only) writes the release layout of "A Symmetry-Aware
Exploration of BNN Posteriors" instead of a folder: ``out`` is one gzip tar
(``.tgz``/``.tar.gz``) holding the ``<model_id>.safetensors`` files, ``metadata.parquet``
and ``README.md`` at its root, written to a temporary file beside ``out`` and renamed
at the end. Archives are deterministic (members sorted by name, mtime 0, uid/gid 0, no
owner names, gzip header without name or time, safetensors headers with sorted keys):
exporting the same rows twice gives byte-identical files. ``bnnctl import`` reads them
back (it skips the non-checkpoint members).

Only the ``torch`` format imports torch.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from bnnctl.arch import AnyArch, ArchSpec, arch_from_json
from bnnctl.errors import ENVIRONMENT_ERRNOS, EnvironmentFault, UsageError, environment_fault
from bnnctl.store import DTYPES, Store
from bnnctl.store.manifest import select_rows
from bnnctl.version import __version__

#: Export formats (the CLI's ``--to`` choices).
FORMATS = ("safetensors", "npz", "torch")
#: Names an ``archive`` export may have (those ``bnnctl import`` reads as archives).
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")


# --- export ------------------------------------------------------------------------------


def export(
    store: Store | str,
    rows: pd.DataFrame | None,
    fmt: str,
    out: str | Path,
    dtype: str | None = None,
    force: bool = False,
    where: str | None = None,
    ids: list[str] | None = None,
    archive: bool = False,
) -> list[Path]:
    """Write ``rows`` (or the rows ``where`` or ``ids`` select) to the folder ``out`` in
    format ``fmt``; returns the files written. ``dtype`` (float32 | float16) defaults to
    each row's stored dtype. Refuses a non-empty ``out`` unless ``force`` (then it is
    replaced whole, after the new export is complete). With ``archive`` (safetensors
    only), ``out`` is a ``.tgz``/``.tar.gz`` file packing what the folder would hold
    (returns ``[out]``); an existing file is replaced only with ``force``."""
    if fmt not in FORMATS:
        raise UsageError.choice("fmt", fmt, FORMATS)
    if archive:
        _check_archive_request(fmt, Path(out), force)
    if dtype not in (None, *DTYPES):
        raise UsageError.choice("dtype", dtype, DTYPES)
    store = store if isinstance(store, Store) else Store.open(store)
    if rows is None:
        rows = select_rows(store.manifest(), where, ids)
    if rows.empty:
        raise UsageError("nothing to export: the selection is empty")
    if fmt == "npz" and rows["arch"].nunique() > 1:
        raise UsageError(
            "--to npz stacks one architecture; the selection has several (use safetensors or torch)"
        )
    out = Path(out)
    if not archive:
        if out.exists() and not out.is_dir():
            raise UsageError(f"export destination {out} is a file, not a folder")
        if out.exists() and any(out.iterdir()) and not force:
            raise UsageError(f"export destination {out} is not empty; pass --force to replace it")
    return _staged_export(store, rows.reset_index(drop=True), fmt, out, dtype, archive)


def _check_archive_request(fmt: str, out: Path, force: bool) -> None:
    """Refuse an archive export that could not be what ``bnnctl import`` reads, or that
    would replace something without ``force`` (before anything is read or written)."""
    if fmt != "safetensors":
        raise UsageError(
            f"`archive` packs safetensors files (the release format); not `fmt` {fmt!r}",
            "archive",
        )
    if out.is_dir():
        raise UsageError(f"export archive {out} is a folder, not a file")
    if not out.name.endswith(ARCHIVE_SUFFIXES):
        raise UsageError(
            f"archive {out} must be named {' or '.join('*' + s for s in ARCHIVE_SUFFIXES)} "
            "(what `bnnctl import` reads)",
            "archive",
        )
    if out.exists() and not force:
        raise UsageError(f"export archive {out} exists; pass --force to replace it")


def _staged_export(
    store: Store, rows: pd.DataFrame, fmt: str, out: Path, dtype: str | None, archive: bool
) -> list[Path]:
    """Write the export into a temporary folder beside ``out``, then rename it into place
    (or, for an ``archive``, pack it into a temporary file and rename that); nothing is
    left behind on any failure."""
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    packed = tmp.with_name(tmp.name + ".part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise EnvironmentFault(f"cannot write to {out}: {(e.strerror or str(e)).lower()}") from None
    try:
        files = _write(store, rows, fmt, tmp, dtype)
        if not archive:
            _swap_into_place(tmp, out)
            return [out / f.name for f in files]
        write_tgz(packed, files)
        os.replace(packed, out)
        shutil.rmtree(tmp, ignore_errors=True)
        return [out]
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        packed.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            raise environment_fault(e, f"exporting to {out}", "nothing written") from None
        raise


def write_tgz(path: Path, files: list[Path], level: int = 6) -> None:
    """A deterministic gzip tar at ``path`` of ``files`` at its root: members sorted by
    name, regular files of mode 0644, mtime 0, uid/gid 0 without owner names, and a gzip
    header without file name or time; flushed to disk before it returns."""
    with open(path, "wb") as raw:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for f in sorted(files, key=lambda p: p.name):
                info = tarfile.TarInfo(f.name)
                info.size = f.stat().st_size
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
        raw.flush()
        os.fsync(raw.fileno())


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


def _write(
    store: Store, rows: pd.DataFrame, fmt: str, folder: Path, dtype: str | None
) -> list[Path]:
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
            arch = arch_from_json(rec.arch)
            row = params[i].astype(dtypes[i])
            path = folder / f"{stems[i]}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
            if fmt == "safetensors":
                _write_safetensors(arch, row, rec, path)
            elif isinstance(arch, ArchSpec):
                from bnnctl.arch import modules  # torch, for this format only

                modules.save(arch, row, path)
            else:
                _save_torch(arch, row, path)
            files.append(path)
    meta = rows.assign(
        file=[f.name for f in files] if fmt != "npz" else files[0].name, export_dtype=dtypes
    )
    meta.to_parquet(folder / "metadata.parquet", index=False)
    (folder / "README.md").write_text(model_card(meta, fmt))
    return [*files, folder / "metadata.parquet", folder / "README.md"]


def _save_torch(arch: AnyArch, row: np.ndarray, path: Path) -> None:
    """One row as a plain PyTorch state_dict file (tensors only, the module's names)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(row))
    torch.save({k: v.contiguous() for k, v in arch.state_dict(t).items()}, path)


#: safetensors' names of the dtypes an export writes.
_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file of ``tensors`` (in their order), byte for byte the same for the
    same input: the header is JSON with sorted metadata keys (the safetensors library
    writes them in hash order, which changes from run to run), padded with spaces to a
    multiple of 8 bytes as the format asks."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name, a in tensors.items():
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *blobs])


def _write_safetensors(arch: AnyArch, row: np.ndarray, rec, path: Path) -> None:
    tensors = {
        t.name: np.ascontiguousarray(row[t.offset : t.offset + t.size].reshape(t.shape))
        for t in arch.layout
    }
    meta = {
        "format": "pt",
        "model_id": rec.model_id,
        "arch": arch.to_json(),
        "sha256": rec.sha256,
        "stored_dtype": rec.dtype,
        "dtype": str(row.dtype),
        "bnnctl_version": __version__,
    }
    path.write_bytes(safetensors_bytes(tensors, meta))


def _write_npz(rows: pd.DataFrame, params: np.ndarray, dtypes: list[str], folder: Path) -> Path:
    if len(set(dtypes)) > 1:
        raise UsageError(
            "--to npz needs one dtype; the selection mixes float16 and float32 rows: pass --dtype"
        )
    arch = arch_from_json(rows["arch"].iloc[0])
    path = folder / "models.npz"
    np.savez(
        path,
        params=params.astype(dtypes[0]),
        model_id=rows["model_id"].to_numpy(dtype=str),
        sha256=rows["sha256"].to_numpy(dtype=str),
        arch=np.array(arch.to_json()),
        layout=np.array(json.dumps([t.to_json() for t in arch.layout])),
    )
    return path


def model_card(meta: pd.DataFrame, fmt: str) -> str:
    """A README in the Hugging Face model-card style: what the files are and how to load them."""
    archs = ", ".join(sorted(set(meta["arch_name"])))
    datasets = ", ".join(sorted(set(meta["dataset"])))
    acc = meta["test_acc"].dropna().astype(float) if "test_acc" in meta else pd.Series(dtype=float)
    acc_line = (
        f"- test accuracy: median {acc.median():.4f}, min {acc.min():.4f}, max {acc.max():.4f}\n"
        if len(acc)
        else ""
    )
    load = {
        "safetensors": "from safetensors.torch import load_file\n"
        'net.load_state_dict(load_file("<model_id>.safetensors"))',
        "torch": 'net.load_state_dict(torch.load("<model_id>.pt", weights_only=True))',
        "npz": 'z = np.load("models.npz", allow_pickle=False)'
        "  # params [n, P], model_id, layout (JSON)",
    }[fmt]
    kinds = {_kind(a) for a in meta["arch"]}
    if kinds == {"cnn"}:
        build = "net = arch_from_json(arch_json).module()  # the ConvSpec's nn.Sequential"
        layers = (
            "named as `ConvSpec.module()`, an\n`nn.Sequential` of "
            "Conv2d/Linear/activation/pool layers, names them"
        )
    elif kinds == {"mlp"}:
        build = "net = build(arch_from_json(arch_json))   # or your own nn.Sequential"
        layers = "in the order of an\n`nn.Sequential` of Linear/activation(/Dropout) layers"
    else:
        build = (
            "spec = arch_from_json(arch_json)\n"
            'net = spec.module() if spec.kind == "cnn" else build(spec)'
        )
        layers = (
            "an MLP's in the order of an\n`nn.Sequential` of Linear/activation(/Dropout) "
            "layers, a conv net's as\n`ConvSpec.module()` names them"
        )
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
lineage, the sha256 of the row as stored, its `arch` as JSON) and the `file` it is in.
Tensors use PyTorch `state_dict` names and conventions (Linear weight is `[out, in]`,
Conv2d weight `[out, in/groups, k, k]`), {layers}:

```python
import numpy as np
import pandas as pd
import torch
from bnnctl.arch import arch_from_json
from bnnctl.arch.modules import build
arch_json = pd.read_parquet("metadata.parquet")["arch"].iloc[0]
{build}
{load}
```

Import back into a store with `bnnctl import <folder> --dataset <name>`.
"""


def _kind(arch_json: str) -> str:
    try:
        return str(json.loads(arch_json).get("kind", "mlp"))
    except (ValueError, AttributeError):
        return "mlp"
