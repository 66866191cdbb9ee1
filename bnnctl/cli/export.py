"""`bnnctl export`."""

from __future__ import annotations

from typing import Annotated

import typer

from bnnctl.cli.common import (
    DEFAULT_STORE,
    AsOfOpt,
    QuietOpt,
    StoreOpt,
    WhereOpt,
    command,
    log,
    read_ids,
)
from bnnctl.export import ExportFormat, export
from bnnctl.store import Store
from bnnctl.store.store import DType


@command("export", flags={"fmt": "--to"})
def export_cmd(
    out: Annotated[
        str, typer.Argument(help="Destination folder (must be empty or absent unless --force).")
    ],
    to: Annotated[
        ExportFormat,
        typer.Option(
            "--to",
            help=(
                "safetensors (one file per model), npz (one stacked file) or torch (.pt "
                "state_dicts)."
            ),
        ),
    ] = ExportFormat.safetensors,
    where: WhereOpt = None,
    ids: Annotated[
        str | None,
        typer.Option("--ids", help="Model ids, comma-separated, or '-' to read them from stdin."),
    ] = None,
    dtype: Annotated[
        DType | None, typer.Option("--dtype", help="Exported dtype (default: as stored).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace a non-empty destination (only once the export is complete)."
        ),
    ] = False,
    as_of: AsOfOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Export a selection of checkpoints (MLPs or conv nets) as safetensors, one .npz or
    PyTorch state_dicts, with a metadata Parquet and a README model card.

    Example: bnnctl ls --where "seed < 100" --format ids | bnnctl export --ids - out/
    """
    wanted = None if ids is None else read_ids(ids)
    st = Store.open(store, as_of=as_of)
    files = export(st, None, to.value, out, dtype and dtype.value, force, where=where, ids=wanted)
    log(quiet, f"exported checkpoints as {to.value} to {out} ({len(files)} files)")
