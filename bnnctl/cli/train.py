"""`bnnctl train`."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from bnnctl.arch.spec import Activation
from bnnctl.cli.common import (
    DEFAULT_STORE,
    ActivationOpt,
    AllowNonfiniteOpt,
    ArchOpt,
    DataOpt,
    DatasetOpt,
    DeviceOpt,
    DropoutOpt,
    QuietOpt,
    SchedulerOpt,
    StoreOpt,
    command,
    dataset_and_arch,
    log,
    progress,
)
from bnnctl.engines.config import Optimizer, Schedule, TrainConfig
from bnnctl.errors import UsageError
from bnnctl.store.format import DType

#: Seeds one run may request (each is a row; a store holds more over several runs).
MAX_SEEDS_PER_RUN = 10_000_000


@command("train", flags={"seeds": "--seeds/--seed-start"})
def train_cmd(
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds", "-n", help="Number of seeds to train: seed-start .. seed-start+N-1."
        ),
    ] = 8,
    seed_start: Annotated[
        int, typer.Option("--seed-start", help="First seed (to extend a population later).")
    ] = 0,
    dataset: DatasetOpt = "digits",
    data: DataOpt = None,
    arch: ArchOpt = None,
    activation: ActivationOpt = Activation.relu,
    dropout: DropoutOpt = 0.0,
    optimizer: Annotated[
        Optimizer, typer.Option("--optimizer", help="Optimizer.")
    ] = Optimizer.adam,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-3,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.9,
    nesterov: Annotated[
        bool, typer.Option("--nesterov", help="SGD with Nesterov momentum.")
    ] = False,
    weight_decay: Annotated[
        float,
        typer.Option(
            "--weight-decay",
            help="Coupled L2 on the mean loss (torch.optim's); prior precision = N x weight decay.",
        ),
    ] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Minibatch size.")] = 128,
    schedule: Annotated[
        Schedule,
        typer.Option("--schedule", help="Learning-rate schedule (step: x0.1 at 50% and 75%)."),
    ] = Schedule.constant,
    lr_milestones: Annotated[
        str | None,
        typer.Option(
            "--lr-milestones",
            help="Step schedule at these epochs, e.g. 15,30 (0-based; implies --schedule step).",
        ),
    ] = None,
    lr_gamma: Annotated[
        float | None,
        typer.Option(
            "--lr-gamma",
            help="Step schedule factor in (0, 1] (default 0.1; implies --schedule step).",
        ),
    ] = None,
    stop_below_acc: Annotated[
        float | None,
        typer.Option(
            "--stop-below-acc",
            help="Early stop: a model whose accuracy on the test split (bnnctl has train and "
            "test splits only, no validation split) is below this after --stop-after-epoch "
            "epochs stops there (its weights are kept; its epochs column says when). "
            "OptuNet's: 0.15 after 3.",
        ),
    ] = None,
    stop_after_epoch: Annotated[
        int | None,
        typer.Option(
            "--stop-after-epoch",
            help="Epochs trained before the --stop-below-acc check (1..epochs-1).",
        ),
    ] = None,
    dtype: Annotated[DType, typer.Option("--dtype", help="Stored precision.")] = DType.float32,
    population: Annotated[
        str | None,
        typer.Option("--population", "-p", help="Population name (default: the dataset's name)."),
    ] = None,
    block_size: Annotated[
        int, typer.Option("--block-size", help="Models trained together (one shard each).")
    ] = 32,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Worker processes, each training whole blocks.")
    ] = 1,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "auto",
    allow_nonfinite: AllowNonfiniteOpt = False,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Train many seeds of an MLP or conv net at once into the store; re-running skips
    committed seeds.

    Example: bnnctl train --seeds 3072 --store runs.zarr
    """
    from bnnctl.engines.train import train

    if not 1 <= seeds <= MAX_SEEDS_PER_RUN:
        raise UsageError(
            f"--seeds must be at least 1 and at most {MAX_SEEDS_PER_RUN:,} per run, got {seeds}"
        )
    ds, spec = dataset_and_arch(dataset, data, arch, activation.value, dropout)
    milestones = parse_milestones(lr_milestones)
    sched = schedule.value
    if (milestones or lr_gamma is not None) and schedule == Schedule.constant:
        sched = Schedule.step.value
    cfg = TrainConfig(
        optimizer.value,
        lr,
        momentum,
        nesterov,
        weight_decay,
        epochs,
        batch_size,
        sched,
        milestones,
        lr_gamma,
        stop_below_acc,
        stop_after_epoch,
    )
    t0 = time.perf_counter()
    with progress(quiet, "train", seeds * epochs, per_item=epochs) as advance:
        result = train(
            store,
            ds,
            cfg,
            range(seed_start, seed_start + seeds),
            spec,
            population,
            block_size,
            jobs,
            dtype.value,
            progress=advance,
            allow_nonfinite=allow_nonfinite,
            scheduler=scheduler,
            device=device,
        )
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
        if cfg.stop_below_acc is not None:
            stopped = int((rows["epochs"] < cfg.epochs).sum())
            msg += (
                f"; {stopped} stopped early (test accuracy < {cfg.stop_below_acc:g} "
                f"after epoch {cfg.stop_after_epoch})"
            )
    name = rows["population"].iloc[0] if len(rows) else population or ds.name
    log(quiet, f"{msg}; population {name}; store {store}")


def parse_milestones(text: str | None) -> tuple[int, ...]:
    """``--lr-milestones 15,30`` as ``(15, 30)`` (a UsageError names anything else)."""
    if text is None:
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(
            f"--lr-milestones must be epochs separated by commas, e.g. 15,30; got {text!r}"
        ) from None
