"""The train engine: many seeds at once on stacked parameters.

A population is a named set of models trained with one configuration. Its models are
trained a block at a time: ``M`` models as one ``[M, n_params]`` tensor, batched matmuls
for the forward and backward pass (arch.py), and one ``torch.optim`` optimizer (fused
Adam or SGD) over the stacked tensor, which is elementwise and therefore exactly a
per-model optimizer. A block is ``block -> manifest rows`` with no shared state but the
store, so blocks can run in worker processes (``jobs``) or on a distributed engine.

Model k's initialisation and data order come from its own generator, seeded by
(population config, k) alone: the same seed gives the same weights whatever the block.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from bnnctl.arch import ArchSpec
from bnnctl.data import Dataset
from bnnctl.errors import ConflictError, UsageError
from bnnctl.likelihood import for_task
from bnnctl.metrics import evaluate
from bnnctl.store import DTYPES, Store

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
EVAL_CHUNK = 2048


@dataclass(frozen=True)
class TrainConfig:
    """How each model of a population is trained. ``weight_decay`` is coupled L2 on the
    mean loss, as in ``torch.optim``: it corresponds to a Gaussian prior of precision
    ``N * weight_decay`` on the summed log-likelihood of N training points."""

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 128
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        for name in ("lr", "epochs", "batch_size"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UsageError("weight decay must be >= 0 and momentum in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise UsageError("nesterov needs --optimizer sgd with momentum > 0")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of an epoch: constant; cosine from lr to 0 over the epochs; or
        step, ×0.1 at 50 % and again at 75 % of the epochs."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            return self.lr * 0.1 ** ((epoch >= self.epochs // 2) + (epoch >= (3 * self.epochs) // 4))
        return self.lr

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The torch.optim optimizer; on stacked params it is exactly one per model."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        return torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
            weight_decay=self.weight_decay, foreach=True,
        )


@dataclass(frozen=True)
class Population:
    """Everything a model's weights depend on, except its seed."""

    name: str
    arch: ArchSpec
    config: TrainConfig
    dataset: Dataset
    dtype: str = "float32"
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", self._digest(with_dtype=True))

    def _digest(self, with_dtype: bool) -> str:
        desc = {"arch": self.arch.to_json(), "config": asdict(self.config), "data": self.dataset.sha256}
        if with_dtype:
            desc["dtype"] = self.dtype
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def generator(self, seed: int) -> torch.Generator:
        """Model ``seed``'s own random stream: init first, then one permutation per epoch.
        Independent of the stored dtype: a float16 population holds the float32 one, rounded."""
        digest = hashlib.sha256(f"{self._digest(with_dtype=False)}:{seed}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def model_id(self, seed: int) -> str:
        return f"{self.name}.{seed:06d}"


def check_arch(arch: ArchSpec, ds: Dataset) -> None:
    if arch.widths[0] != ds.n_features:
        raise UsageError(f"{arch.name} takes {arch.widths[0]} inputs but {ds.name} has {ds.n_features} features")
    ok = {ds.n_outputs} | ({1} if ds.n_classes == 2 else set())
    if arch.widths[-1] not in ok:
        what = f"{ds.n_classes} classes" if ds.task == "classification" else f"{ds.n_outputs} targets"
        raise UsageError(f"{arch.name} has {arch.widths[-1]} outputs but {ds.name} has {what}")


def outputs(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, N, out]`` of stacked models on shared inputs, in chunks of points."""
    with torch.no_grad():
        return torch.cat([arch.forward(flat, x[i : i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)], 1)


def metrics_of(arch: ArchSpec, lik, flat: torch.Tensor, ds: Dataset) -> dict[str, np.ndarray]:
    """Train and test metrics ``{train_acc: [M], ...}`` of stacked models."""
    out = {}
    for split in ("train", "test"):
        x, y = torch.from_numpy(getattr(ds, f"x_{split}")), torch.from_numpy(getattr(ds, f"y_{split}"))
        for k, v in evaluate(lik, outputs(arch, flat, x), y).items():
            out[f"{split}_{k}"] = v.double().numpy()
    return out


def train_models(
    pop: Population,
    seeds: list[int],
    on_epoch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Train the models ``seeds`` together; return params ``[M, P]`` and the mean training
    loss of each model's last epoch ``[M]``."""
    arch, cfg, ds = pop.arch, pop.config, pop.dataset
    gens = [pop.generator(s) for s in seeds]
    m = len(seeds)
    buf = arch.to_layer_major(torch.stack([arch.init(g) for g in gens])).requires_grad_(True)
    buf.grad = torch.zeros_like(buf)
    layers, grads = arch.layer_views(buf.detach(), m), arch.layer_views(buf.grad, m)
    opt = cfg.make_optimizer([buf])
    lik = for_task(ds.task)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    n, bs = x.shape[0], cfg.batch_size
    masks = None
    loss = torch.zeros(m)
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        order = torch.stack([torch.randperm(n, generator=g) for g in gens])
        loss.zero_()
        for start in range(0, n, bs):
            idx = order[:, start : start + bs]
            b = idx.shape[1]
            flat_idx = idx.reshape(-1)
            if arch.dropout > 0:
                masks = dropout_masks(arch, gens, b)
            with torch.no_grad():
                keep: list[torch.Tensor] = []
                xb = x.index_select(0, flat_idx).view(m, b, -1)
                out = arch.forward(layers, xb, keep, masks)
                nll, dout = lik.nll_and_grad(out, y.index_select(0, flat_idx).view(m, b, *y.shape[1:]))
                arch.backward(layers, keep, dout.div_(b), grads, masks)
            opt.step()
            loss += nll
        if on_epoch is not None:
            on_epoch(m)
    return arch.to_model_major(buf.detach(), m), (loss.double() / n).numpy()


def dropout_masks(arch: ArchSpec, gens: list[torch.Generator], batch: int) -> list[torch.Tensor]:
    """Per-model dropout masks (scaled by 1/(1-p)) for one step, from each model's stream."""
    keep = 1.0 - arch.dropout
    return [
        torch.stack([torch.bernoulli(torch.full((batch, w), keep), generator=g) for g in gens]).div_(keep)
        for w in arch.widths[1:-1]
    ]


def train_block(
    store: Store,
    pop: Population,
    seeds: list[int],
    data_path: str | None,
    on_epoch: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Train one block of seeds and commit it to the store: ``block -> manifest rows``."""
    t0 = time.perf_counter()
    params, train_loss = train_models(pop, seeds, on_epoch)
    stored = params.to(getattr(torch, pop.dtype)).float()  # metrics of the weights as stored
    metrics = metrics_of(pop.arch, for_task(pop.dataset.task), stored, pop.dataset)
    wall = (time.perf_counter() - t0) / len(seeds)
    cfg = asdict(pop.config)
    rows = []
    for i, seed in enumerate(seeds):
        rows.append({
            "model_id": pop.model_id(seed), "kind": "train", "method": pop.config.optimizer,
            "population": pop.name, "seed": seed, "dataset": pop.dataset.name,
            "task": pop.dataset.task, "data": data_path, "data_sha256": pop.dataset.sha256,
            "parent_id": None, "config_sha256": pop.sha256, **cfg,
            "wall_time_s": wall, "train_loss": float(train_loss[i]),
            **{k: float(v[i]) for k, v in metrics.items()},
        })
    block = f"s{seeds[0]:06d}-{seeds[-1]:06d}"
    return store.commit_block(
        f"params/{pop.name}/{block}", params.numpy(), pop.dtype, pop.arch, rows,
        f"train-{pop.name}-{block}",
    )


def make_population(
    dataset: Dataset,
    config: TrainConfig,
    arch: ArchSpec | None = None,
    name: str | None = None,
    dtype: str = "float32",
) -> Population:
    """Validate a population request (before anything touches a store)."""
    arch = arch or ArchSpec(dataset.default_arch_widths())
    check_arch(arch, dataset)
    name = name or dataset.name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise UsageError(f"population name {name!r} may use letters, digits, '_', '.', '-' only")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose {' or '.join(DTYPES)}")
    return Population(name, arch, config, dataset, dtype)


@dataclass
class TrainResult:
    requested: int
    skipped: int
    rows: pd.DataFrame  # the rows this call committed


def plan(store: Store, pop: Population, seeds: Iterable[int]) -> list[int]:
    """The requested seeds not yet committed; refuses a population of another config."""
    mine = store.population(pop.name)
    if not mine.empty:
        other = mine[mine["config_sha256"] != pop.sha256]
        if not other.empty:
            raise ConflictError(describe_conflict(pop, other.iloc[0]))
    done = set(mine["seed"].dropna().astype(int))
    return [s for s in seeds if s not in done]


def describe_conflict(pop: Population, row: pd.Series) -> str:
    if row["kind"] != "train":
        return f"population {pop.name!r} holds {row['kind']} rows; pass --population NAME for a new one"
    mine = {"arch": pop.arch.to_json(), "dataset sha256": pop.dataset.sha256, "dtype": pop.dtype,
            **{k: v for k, v in asdict(pop.config).items()}}
    theirs = {"arch": row["arch"], "dataset sha256": row["data_sha256"], "dtype": row["dtype"],
              **{k: row[k] for k in asdict(pop.config)}}
    diffs = [f"{k} {theirs[k]} (asked: {mine[k]})" for k in mine if str(theirs[k]) != str(mine[k])]
    if "arch" in [d.split(" ")[0] for d in diffs]:
        diffs = [f"arch {row['arch_name']} {row['activation']} (asked: {pop.arch.name} {pop.arch.activation})"] + [
            d for d in diffs if not d.startswith("arch ")]
    return (f"population {pop.name!r} was trained with {'; '.join(diffs) or 'another configuration'}; "
            "use the same settings to extend it, or --population NAME for a new population")


def train(
    store: Store,
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    seeds: Iterable[int] = range(8),
    arch: ArchSpec | None = None,
    population: str | None = None,
    block_size: int = 32,
    jobs: int = 1,
    dtype: str = "float32",
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``seeds`` of a population into ``store``, skipping those already committed.
    ``progress(n)`` is called as model-epochs complete (n at a time)."""
    pop = make_population(dataset, config, arch, population, dtype)
    if block_size < 1 or jobs < 1:
        raise UsageError("block size and jobs must be positive")
    seeds = list(seeds)
    if any(s < 0 for s in seeds):
        raise UsageError("seeds must be non-negative")
    todo = plan(store, pop, seeds)
    blocks = [todo[i : i + block_size] for i in range(0, len(todo), block_size)]
    if not blocks:
        return TrainResult(len(seeds), len(seeds), store.manifest().iloc[0:0])
    data_path = store.put_dataset(dataset)
    if jobs == 1:
        done = [train_block(store, pop, b, data_path, progress) for b in blocks]
    else:
        done = _run_parallel(store.url, pop, blocks, data_path, jobs, progress)
    return TrainResult(len(seeds), len(seeds) - len(todo), pd.concat(done, ignore_index=True))


def _worker_init(threads: int, queue) -> None:
    torch.set_num_threads(threads)
    global _progress_queue
    _progress_queue = queue


_progress_queue = None


def _worker_block(url: str, pop: Population, seeds: list[int], data_path: str | None) -> pd.DataFrame:
    return train_block(Store.open(url), pop, seeds, data_path, _progress_queue.put)


def _run_parallel(url, pop, blocks, data_path, jobs, progress) -> list[pd.DataFrame]:
    """Blocks in ``jobs`` spawned worker processes, each owning whole blocks."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    q = ctx.Manager().Queue()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads, q)) as ex:
        futures = [ex.submit(_worker_block, url, pop, b, data_path) for b in blocks]
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
