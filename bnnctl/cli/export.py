"""`bnnctl export`."""

from __future__ import annotations

from enum import Enum
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
from bnnctl.errors import UsageError
from bnnctl.store.format import DType


class ExportFormat(str, Enum):
    """Export formats (:data:`bnnctl.export.FORMATS`)."""

    safetensors = "safetensors"
    npz = "npz"
    torch = "torch"


@command("export", flags={"fmt": "--to"})
def export_cmd(
    out: Annotated[
        str | None,
        typer.Argument(
            help="Destination folder (must be empty or absent unless --force); "
            "leave it out with --archive."
        ),
    ] = None,
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            metavar="FILE.tgz",
            help=(
                "Instead of a folder, write one deterministic .tgz/.tar.gz of the "
                "safetensors files, metadata.parquet and README.md (the paper's release "
                "layout; --to safetensors only)."
            ),
        ),
    ] = None,
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
    PyTorch state_dicts, with a metadata Parquet and a README model card, to a folder,
    or (safetensors) packed in one .tgz archive as "A Symmetry-Aware Exploration of BNN
    Posteriors" releases its checkpoints.

    Example: bnnctl ls --where "seed < 100" --format ids | bnnctl export --ids - out/

    Example: bnnctl export --where "arch_name == 'optunet'" --dtype float16 --archive out.tgz
    """
    if archive is not None and out is not None:
        raise UsageError(
            f"give a destination folder or --archive FILE.tgz, not both ({out!r} and {archive!r})"
        )
    if archive is None and out is None:
        raise UsageError("missing destination: give a folder, or --archive FILE.tgz")
    if archive is not None and to is not ExportFormat.safetensors:
        raise UsageError(
            f"--archive packs safetensors files (the release format); not --to {to.value}"
        )
    from bnnctl.export import export
    from bnnctl.store import Store

    wanted = None if ids is None else read_ids(ids)
    st = Store.open(store, as_of=as_of)
    dest = archive if archive is not None else out or ""
    files = export(
        st,
        None,
        to.value,
        dest,
        dtype and dtype.value,
        force,
        where=where,
        ids=wanted,
        archive=archive is not None,
    )
    what = "1 archive" if archive is not None else f"{len(files)} files"
    log(quiet, f"exported checkpoints as {to.value} to {dest} ({what})")
