"""`bnnctl import`."""

from __future__ import annotations

from typing import Annotated

import typer

from bnnctl.arch.spec import Activation
from bnnctl.cli.common import (
    DEFAULT_STORE,
    ActivationOpt,
    AllowNonfiniteOpt,
    DataOpt,
    DatasetOpt,
    QuietOpt,
    StoreOpt,
    command,
    log,
)


@command("import")
def import_cmd(
    folder: Annotated[
        str, typer.Argument(help="Folder of .safetensors / .pt / .pth state_dict files.")
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            "-a",
            help="MLP widths, e.g. mlp:64-128-128-10 (default: inferred from names and shapes).",
        ),
    ] = None,
    activation: ActivationOpt = Activation.relu,
    dropout: Annotated[
        float | None,
        typer.Option("--dropout", help="Dropout rate, when the files have dropout layers."),
    ] = None,
    dataset: DatasetOpt = "digits",
    data: DataOpt = None,
    population: Annotated[
        str | None,
        typer.Option("--population", "-p", help="Population name (default: the folder's name)."),
    ] = None,
    allow_nonfinite: AllowNonfiniteOpt = False,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Import a folder of safetensors or PyTorch state_dict files into a population,
    evaluated on the stated dataset (PyTorch files load with weights_only=True).

    Example: bnnctl import checkpoints/ --arch mlp:64-128-128-10 --dataset digits
    """
    from bnnctl.arch import ArchSpec
    from bnnctl.data import load_dataset
    from bnnctl.engines.importer import import_folder

    ds = load_dataset(None if data and dataset == "digits" else dataset, data)
    spec = ArchSpec.parse(arch, activation.value, dropout or 0.0) if arch else None
    res = import_folder(
        store,
        folder,
        ds,
        spec,
        population,
        activation.value,
        dropout,
        allow_nonfinite=allow_nonfinite,
    )
    msg = f"imported {len(res.rows)} models ({res.arch.name}, {res.dtype})"
    if res.skipped:
        msg += f"; {res.skipped} already in the store, skipped"
    log(quiet, msg)
