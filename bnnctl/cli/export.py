"""`bnnctl export` and `bnnctl import`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from bnnctl.arch import ArchSpec
from bnnctl.cli.common import (
    DEFAULT_STORE, QuietOpt, StoreOpt, WhereOpt, command, log, read_ids, select,
)
from bnnctl.cli.train import ActivationOpt, DataOpt, DatasetOpt
from bnnctl.data import load_dataset
from bnnctl.errors import UsageError
from bnnctl.export import export, import_folder
from bnnctl.store import Store


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    npz = "npz"
    torch = "torch"


@command("export")
def export_cmd(
    out: Annotated[str, typer.Argument(help="Destination folder (must be empty or absent unless --force).")],
    to: Annotated[ExportFormat, typer.Option("--to", help="safetensors (one file per model), npz (one stacked file) or torch (.pt state_dicts).")] = ExportFormat.safetensors,
    where: WhereOpt = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Model ids, comma-separated, or '-' to read them from stdin.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float32 or float16 (default: as stored).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty destination (only once the export is complete).")] = False,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Export a selection of checkpoints as safetensors, one .npz or PyTorch state_dicts,
    with a metadata Parquet and a README model card.

    Example: bnnctl ls --where "seed < 100" --format ids | bnnctl export --ids - --to safetensors out/
    """
    if (where is None) == (ids is None):
        raise UsageError("select what to export with exactly one of --where EXPR or --ids -")
    man = Store.open(store).manifest()
    if ids is not None:
        wanted = read_ids(ids)
        missing = [m for m in wanted if m not in set(man["model_id"])]
        if missing:
            raise UsageError(f"{len(missing)} unknown model id(s), e.g. {missing[0]!r}")
        rows = man.set_index("model_id", drop=False).loc[list(dict.fromkeys(wanted))]
    else:
        rows = select(man, where)
        if rows.empty:
            raise UsageError(f"--where {where!r} selects no rows")
    files = export(Store.open(store), rows.reset_index(drop=True), to.value, out, dtype, force)
    log(quiet, f"exported {len(rows)} checkpoints as {to.value} to {out} ({len(files)} files)")


@command("import")
def import_cmd(
    folder: Annotated[str, typer.Argument(help="Folder of .safetensors / .pt / .pth state_dict files.")],
    arch: Annotated[str | None, typer.Option("--arch", "-a", help="MLP widths, e.g. mlp:64-128-128-10 (default: inferred from names and shapes).")] = None,
    activation: ActivationOpt = "relu",
    dropout: Annotated[float | None, typer.Option("--dropout", help="Dropout rate, when the files have dropout layers.")] = None,
    dataset: DatasetOpt = "digits",
    data: DataOpt = None,
    population: Annotated[str | None, typer.Option("--population", "-p", help="Population name (default: the folder's name).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Import a folder of safetensors or PyTorch state_dict files into a population,
    evaluated on the stated dataset (PyTorch files load with weights_only=True).

    Example: bnnctl import checkpoints/ --arch mlp:64-128-128-10 --dataset digits
    """
    ds = load_dataset(None if data and dataset == "digits" else dataset, data)
    spec = ArchSpec.parse(arch, activation, dropout or 0.0) if arch else None
    res = import_folder(store, folder, ds, spec, population, activation, dropout)
    msg = f"imported {len(res.rows)} models ({res.arch.name}, {res.dtype})"
    if res.skipped:
        msg += f"; {res.skipped} already in the store, skipped"
    log(quiet, msg)
