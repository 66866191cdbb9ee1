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
    DeviceOpt,
    QuietOpt,
    StoreOpt,
    command,
    log,
    progress,
)
from bnnctl.errors import UsageError
from bnnctl.store.format import DType


@command("import")
def import_cmd(
    folder: Annotated[
        str,
        typer.Argument(
            help="Folder of .safetensors / .pt / .pth state_dict files, a .tgz / .tar.gz "
            "archive of them (read in memory, never extracted), or a folder of such archives."
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            "-a",
            help="mlp:64-128-128-10 (MLP widths), a conv net preset (optunet, lenet5, "
            "cifar_small) or a cnn: spec (default: inferred from names and shapes).",
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
    dtype: Annotated[
        DType | None,
        typer.Option(
            "--dtype",
            help="Stored dtype (default: float16 when every tensor is float16, else float32).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Import a folder or .tgz archive of safetensors or PyTorch state_dict files into a
    population, evaluated on the stated dataset (PyTorch files load with weights_only=True;
    archive members are read in memory, and absolute paths, '..', links and devices are
    refused). A 'model.' prefix on every tensor name (Lightning) is stripped.

    Example: bnnctl import mnist-optunet-0-8191.tgz --arch optunet --data mnist/ --dtype float16
    """
    from bnnctl.arch import ArchSpec, parse_arch
    from bnnctl.data import load_dataset
    from bnnctl.engines.importer import import_folder

    ds = load_dataset(None if data and dataset == "digits" else dataset, data)
    spec = None
    if arch and not arch.strip().startswith("mlp:"):
        spec = parse_arch(arch)
        if activation != Activation.relu or dropout:
            raise UsageError(
                f"`activation` and `dropout` apply to mlp: archs; {spec.name} names its own "
                "activations and dropout in its spec",
                "activation" if activation != Activation.relu else "dropout",
            )
    elif arch:
        spec = ArchSpec.parse(arch, activation.value, dropout or 0.0)
    with progress(quiet, "import", None) as advance:
        res = import_folder(
            store,
            folder,
            ds,
            spec,
            population,
            activation.value,
            dropout,
            progress=advance,
            allow_nonfinite=allow_nonfinite,
            dtype=dtype and dtype.value,
            device=device,
        )
    msg = f"imported {len(res.rows)} models ({res.arch.name}, {res.dtype})"
    if res.skipped:
        msg += f"; {res.skipped} already in the store, skipped"
    log(quiet, msg)
