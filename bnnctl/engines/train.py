"""The train engine: many seeds at once on stacked parameters.

A population is a named set of models trained with one configuration. Its models are
trained a block at a time: ``M`` models as one ``[M, n_params]`` tensor, batched matmuls
for the forward and backward pass (:mod:`bnnctl.arch.spec`), and one ``torch.optim``
optimizer (fused Adam or SGD) over the stacked tensor, which is elementwise and therefore
exactly a per-model optimizer. A block is ``block -> manifest rows`` with no shared state but the
store, so blocks can run in worker processes (``jobs``) or on Dask workers (``scheduler``,
:mod:`bnnctl.scheduler`), each committing its own blocks.

Conv nets (:class:`~bnnctl.arch.ConvSpec`) train on the same plan
(:func:`train_conv_models`): the stacked ``[M, P]`` params are one leaf tensor, each
model's own minibatch goes through ``ConvSpec.forward`` (the models as the groups of
grouped convs) and autograd gives each model its own gradient. Dropout in a conv net
multiplies by element-wise masks (as ``nn.Dropout``) drawn from each model's own
generator (:func:`conv_dropout_masks`).

Early stop (``TrainConfig.stop_below_acc`` / ``stop_after_epoch``): after that epoch,
each model is evaluated alone on the test split and a model under the threshold is
frozen: its row of the stacked params is restored after every later optimizer step, so
the other models' arithmetic is untouched (the optimizers are elementwise). The rule is
in the population's hash but not in its models' random streams, so a model that does
not stop has the weights of the population without the rule, and a stopped one those
it had after ``stop_after_epoch`` epochs there, bit for bit.

Model k's initialisation and data order come from its own generator, seeded by
(population config, k) alone: the same seed gives the same weights whatever the block
(bit for bit, MLPs and conv nets alike, on one thread).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

import bnnctl.device as devmod
import bnnctl.scheduler as schedmod
from bnnctl.arch import AnyArch, ArchSpec, ConvSpec
from bnnctl.arch.modules import dropout_masks as bernoulli_masks
from bnnctl.data import Dataset
from bnnctl.engines import population as popmod
from bnnctl.engines.config import TrainConfig
from bnnctl.errors import UsageError
from bnnctl.evaluate import check_arch, metrics_of
from bnnctl.evaluate.likelihood import for_task
from bnnctl.store import DTYPES, Block, Store
from bnnctl.threads import in_blocks

MAX_SEED = popmod.MAX_SEED
#: Largest block: one shard of at most this many models (tiny models train in big blocks).
MAX_BLOCK_SIZE = 65_536
#: Training time after which the blocks trained in this process are committed together
#: (one manifest commit, ~20 ms, is then at most ~4 % of the run).
COMMIT_EVERY_S = 0.5


@dataclass(frozen=True)
class Population:
    """Everything a model's weights depend on, except its seed."""

    name: str
    arch: AnyArch
    config: TrainConfig
    dataset: Dataset
    dtype: str = "float32"
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", self._digest(with_dtype=True))

    def _digest(self, with_dtype: bool, with_stop: bool = True) -> str:
        config = self.config.identity()
        if not with_stop:
            config.pop("stop_below_acc", None)
            config.pop("stop_after_epoch", None)
        desc = {"arch": self.arch.to_json(), "config": config, "data": self.dataset.sha256}
        if with_dtype:
            desc["dtype"] = self.dtype
        return popmod.digest(desc)

    def generator(self, seed: int) -> torch.Generator:
        """Model ``seed``'s own random stream: init first, then one permutation per epoch
        (and each step's dropout masks). Independent of the stored dtype (a float16
        population holds the float32 one, rounded) and of the early-stop rule (a
        population with it holds the models of the one without, those under the
        threshold stopped early)."""
        return popmod.generator(self._digest(with_dtype=False, with_stop=False), seed)

    def model_id(self, seed: int) -> str:
        return f"{self.name}.{seed:06d}"


def train_models(
    pop: Population,
    seeds: list[int],
    on_epoch: Callable[[int], None] | None = None,
    device: torch.device | str | None = "auto",
) -> tuple[torch.Tensor, np.ndarray]:
    """Train the models ``seeds`` together on ``device``; return params ``[M, P]`` (on the
    CPU) and the mean training loss of each model's last epoch ``[M]`` (of its last
    trained epoch, if it stopped early: :func:`train_models_epochs` also returns how many
    epochs each trained)."""
    params, loss, _ = train_models_epochs(pop, seeds, on_epoch, device)
    return params, loss


def train_models_epochs(
    pop: Population,
    seeds: list[int],
    on_epoch: Callable[[int], None] | None = None,
    device: torch.device | str | None = "auto",
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """:func:`train_models`, plus the epochs each model trained ``[M]`` (fewer than
    ``config.epochs`` for a model stopped by the early-stop rule)."""
    dev = devmod.resolve(device)
    if isinstance(pop.arch, ConvSpec):
        params, stopper = train_conv_models(pop, pop.arch, seeds, on_epoch, dev)
    else:
        params, stopper = train_mlp_models(pop, pop.arch, seeds, on_epoch, dev)
    n = len(pop.dataset.x_train)
    return params.cpu(), (stopper.loss.cpu().double() / n).numpy(), stopper.epochs


def train_mlp_models(
    pop: Population,
    arch: ArchSpec,
    seeds: list[int],
    on_epoch: Callable[[int], None] | None,
    dev: torch.device,
) -> tuple[torch.Tensor, _Stopper]:
    """MLPs for :func:`train_models_epochs`: model-major params ``[M, P]`` on ``dev``, and
    the early-stop record (with the summed training loss of each model's last trained
    epoch, ``_Stopper.loss``). The stacked params live layer-major in one buffer; forward and
    backward are :class:`ArchSpec`'s batched matmuls, with no autograd."""
    cfg, ds = pop.config, pop.dataset
    gens = [pop.generator(s) for s in seeds]
    m = len(seeds)
    init = torch.stack([arch.init(g) for g in gens])  # drawn on the CPU, as every draw
    buf = arch.to_layer_major(init).to(dev).requires_grad_(True)
    buf.grad = torch.zeros_like(buf)
    layers, grads = arch.layer_views(buf.detach(), m), arch.layer_views(buf.grad, m)
    opt = cfg.make_optimizer([buf])
    lik = for_task(ds.task)
    x, y = torch.from_numpy(ds.x_train).to(dev), torch.from_numpy(ds.y_train).to(dev)
    n, bs = x.shape[0], cfg.batch_size
    masks = None
    loss = torch.zeros(m, device=dev)
    # a stopped model's rows of the layer-major buffer
    stopper = _Stopper(
        pop, m, lambda rows: arch.to_layer_major(rows[:, None].expand(m, arch.n_params))
    )
    for epoch in range(cfg.epochs):
        order = _start_epoch(opt, cfg, epoch, gens, n, dev)
        loss.zero_()
        for start in range(0, n, bs):
            idx = order[:, start : start + bs]
            b = idx.shape[1]
            flat_idx = idx.reshape(-1)
            if arch.dropout > 0:
                masks = [t.to(dev) for t in dropout_masks(arch, gens, b)]
            with torch.no_grad():
                keep: list[torch.Tensor] = []
                xb = x.index_select(0, flat_idx).view(m, b, -1)
                out = arch.forward(layers, xb, keep, masks)
                nll, dout = lik.nll_and_grad(
                    out, y.index_select(0, flat_idx).view(m, b, *y.shape[1:])
                )
                arch.backward(layers, keep, dout.div_(b), grads, masks)
            opt.step()
            stopper.restore(buf.detach())
            loss += nll
        stopper.end_epoch(epoch, loss, buf.detach(), lambda: arch.to_model_major(buf.detach(), m))
        if on_epoch is not None:
            on_epoch(m)
    return arch.to_model_major(buf.detach(), m), stopper


def train_conv_models(
    pop: Population,
    arch: ConvSpec,
    seeds: list[int],
    on_epoch: Callable[[int], None] | None,
    dev: torch.device,
) -> tuple[torch.Tensor, _Stopper]:
    """Conv nets for :func:`train_models_epochs` (returns as :func:`train_mlp_models`): the
    stacked params ``[M, P]`` are one leaf tensor, each model sees its own minibatch
    (``ConvSpec.forward`` on ``[M, B, n_inputs]``, the models as the groups of grouped
    convs), autograd computes the gradient of the sum over models of each model's mean NLL
    (so each model's gradient is its own), and ``cfg.make_optimizer`` steps all models at
    once. Init and data order are drawn from each model's generator exactly as for MLPs.

    A block of one model trains two copies of it (and returns one): oneDNN computes an
    ungrouped conv's weight gradient in another summation order than a grouped one's, so a
    lone model would differ from the same seed in a block in the last bits. With
    ``groups = M*groups >= 2`` each model's arithmetic is the same whatever ``M`` and its row
    (``ConvSpec.forward`` also avoids the two other row-dependent roundings found: a global
    average pool over a channels-last map, and MKL's batched sgemm of tiny linear layers)."""
    cfg, ds = pop.config, pop.dataset
    gens = [pop.generator(s) for s in seeds]
    lone = len(seeds) == 1
    m = 2 if lone else len(seeds)
    init = torch.stack([arch.init(g) for g in gens])  # drawn on the CPU, as every draw
    params = (init.repeat(2, 1) if lone else init).to(dev).requires_grad_(True)
    opt = cfg.make_optimizer([params])
    lik = for_task(ds.task)
    x, y = torch.from_numpy(ds.x_train).to(dev), torch.from_numpy(ds.y_train).to(dev)
    n, bs = x.shape[0], cfg.batch_size
    # one-channel images: kept pixel-major, so that each step's minibatches are gathered
    # straight into the conv's layout (ConvSpec.minibatch_maps)
    x_t = x.reshape(n, -1).t().contiguous() if arch.input[0] == 1 else None
    loss = torch.zeros(m, device=dev)
    # a lone model trains as two copies: its rows in both
    stopper = _Stopper(pop, len(seeds), lambda rows: rows.repeat(2) if lone else rows)
    masks: list[torch.Tensor | None] | None = None

    def current() -> torch.Tensor:  # the models' params now (not a lone model's copy)
        return params.detach()[: len(seeds)]

    for epoch in range(cfg.epochs):
        order = _start_epoch(opt, cfg, epoch, gens, n, dev)
        order = order.repeat(2, 1) if lone else order
        loss.zero_()
        for start in range(0, n, bs):
            idx = order[:, start : start + bs]
            b = idx.shape[1]
            flat_idx = idx.reshape(-1)
            if arch.dropout > 0:
                masks = [
                    None if t is None else t.to(dev) for t in conv_dropout_masks(arch, gens, b)
                ]
                if lone:
                    masks = [
                        None if t is None else t.repeat(2, *[1] * (t.dim() - 1)) for t in masks
                    ]
            if x_t is not None:
                out = arch.forward(params, arch.minibatch_maps(x_t, idx), masks, maps=True)
            else:
                out = arch.forward(params, x.index_select(0, flat_idx).view(m, b, -1), masks)
            with torch.no_grad():
                nll, dout = lik.nll_and_grad(
                    out.detach(), y.index_select(0, flat_idx).view(m, b, *y.shape[1:])
                )
            params.grad = None
            out.backward(dout.div_(b))
            opt.step()
            stopper.restore(params.detach())
            loss += nll
        k = len(seeds)
        stopper.end_epoch(epoch, loss[:k], params.detach(), current)
        if on_epoch is not None:
            on_epoch(len(seeds))
    return current(), stopper


def _start_epoch(
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    epoch: int,
    gens: list[torch.Generator],
    n: int,
    dev: torch.device,
) -> torch.Tensor:
    """Set the epoch's learning rate; return each model's data order ``[M, n]`` on ``dev``,
    drawn from its own (CPU) generator. The models' draws are split over threads
    (:func:`bnnctl.threads.in_blocks`), each permutation on one thread: the same
    permutations as one after another, and faster (torch's own multi-threaded
    ``randperm`` is slower than one thread on these sizes; figures in README)."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr_at(epoch)
    order = torch.empty((len(gens), n), dtype=torch.int64)

    def work(lo: int, hi: int) -> None:
        for k in range(lo, hi):
            torch.randperm(n, generator=gens[k], out=order[k])

    in_blocks(len(gens), work)
    return order.to(dev)


class _Stopper:
    """The early-stop rule of ``pop.config`` on a block of ``m`` models: tracks each
    model's last-epoch loss and epochs trained; after epoch ``stop_after_epoch`` marks the
    models whose test accuracy (each model evaluated alone, so the decision does not
    depend on the block) is below ``stop_below_acc``; :meth:`restore` then puts their
    parameters back after each optimizer step. ``to_buffer(rows)``: the elements of the
    trainer's buffer that hold the models marked in the boolean ``rows [m]``."""

    def __init__(
        self, pop: Population, m: int, to_buffer: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.pop, self.to_buffer = pop, to_buffer
        self.epochs = np.full(m, pop.config.epochs, dtype=np.int64)
        self.frozen = np.zeros(m, dtype=bool)
        self.loss = torch.zeros(m)
        self.where: torch.Tensor | None = None  # where in the buffer frozen values lie
        self.values: torch.Tensor | None = None

    def end_epoch(
        self,
        epoch: int,
        loss: torch.Tensor,
        buf: torch.Tensor,
        params: Callable[[], torch.Tensor],
    ) -> None:
        """Record the epoch's loss of the models still training; after the rule's epoch,
        mark the models under the threshold and keep their values in ``buf`` (the
        trainer's buffer) for :meth:`restore` (``params()``: the block's model-major
        ``[m, P]`` params)."""
        live = torch.from_numpy(~self.frozen).to(loss.device)
        self.loss = torch.where(live, loss, self.loss.to(loss.device))
        cfg = self.pop.config
        if cfg.stop_after_epoch is None or epoch + 1 != cfg.stop_after_epoch:
            return
        assert cfg.stop_below_acc is not None
        acc = accuracy_alone(self.pop.arch, params(), self.pop.dataset)
        self.frozen = acc < cfg.stop_below_acc
        self.epochs[self.frozen] = epoch + 1
        if self.frozen.any():
            self.where = self.to_buffer(torch.from_numpy(self.frozen).to(buf.device))
            self.values = buf[self.where].clone()

    def restore(self, buf: torch.Tensor) -> None:
        if self.where is not None:
            assert self.values is not None
            buf[self.where] = self.values


def accuracy_alone(arch: AnyArch, params: torch.Tensor, ds: Dataset) -> np.ndarray:
    """Test-split accuracy ``[M]`` of model-major ``params [M, P]``, each model evaluated
    in its own forward pass (so a model's number does not depend on its neighbours)."""
    from bnnctl.evaluate import outputs
    from bnnctl.evaluate.metrics import evaluate

    lik = for_task(ds.task)
    x, y = (torch.from_numpy(a).to(params.device) for a in (ds.x_test, ds.y_test))
    with torch.no_grad():
        acc = [
            evaluate(lik, outputs(arch, params[k : k + 1], x), y)["acc"]
            for k in range(params.shape[0])
        ]
    return torch.cat(acc).cpu().double().numpy()


def conv_dropout_masks(
    arch: ConvSpec, gens: list[torch.Generator], batch: int
) -> list[torch.Tensor | None]:
    """Per-model element-wise dropout masks for one step of a conv net, one per dropout
    layer (``None`` for rate 0): ``[M, batch, *shape]`` (``ConvSpec.dropout_shapes``),
    Bernoulli(1 - p) from each model's own generator, scaled by 1/(1 - p) as
    ``nn.Dropout`` scales them. Model k draws layer by layer from its stream alone."""
    rates = [(arch.layers[i].rate, shape) for i, shape in arch.dropout_shapes()]
    return [bernoulli_masks(gens, (batch, *s), p) if p > 0 else None for p, s in rates]


def check_trainable(pop: Population) -> None:
    """Refuse what the trainer cannot do: the early-stop rule on a regression task (it
    stops on accuracy)."""
    if pop.config.stop_below_acc is not None and pop.dataset.task != "classification":
        raise UsageError(
            f"`stop_below_acc` stops on test accuracy; {pop.dataset.name} is a "
            f"{pop.dataset.task} dataset",
            "stop_below_acc",
        )


def dropout_masks(arch: ArchSpec, gens: list[torch.Generator], batch: int) -> list[torch.Tensor]:
    """Per-model dropout masks (scaled by 1/(1-p)) for one step, from each model's stream."""
    return [bernoulli_masks(gens, (batch, w), arch.dropout) for w in arch.widths[1:-1]]


def train_block(
    store: Store,
    pop: Population,
    seeds: list[int],
    data_path: str | None,
    on_epoch: Callable[[int], None] | None = None,
    allow_nonfinite: bool = False,
    device: torch.device | str | None = "auto",
) -> pd.DataFrame:
    """Train one block of seeds on ``device`` and commit it to the store: ``block ->
    manifest rows``. A block with a non-finite model is refused whole unless
    ``allow_nonfinite``."""
    block = trained_block(pop, seeds, data_path, on_epoch, allow_nonfinite, device)
    return commit_trained(store, pop, [block])[0]


def trained_block(
    pop: Population,
    seeds: list[int],
    data_path: str | None,
    on_epoch: Callable[[int], None] | None = None,
    allow_nonfinite: bool = False,
    device: torch.device | str | None = "auto",
) -> Block:
    """One block of seeds trained and evaluated on ``device``, ready to commit."""
    t0 = time.perf_counter()
    dev = devmod.resolve(device)
    params, train_loss, trained = train_models_epochs(pop, seeds, on_epoch, dev)
    stored = params.to(getattr(torch, pop.dtype)).float()  # metrics of the weights as stored
    metrics = metrics_of(pop.arch, for_task(pop.dataset.task), stored, pop.dataset, dev)
    block = f"s{seeds[0]:06d}-{seeds[-1]:06d}"
    if not allow_nonfinite:
        popmod.check_finite(
            [pop.model_id(s) for s in seeds],
            stored.numpy(),
            {"train_loss": train_loss, **metrics},
            f"block {pop.name}/{block}",
            "lower `lr`",
        )
    wall = (time.perf_counter() - t0) / len(seeds)
    cfg = pop.config.columns()
    rows = []
    for i, seed in enumerate(seeds):
        rows.append(
            {
                "model_id": pop.model_id(seed),
                "kind": "train",
                "method": pop.config.optimizer,
                "population": pop.name,
                "seed": seed,
                **popmod.data_columns(pop.dataset, data_path),
                "parent_id": None,
                "config_sha256": pop.sha256,
                **cfg,
                "epochs": int(trained[i]),  # fewer than configured if stopped early
                "device": devmod.describe(dev),
                "wall_time_s": wall,
                "train_loss": float(train_loss[i]),
                **{k: float(v[i]) for k, v in metrics.items()},
            }
        )
    return Block(f"params/{pop.name}/{block}", params.numpy(), pop.dtype, pop.arch, rows)


def commit_trained(store: Store, pop: Population, blocks: list[Block]) -> list[pd.DataFrame]:
    """Commit trained blocks in one manifest transaction; refuses (after the commit) when
    another writer committed some of their seeds first with another configuration."""
    committed = store.commit_blocks(blocks)
    if sum(map(len, committed)) < sum(len(b.rows) for b in blocks):
        plan(store, pop, [r["seed"] for b in blocks for r in b.rows])
    return committed


def _train_in_batches(
    store: Store,
    pop: Population,
    blocks: list[list[int]],
    data_path: str | None,
    progress: Callable[[int], None] | None,
    allow_nonfinite: bool,
    dev: str,
) -> list[pd.DataFrame]:
    """Blocks in this process, committed a few at a time: whenever the blocks trained
    since the last commit took :data:`COMMIT_EVERY_S`, and at the end. A commit costs
    about 20 ms however few its rows, so tiny models (blocks of milliseconds) share
    commits and large ones commit every block."""
    done: list[pd.DataFrame] = []
    waiting: list[Block] = []
    since = time.perf_counter()
    for i, seeds in enumerate(blocks):
        waiting.append(trained_block(pop, seeds, data_path, progress, allow_nonfinite, dev))
        if time.perf_counter() - since >= COMMIT_EVERY_S or i == len(blocks) - 1:
            done += commit_trained(store, pop, waiting)
            waiting, since = [], time.perf_counter()
    return done


def make_population(
    dataset: Dataset,
    config: TrainConfig,
    arch: AnyArch | None = None,
    name: str | None = None,
    dtype: str = "float32",
) -> Population:
    """Validate a population request (before anything touches a store)."""
    arch = arch or ArchSpec(dataset.default_arch_widths())
    check_arch(arch, dataset)
    name = popmod.check_name(name or dataset.name)
    if dtype not in DTYPES:
        raise UsageError.choice("dtype", dtype, DTYPES)
    pop = Population(name, arch, config, dataset, dtype)
    check_trainable(pop)
    return pop


@dataclass
class TrainResult:
    requested: int
    skipped: int
    rows: pd.DataFrame  # the rows this call committed


def plan(store: Store, pop: Population, seeds: Iterable[int]) -> list[int]:
    """The requested seeds not yet committed; refuses a population of another config."""
    mine = popmod.claim_population(store, pop.name, pop.sha256, lambda r: describe_conflict(pop, r))
    done = set(mine["seed"].dropna().astype(int))
    return [s for s in seeds if s not in done]


def describe_conflict(pop: Population, row: pd.Series) -> str:
    if row["kind"] != "train":
        return (
            f"population {pop.name!r} holds {row['kind']} rows; "
            "pass another `population` NAME for a new one"
        )
    mine = {
        "arch": pop.arch.to_json(),
        "dataset sha256": pop.dataset.sha256,
        "dtype": pop.dtype,
        **pop.config.columns(),
    }
    theirs = {
        "arch": row["arch"],
        "dataset sha256": row["data_sha256"],
        "dtype": row["dtype"],
        **{k: row[k] for k in pop.config.columns()},
    }
    diffs = [f"{k} {theirs[k]} (asked: {mine[k]})" for k in mine if str(theirs[k]) != str(mine[k])]
    if "arch" in [d.split(" ")[0] for d in diffs]:
        diffs = [
            f"arch {row['arch_name']} {row['activation']} "
            f"(asked: {pop.arch.name} {pop.arch.activation})"
        ] + [d for d in diffs if not d.startswith("arch ")]
    return (
        f"population {pop.name!r} was trained with {'; '.join(diffs) or 'another configuration'}; "
        "use the same settings to extend it, or another `population` NAME for a new population"
    )


def train(
    store: Store | str,
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    seeds: Iterable[int] = range(8),
    arch: AnyArch | None = None,
    population: str | None = None,
    block_size: int = 32,
    jobs: int = 1,
    dtype: str = "float32",
    progress: Callable[[int], None] | None = None,
    allow_nonfinite: bool = False,
    scheduler: str | None = None,
    device: str = "auto",
) -> TrainResult:
    """Train ``seeds`` of a population into ``store``, skipping those already committed.
    Every argument is checked before anything is written, and the store's room and the
    machine's memory before anything is trained; ``store`` may be a path or URL, then
    opened (created) only after the checks. ``progress(n)`` is called as model-epochs
    complete (n at a time; a block's at once when it runs in a worker). ``jobs`` > 1
    runs blocks in that many spawned processes; ``scheduler`` (``local:N`` or
    ``tcp://HOST:PORT``) on Dask workers instead: the same rows, bit for bit. ``device``
    (:mod:`bnnctl.device`) is where blocks train; Dask workers resolve it themselves."""
    pop = make_population(dataset, config, arch, population, dtype)
    sched = schedmod.require(scheduler)
    dev = devmod.checked(device, sched is not None)
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise UsageError(
            f"`block_size` must be in 1..{MAX_BLOCK_SIZE}, got {block_size}", "block_size"
        )
    if jobs < 1:
        raise UsageError(f"`jobs` must be at least 1, got {jobs}", "jobs")
    if sched is not None and jobs > 1:
        raise UsageError("give `jobs` or `scheduler`, not both", "scheduler")
    seeds = list(seeds)
    if not seeds:
        raise UsageError("no `seeds` requested", "seeds")
    if min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise UsageError(
            f"`seeds` must be non-negative and at most 2**62, got {min(seeds)}..{max(seeds)}",
            "seeds",
        )
    m = min(block_size, len(seeds))
    at_once = (sched.local_slots or 1) if sched is not None else jobs  # blocks here at once
    popmod.check_memory(
        at_once * block_memory(pop, m),
        f"training {at_once} block(s) of {m} x {pop.arch.name}",
        "lower `block_size` or the arch's widths",
        None if sched is not None else devmod.resolve(dev),
    )
    if not isinstance(store, Store):
        store = Store.open(store, create=True)
    if sched is not None:
        schedmod.location(store)  # refuses a store the workers cannot reach
    todo = plan(store, pop, seeds)
    blocks = [todo[i : i + block_size] for i in range(0, len(todo), block_size)]
    if not blocks:
        return TrainResult(len(seeds), len(seeds), store.manifest().iloc[0:0])
    store.check_writable(
        len(todo) * pop.arch.n_params * np.dtype(dtype).itemsize + dataset_bytes(dataset)
    )
    data_path = store.put_dataset(dataset)
    if sched is not None:
        _run_scheduled(store, pop, blocks, data_path, sched, progress, allow_nonfinite, dev)
        # A block re-run after its worker died may find its rows committed by the killed
        # attempt: report the rows committed for the seeds to do, whoever committed them.
        store = Store.open(store.url)
        mine = store.population(pop.name)
        done = [mine[mine["seed"].isin(todo)].sort_values("seed")]
    elif jobs == 1:
        done = _train_in_batches(store, pop, blocks, data_path, progress, allow_nonfinite, dev)
    else:
        done = _run_parallel(
            store.url, pop, blocks, data_path, jobs, progress, allow_nonfinite, dev
        )
    store.maybe_compact()
    return TrainResult(len(seeds), len(seeds) - len(todo), pd.concat(done, ignore_index=True))


def block_memory(pop: Population, m: int) -> int:
    """Estimated peak bytes of training and evaluating a block of ``m`` models: the stacked
    params with their gradients, optimizer moments and copies; the minibatch activations
    kept for the backward pass; the evaluation's outputs and hidden chunks."""
    from bnnctl.evaluate import EVAL_CHUNK

    n_eval = max(len(pop.dataset.x_train), len(pop.dataset.x_test))
    if isinstance(pop.arch, ConvSpec):
        return conv_block_memory(pop.arch, pop.config, n_eval, m)
    w = pop.arch.widths
    floats = (
        6 * m * pop.arch.n_params
        + 3 * m * pop.config.batch_size * sum(w[1:])
        + 2 * m * min(EVAL_CHUNK, n_eval) * max(w[1:])
        + m * n_eval * w[-1]
    )
    return 4 * floats


def conv_block_memory(arch: ConvSpec, cfg: TrainConfig, n_eval: int, m: int) -> int:
    """:func:`block_memory` of a conv net: params, gradients, optimizer moments and
    copies (6 floats a parameter); per image and model, every layer's feature map
    (``ConvSpec.feature_sizes``) kept for autograd's backward, twice over for the
    gradients flowing back and a conv's unfolded input, times the minibatch; evaluation
    chunks of ``EVAL_CHUNK`` images through all ``m`` models (the two largest maps
    alive at once); the outputs on the whole evaluation set; dropout masks; and the
    pixel-major copy of one-channel training images (``train_conv_models``)."""
    from bnnctl.evaluate import EVAL_CHUNK

    sizes = arch.feature_sizes()
    k2 = max([ly.kernel**2 for ly in arch.layers if ly.op == "conv"], default=1)
    per_image = 3 * sum(sizes[1:]) + sizes[0] * (1 + k2)
    per_image += sum(math.prod(s) for _, s in arch.dropout_shapes())  # dropout masks
    top2 = sum(sorted(sizes[1:])[-2:])
    floats = (
        6 * m * arch.n_params
        + m * cfg.batch_size * per_image
        + min(EVAL_CHUNK, n_eval) * (m * top2 + sizes[0] * k2)
        + m * n_eval * arch.n_outputs
        + (n_eval * sizes[0] if arch.input[0] == 1 else 0)
    )
    return 4 * floats


def dataset_bytes(ds: Dataset) -> int:
    return sum(a.nbytes for a in ds.arrays().values())


def _worker_init(threads: int, queue) -> None:
    torch.set_num_threads(threads)
    global _progress_queue
    _progress_queue = queue


_progress_queue: Any = None  # a worker's queue to the parent's progress bar


def _worker_block(
    url: str,
    pop: Population,
    seeds: list[int],
    data_path: str | None,
    allow_nonfinite: bool,
    device: str,
) -> pd.DataFrame:
    store = Store.open(url)
    return train_block(store, pop, seeds, data_path, _progress_queue.put, allow_nonfinite, device)


def _run_parallel(
    url, pop, blocks, data_path, jobs, progress, allow_nonfinite, device
) -> list[pd.DataFrame]:
    """Blocks in ``jobs`` spawned worker processes, each owning whole blocks."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    q = ctx.Manager().Queue()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads, q)
    ) as ex:
        futures = [
            ex.submit(_worker_block, url, pop, b, data_path, allow_nonfinite, device)
            for b in blocks
        ]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2)
            while True:
                try:
                    n = q.get_nowait()
                except queue_mod.Empty:
                    break
                if progress is not None:
                    progress(n)
        return [f.result() for f in futures]


def _scheduled_block(
    seeds: list[int],
    url: str,
    pop: Population,
    data_path: str | None,
    allow_nonfinite: bool,
    device: str,
) -> pd.DataFrame:
    """One block on a Dask worker: open the store, train on the worker's ``device``
    (``auto``: its GPU if it has one), commit (as in-process)."""
    return train_block(Store.open(url), pop, seeds, data_path, None, allow_nonfinite, device)


def _run_scheduled(
    store: Store,
    pop: Population,
    blocks: list[list[int]],
    data_path: str | None,
    sched: schedmod.Scheduler,
    progress: Callable[[int], None] | None,
    allow_nonfinite: bool,
    device: str,
) -> None:
    """Blocks on Dask workers (:mod:`bnnctl.scheduler`), one task each; the worker
    commits its block (the caller reads the committed rows from the store). ``progress``
    advances by a block's model-epochs as it finishes."""

    def done(i: int, rows: pd.DataFrame) -> None:
        if progress is not None:
            progress(len(blocks[i]) * pop.config.epochs)

    with schedmod.connect(sched) as cluster:
        cluster.map(
            _scheduled_block,
            [(b,) for b in blocks],
            (schedmod.location(store), pop, data_path, allow_nonfinite, device),
            done,
            lambda i: f"block {pop.name}/s{blocks[i][0]:06d}-{blocks[i][-1]:06d}",
        )
