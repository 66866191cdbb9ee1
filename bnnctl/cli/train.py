"""`bnnctl train`."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from bnnctl.arch import ArchSpec
from bnnctl.cli.common import DEFAULT_STORE, QuietOpt, StoreOpt, command, log, progress_bar
from bnnctl.data import load_dataset
from bnnctl.errors import UsageError
from bnnctl.store import Store
from bnnctl.train import TrainConfig, make_population, train

DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help="Built-in dataset (digits, moons), or the name for --data.")
]
DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Your data: an .npz (x_train, y_train, x_test, y_test) or a folder of MNIST IDX files."),
]
ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", "-a", help="MLP widths, input to output, e.g. mlp:64-128-128-10 (default: one fit for the data)."),
]
ActivationOpt = Annotated[str, typer.Option("--activation", help="relu, leaky_relu, tanh or gelu.")]
DropoutOpt = Annotated[float, typer.Option("--dropout", help="Dropout rate after each hidden layer (for MC dropout).")]


def dataset_and_arch(dataset: str, data: str | None, arch: str | None, activation: str, dropout: float):
    """The dataset and architecture that train and sample options describe."""
    ds = load_dataset(None if data and dataset == "digits" else dataset, data)
    spec = (
        ArchSpec.parse(arch, activation, dropout)
        if arch
        else ArchSpec(ds.default_arch_widths(), activation, dropout)
    )
    return ds, spec


@command("train")
def train_cmd(
    seeds: Annotated[int, typer.Option("--seeds", "-n", help="Number of seeds to train: seed-start .. seed-start+N-1.")] = 8,
    seed_start: Annotated[int, typer.Option("--seed-start", help="First seed (to extend a population later).")] = 0,
    dataset: DatasetOpt = "digits",
    data: DataOpt = None,
    arch: ArchOpt = None,
    activation: ActivationOpt = "relu",
    dropout: DropoutOpt = 0.0,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd.")] = "adam",
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-3,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.9,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="SGD with Nesterov momentum.")] = False,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Coupled L2 on the mean loss (torch.optim's); prior precision = N x weight decay.")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Minibatch size.")] = 128,
    schedule: Annotated[str, typer.Option("--schedule", help="constant, cosine, or step (x0.1 at 50% and 75%).")] = "constant",
    dtype: Annotated[str, typer.Option("--dtype", help="Stored precision: float32 or float16.")] = "float32",
    population: Annotated[str | None, typer.Option("--population", "-p", help="Population name (default: the dataset's name).")] = None,
    block_size: Annotated[int, typer.Option("--block-size", help="Models trained together (one shard each).")] = 32,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes, each training whole blocks.")] = 1,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Train many seeds of an MLP at once into the store; re-running skips committed seeds.

    Example: bnnctl train --seeds 3072 --store runs.zarr
    """
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    if seed_start < 0:
        raise UsageError(f"--seed-start must be >= 0, got {seed_start}")
    if block_size < 1 or jobs < 1:
        raise UsageError("--block-size and --jobs must be at least 1")
    ds, spec = dataset_and_arch(dataset, data, arch, activation, dropout)
    cfg = TrainConfig(optimizer, lr, momentum, nesterov, weight_decay, epochs, batch_size, schedule)
    make_population(ds, cfg, spec, population, dtype)  # refuse bad requests before creating a store
    st = Store.open(store, create=True)
    requested = range(seed_start, seed_start + seeds)
    t0 = time.perf_counter()
    with progress_bar(quiet) as bar:
        task = bar.add_task("train", total=seeds * epochs, done=0, todo=seeds, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            done = bar.tasks[task].completed / epochs
            elapsed = time.perf_counter() - t0
            bar.update(task, done=int(done), rate=f"{done / elapsed:.1f} models/s")

        result = train(
            st, ds, cfg, requested, spec, population, block_size, jobs, dtype, progress=advance
        )
        bar.update(task, completed=seeds * epochs, done=seeds)
    elapsed = time.perf_counter() - t0
    rows = result.rows
    msg = f"trained {len(rows)} models"
    if result.skipped:
        msg += f" ({result.skipped} already in the store, skipped)"
    if len(rows):
        msg += f" in {elapsed:.1f} s ({len(rows) / elapsed:.2f} models/s)"
        if rows["task"].iloc[0] == "classification":
            acc = rows["test_acc"]
            msg += f"; test accuracy median {acc.median():.4f}, min {acc.min():.4f}"
        else:
            msg += f"; test RMSE median {rows['test_rmse'].median():.4g}"
    log(quiet, f"{msg}; population {rows['population'].iloc[0] if len(rows) else population or ds.name!s}; store {store}")
