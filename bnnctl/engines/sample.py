"""The sample engine: many posterior chains at once, committed segment by segment.

A sample population is ``chains`` chains of one method, run together on stacked
parameters ``[M, P]``. Chains start from prior draws, or from checkpoints selected in the
manifest (``start``): one chain per selected row (multi-mode, ``parent_id`` = that
row), or all chains from a single row (single-mode); ``chains`` may be any multiple of
the number of rows (chain k starts from row k mod n).

The kept samples are committed in segments of ``segment`` samples per chain: one params
array and one manifest transaction per segment (the store's whole-shard, crash-safe
protocol).
Before each commit the engine saves the state after that segment — positions, momenta,
step sizes, optimizer moments and every chain's RNG state — under
``state/<population>/kept<k>``; after the commit the previous state is deleted. A killed
run re-run with the same arguments resumes from the state matching the last committed
segment and yields exactly the samples of an uninterrupted run. A chain whose energy or
parameters stop being finite is *divergent*: its later samples are not stored, and the
result reports it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

import bnnctl.device as devmod
import bnnctl.scheduler as schedmod
from bnnctl.arch import AnyArch, ArchSpec, arch_from_json
from bnnctl.data import Dataset
from bnnctl.engines import population as popmod
from bnnctl.errors import CheckError, StoreError, UsageError
from bnnctl.evaluate import check_arch, metrics_of
from bnnctl.evaluate.likelihood import for_task
from bnnctl.samplers import APPROXIMATIONS, NEED_START, SamplerConfig, build, check_supported
from bnnctl.samplers.base import Sampler, load_state, save_state, step_size_at
from bnnctl.samplers.posterior import LogPosterior
from bnnctl.store import Store, select

DEFAULT_CHAINS = 8
#: Rows per committed block aimed at when no segment size is given.
BLOCK_ROWS = 256
METRIC_CHUNK = 64


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything one sample population's rows depend on."""

    config: SamplerConfig
    arch: AnyArch
    dataset: Dataset
    data_path: str | None
    starts: torch.Tensor | None  # [chains, P] or None: prior draws
    parents: list[str | None]
    samples: int
    segment: int
    population: str
    seed: int
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        desc = {
            "config": self.config.as_dict(),
            "arch": self.arch.to_json(),
            "data": self.dataset.sha256,
            "parents": self.parents,
            "samples": self.samples,
            "segment": self.segment,
            "seed": self.seed,
        }
        object.__setattr__(self, "sha256", popmod.digest(desc))

    @property
    def chains(self) -> int:
        return len(self.parents)

    @property
    def n_segments(self) -> int:
        return -(-self.samples // self.segment)

    @property
    def total_steps(self) -> int:
        """Sampler updates (or draws) of the whole run, as ``progress`` counts them."""
        cfg = self.config
        burn_in = cfg.burn_in or 0
        if cfg.method in APPROXIMATIONS:
            return burn_in + (cfg.rank * cfg.thin if cfg.method == "swag" else 0) + self.samples
        return burn_in + self.samples * cfg.thin

    def generator(self, chain: int) -> torch.Generator:
        return popmod.generator(self.sha256, chain)

    def state_path(self, kept: int) -> str:
        return f"{self.population}/kept{kept:07d}"

    def array_path(self, seg: int) -> str:
        return f"params/{self.population}/seg{seg:06d}"


@dataclass
class SampleResult:
    population: str
    rows: pd.DataFrame  # rows committed by this call
    skipped_segments: int  # segments already in the store
    divergent: dict[int, int]  # chain -> sampler step at which it diverged
    divergent_transitions: int = 0  # HMC proposals rejected as divergent
    accept_rate: np.ndarray | None = None  # HMC, per chain


# --- planning ---------------------------------------------------------------------------


def make_plan(
    store: Store | str,
    config: SamplerConfig,
    samples: int,
    chains: int | None = None,
    dataset: Dataset | None = None,
    arch: AnyArch | None = None,
    start: pd.DataFrame | str | None = None,
    population: str | None = None,
    segment: int | None = None,
    seed: int = 0,
) -> tuple[Store, Plan]:
    """Validate the request and resolve chains, starts, data and names; returns the store
    (opened from a path or URL only once the request is valid, created when chains start
    from the prior) and the plan. Writes nothing but the dataset, once all is checked.
    ``start`` is a manifest selection, or a ``--where`` expression that makes one."""
    check_request(config, samples, chains, segment, start is not None)
    if not 0 <= seed <= popmod.MAX_SEED:
        raise UsageError(f"`seed` must be in 0..2**62, got {seed}", "seed")
    if start is None:
        if dataset is None:
            raise UsageError(
                "give a dataset, or `start` checkpoints whose data is in the store", "start"
            )
        arch = arch or ArchSpec(dataset.default_arch_widths())
        check_arch(arch, dataset)
        check_supported(config.method, arch)  # before the store is created
        chains = chains or DEFAULT_CHAINS
        starts, parents, data_path = None, [None] * chains, None
        store = store if isinstance(store, Store) else Store.open(store, create=True)
    else:
        store = store if isinstance(store, Store) else Store.open(store)
        if isinstance(start, str):
            if not start.strip():
                raise UsageError("`start` needs a manifest query", "start")
            start = select(store.manifest(), start)
        arch, dataset, data_path, starts, parents = _resolve_start(store, start, chains)
    check_arch(arch, dataset)
    check_supported(config.method, arch)
    if config.method == "mc_dropout" and arch.dropout <= 0:
        raise UsageError(
            f"MC dropout needs checkpoints trained with dropout; {arch.name} has none "
            "(train with --dropout RATE)"
        )
    if config.method == "mc_dropout" and arch.kind == "cnn":
        from bnnctl.samplers.mc_dropout import conv_fold_targets

        conv_fold_targets(arch)  # type: ignore[arg-type]  # one line naming an unfoldable layer
    name = popmod.check_name(population or f"{dataset.name}-{config.method}")
    seg = segment or max(1, min(samples, BLOCK_ROWS // len(parents)))
    popmod.check_memory(
        8 * 4 * len(parents) * arch.n_params,  # state, gradient, momentum, noise, copies
        f"running {len(parents)} chains of {arch.name}",
        "lower `chains`",
    )
    store.check_writable(len(parents) * samples * arch.n_params * 4)
    if start is None:
        data_path = store.put_dataset(dataset)
    return store, Plan(
        config, arch, dataset, data_path, starts, list(parents), samples, seg, name, seed
    )


def check_request(
    config: SamplerConfig, samples: int, chains: int | None, segment: int | None, has_start: bool
) -> None:
    """Checks that need no store (so that bad input never creates one)."""
    if samples < 1:
        raise UsageError(f"`samples` must be at least 1, got {samples}", "samples")
    if chains is not None and chains < 1:
        raise UsageError(f"`chains` must be at least 1, got {chains}", "chains")
    if segment is not None and segment < 1:
        raise UsageError(f"`segment` must be at least 1, got {segment}", "segment")
    if not has_start and config.method in NEED_START:
        raise UsageError(
            f"{config.method} works around trained checkpoints: give `start` checkpoints", "start"
        )


def _resolve_start(store: Store, start: pd.DataFrame, chains: int | None):
    if start.empty:
        raise UsageError("`start` selects no checkpoints", "start")
    if start["arch"].nunique() > 1:
        names = ", ".join(sorted(set(start["arch_name"] + " " + start["activation"])))
        raise UsageError(
            f"`start` mixes architectures ({names}); select checkpoints of one", "start"
        )
    if start["data_sha256"].nunique() > 1:
        raise UsageError(
            "`start` mixes checkpoints trained on different data; select one dataset", "start"
        )
    data = start["data"].iloc[0]
    if data is None or data is pd.NA or (isinstance(data, float) and np.isnan(data)):
        raise StoreError("the selected checkpoints' data is not kept in the store")
    n = len(start)
    chains = chains or n
    if chains % n:
        raise UsageError(
            f"`chains` {chains} is not a multiple of the {n} selected checkpoints", "chains"
        )
    order = [k % n for k in range(chains)]
    params = torch.from_numpy(store.read_params(start))[order]
    arch = arch_from_json(start["arch"].iloc[0])
    return (
        arch,
        store.load_data(data),
        data,
        params,
        [str(start["model_id"].iloc[i]) for i in order],
    )


def check_population(store: Store, plan: Plan) -> list[int]:
    """Indices of the population's committed segments; refuses another configuration."""
    return sorted({seg for segs in committed_blocks(store, plan).values() for seg in segs})


def committed_blocks(store: Store, plan: Plan) -> dict[range, list[int]]:
    """The population's committed segments by chain block (:func:`chain_block_of`);
    refuses another configuration, and blocks that overlap."""

    def describe(row: pd.Series) -> str:
        what = (
            f"{row['kind']} rows"
            if row["kind"] != "sample"
            else f"{row['method']} samples with other settings"
        )
        return (
            f"population {plan.population!r} already holds {what}; re-run with the same "
            "arguments to resume, or pass another `population` NAME for a new population"
        )

    mine = popmod.claim_population(store, plan.population, plan.sha256, describe)
    out: dict[range, set[int]] = {}
    for a in mine["array"]:
        out.setdefault(chain_block_of(a, plan.chains), set()).add(_segment_of(a))
    blocks = sorted(out, key=lambda b: b.start)
    for b, c in zip(blocks, blocks[1:], strict=False):
        if c.start < b.stop:
            raise StoreError(
                f"population {plan.population!r} has overlapping chain blocks "
                f"{_block_label(b)} and {_block_label(c)}; use a new `population`"
            )
    return {b: sorted(out[b]) for b in blocks}


def _segment_of(array: str) -> int:
    """The segment index in an array path ``params/<population>/[c<a>-<b>/]seg<k>.<attempt>``."""
    m = re.search(r"/seg(\d+)", array)
    if m is None:
        raise StoreError(f"array {array} of a sample population is not named by segment")
    return int(m.group(1))


def chain_block_of(array: str, chains: int) -> range:
    """The chains an array holds: ``params/<pop>/c<a>-<b>/seg<k>...`` holds chains a..b
    (a block run apart, e.g. on a Dask worker); ``params/<pop>/seg<k>...`` all of them."""
    m = re.search(r"/c(\d+)-(\d+)/seg\d+", array)
    if m is None:
        return range(chains)
    block = range(int(m.group(1)), int(m.group(2)) + 1)
    if not 0 <= block.start < block.stop <= chains:
        raise StoreError(f"array {array} names chains outside the population's {chains}")
    return block


def _block_label(chains: range) -> str:
    return f"c{chains.start:05d}-{chains.stop - 1:05d}"


def chain_blocks(plan: Plan, committed: dict[range, list[int]], parts: int) -> list[range]:
    """The chain blocks of this run: those already committed, as they are; the chains no
    block holds yet split into about ``parts`` contiguous blocks (1: all chains together,
    the in-process layout). Chains are independent (each has its own random stream and
    nothing mixes them), so a chain's samples do not depend on its block, up to last-bit
    rounding of matrix products whose kernels vary with the block's size (README)."""
    if not committed and parts <= 1:
        return [range(plan.chains)]
    free, pos = [], 0
    for b in sorted(committed, key=lambda b: b.start):
        if b.start > pos:
            free.append(range(pos, b.start))
        pos = b.stop
    if pos < plan.chains:
        free.append(range(pos, plan.chains))
    size = -(-sum(len(f) for f in free) // max(parts, 1))
    new = [range(i, min(i + size, f.stop)) for f in free for i in range(f.start, f.stop, size)]
    return sorted([*committed, *new], key=lambda b: b.start)


# --- running ----------------------------------------------------------------------------


def sample(
    store: Store | str,
    config: SamplerConfig,
    samples: int = 100,
    chains: int | None = None,
    dataset: Dataset | None = None,
    arch: AnyArch | None = None,
    start: pd.DataFrame | str | None = None,
    population: str | None = None,
    segment: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    scheduler: str | None = None,
    device: str = "auto",
) -> SampleResult:
    """Run (or resume) a sample population and commit its kept samples segment by
    segment. ``progress(n)`` is called as sampler updates (or draws) complete.
    ``scheduler`` (``local:N`` or ``tcp://HOST:PORT``) runs blocks of chains on Dask
    workers (:func:`run_plan`); ``device`` is where the chains run
    (:mod:`bnnctl.device`; Dask workers resolve it themselves)."""
    sched = schedmod.require(scheduler)  # checked before anything is written
    dev = devmod.checked(device, sched is not None)
    store, plan = make_plan(
        store, config, samples, chains, dataset, arch, start, population, segment, seed
    )
    return run_plan(store, plan, progress, scheduler, dev)


@dataclass
class ChainsResult:
    """What running one block of chains gives: its rows and the summary of its chains."""

    rows: pd.DataFrame
    divergent: dict[int, int]  # chain -> sampler step at which it diverged
    steps: int  # sampler updates (or draws) this call ran
    divergent_transitions: int = 0
    accept_rate: np.ndarray | None = None
    stopped: bool = False  # every chain of the block diverged: its later segments are empty


def run_plan(
    store: Store,
    plan: Plan,
    progress: Callable[[int], None] | None = None,
    scheduler: str | None = None,
    device: str = "auto",
) -> SampleResult:
    """Run (or resume) ``plan`` on ``device``. In this process, all chains run together; with
    ``scheduler`` they are split into about one block per Dask worker thread, each
    run (burn-in, then its segments, committed as ``params/<pop>/c<a>-<b>/seg<k>``) by a
    worker as one task. A resumed run keeps the blocks it finds committed, wherever it
    runs them; the samples are the same either way (bit for bit where the matrix products
    round alike, README)."""
    sched = schedmod.parse(scheduler)
    if sched is not None:
        schedmod.location(store)  # refuses a store the workers cannot reach
    committed = committed_blocks(store, plan)
    for segs in committed.values():
        if segs != list(range(len(segs))):
            raise StoreError(f"population {plan.population!r} has gaps in its committed segments")
    share = _Shares(progress or (lambda n: None), plan.chains)
    if all(len(committed.get(b, [])) >= plan.n_segments for b in chain_blocks(plan, committed, 1)):
        sched = None  # nothing left to run: no cluster needed
    if sched is None:
        blocks = chain_blocks(plan, committed, 1)
        results = [
            run_chains(store, plan, b, len(committed.get(b, [])), share.of(b), device)
            for b in blocks
            if len(committed.get(b, [])) < plan.n_segments
        ]
    else:
        with schedmod.connect(sched) as cluster:
            blocks = chain_blocks(plan, committed, cluster.slots)
            results = _run_scheduled(store, plan, blocks, committed, share, cluster, device)
        store = Store.open(store.url)  # workers committed: read the manifest afresh
    skipped = min(len(committed.get(b, [])) for b in blocks)
    result = SampleResult(plan.population, store.manifest().iloc[0:0], skipped, {})
    if not results:
        return result
    if all(r.stopped for r in results):
        raise _all_diverged(plan)
    store.remove_state(plan.population)  # the run is complete: no resume point needed
    store.maybe_compact()
    result.rows = pd.concat([r.rows for r in results], ignore_index=True)
    for r in results:
        result.divergent.update(r.divergent)
        result.divergent_transitions += r.divergent_transitions
    if len(results) == len(blocks) and all(r.accept_rate is not None for r in results):
        result.accept_rate = np.concatenate([r.accept_rate for r in results])
    return result


class _Shares:
    """Progress in updates of all chains, from blocks of chains: n updates of a block of
    k chains are n x k / chains updates (whole numbers, exact once all are counted)."""

    def __init__(self, progress: Callable[[int], None], chains: int) -> None:
        self.progress, self.chains, self.units, self.told = progress, chains, 0, 0

    def of(self, block: range) -> Callable[[int], None]:
        if len(block) == self.chains:
            return self.progress
        return lambda n: self.add(n * len(block))

    def add(self, chain_updates: int) -> None:
        self.units += chain_updates
        whole = self.units // self.chains - self.told
        if whole:
            self.told += whole
            self.progress(whole)


def _run_scheduled(
    store: Store,
    plan: Plan,
    blocks: list[range],
    committed: dict[range, list[int]],
    share: _Shares,
    cluster: schedmod.Cluster,
    device: str,
) -> list[ChainsResult]:
    """Each unfinished block of chains as one Dask task; progress advances by a block's
    share of its updates as it finishes."""
    todo = [b for b in blocks if len(committed.get(b, [])) < plan.n_segments]
    return cluster.map(
        _scheduled_chains,
        [(b, len(committed.get(b, []))) for b in todo],
        (plan, schedmod.location(store), device),
        lambda i, r: share.of(todo[i])(r.steps),
        lambda i: f"chains {_block_label(todo[i])} of {plan.population}",
    )


def _scheduled_chains(chains: range, done: int, plan: Plan, url: str, device: str) -> ChainsResult:
    """One block of chains on a Dask worker: open the store, run on the worker's
    ``device``, commit (as in-process)."""
    return run_chains(Store.open(url), plan, chains, done, None, device)


def run_chains(
    store: Store,
    plan: Plan,
    chains: range,
    done: int = 0,
    progress: Callable[[int], None] | None = None,
    device: str | torch.device = "auto",
) -> ChainsResult:
    """Run the block ``chains`` of ``plan`` on ``device`` from its ``done`` committed
    segments to the end: burn-in (or its saved state), then one committed segment after
    another. When every chain of the block has diverged, a block of all chains fails (a
    CheckError); a smaller block stops, and its later segments stay empty."""
    count = [0]

    def step(n: int) -> None:
        count[0] += n
        if progress is not None:
            progress(n)

    cfg, dev = plan.config, devmod.resolve(device)
    post = LogPosterior.of(
        plan.arch, plan.dataset, cfg.prior_var, cfg.temperature, cfg.noise_std, device=dev
    )
    sampler = build(cfg, post)
    result = ChainsResult(store.manifest().iloc[0:0], {}, 0)
    state = _restore(store, plan, chains, sampler, done, dev)
    if state is None:
        state = _burn_in(plan, chains, sampler, post, step)
        _save(store, plan, chains, state, 0)
    blocks = []
    for seg in range(done, plan.n_segments):
        state, block = _segment(store, plan, chains, sampler, state, seg, step, result.divergent)
        if block is None:
            if len(chains) == plan.chains:
                raise _all_diverged(plan)
            result.stopped = True
            break
        blocks.append(block)
    if blocks:
        result.rows = pd.concat(blocks, ignore_index=True)
    result.steps = count[0]
    if hasattr(state, "divergences"):
        result.divergent_transitions = int(state.divergences.sum())
        result.accept_rate = state.accept_rate.cpu().numpy()
    return result


def _all_diverged(plan: Plan) -> CheckError:
    return CheckError(
        f"every chain of population {plan.population!r} diverged (non-finite energy); "
        "nothing stored — lower --step-size"
    )


def _state_path(plan: Plan, chains: range, kept: int) -> str:
    if len(chains) == plan.chains:
        return plan.state_path(kept)
    return f"{plan.population}/{_block_label(chains)}/kept{kept:07d}"


def _array_path(plan: Plan, chains: range, seg: int) -> str:
    if len(chains) == plan.chains:
        return plan.array_path(seg)
    return f"params/{plan.population}/{_block_label(chains)}/seg{seg:06d}"


def _restore(
    store: Store, plan: Plan, chains: range, sampler: Sampler, committed: int, dev: torch.device
):
    saved = store.read_state(_state_path(plan, chains, committed * plan.segment))
    if saved is not None and saved[1].get("config_sha256") == plan.sha256:
        return load_state(sampler.state_type, *saved, device=dev)
    if committed:
        raise StoreError(
            f"cannot resume population {plan.population!r}: its sampler state after "
            f"segment {committed} is missing; use a new `population`"
        )
    return None


def _save(store: Store, plan: Plan, chains: range, state, kept: int) -> None:
    arrays, attrs = save_state(state)
    store.write_state(
        _state_path(plan, chains, kept),
        arrays,
        {**attrs, "config_sha256": plan.sha256, "kept": kept},
    )


def _burn_in(plan: Plan, chains: range, sampler: Sampler, post: LogPosterior, progress):
    """Start the chains (on the posterior's device) and run burn-in (MCMC) or the fit
    (approximations)."""
    gens = [plan.generator(k) for k in chains]
    if plan.starts is None:
        std = plan.config.prior_var**0.5
        starts = torch.stack([torch.randn(plan.arch.n_params, generator=g) * std for g in gens])
    else:
        starts = plan.starts[chains.start : chains.stop]
    state = sampler.init(starts.to(post.x.device), gens)
    steps = sampler.fit_steps if sampler.approximate else plan.config.burn_in
    for _ in range(steps or 0):
        state = sampler.update(state)
        progress(1)
    return state


def _segment(
    store: Store,
    plan: Plan,
    chains: range,
    sampler: Sampler,
    state,
    seg: int,
    progress,
    divergent: dict,
):
    """Run one segment of the block ``chains``, save the state after it, commit its
    samples; return both (the block None when no chain is left to store). Chains first
    seen divergent are added to ``divergent`` (chain -> step)."""
    t0 = time.perf_counter()
    c0 = chains.start
    k0, k1 = seg * plan.segment, min((seg + 1) * plan.segment, plan.samples)
    kept, info = [], []
    for i in range(k0, k1):
        if sampler.draw is not None:  # an approximation: draw from q
            theta = sampler.draw(state)
            progress(1)
        else:
            for _ in range(plan.config.thin):
                state = sampler.update(state)
                progress(1)
            theta = state.params
        ok = ~(state.diverged | ~torch.isfinite(theta).all(-1))
        for c in torch.nonzero(~ok).flatten().tolist():
            divergent.setdefault(c0 + c, state.step)
        kept.append(theta[ok].float())
        info.append(
            (i, state.step, ok.clone(), _step_sizes(plan, state, len(chains)), _accept(state))
        )
    params = torch.cat(kept)
    rows = [
        _row(plan, c0 + c, i, step, sizes[c], acc[c] if acc is not None else None)
        for i, step, ok, sizes, acc in info
        for c in torch.nonzero(ok).flatten().tolist()
    ]
    params, rows = _drop_nonfinite(plan, c0, params, rows, state, divergent)
    if seg == 0:
        params, rows = _add_summary(plan, c0, sampler, state, params, rows)
    if not rows:
        return state, None
    fitted = getattr(state, "prior_var", None)  # laplace_ll fits 1/δ per chain
    for r in rows:
        r["wall_time_s"] = (time.perf_counter() - t0) / len(rows)
        r["device"] = devmod.describe(state.params.device)
        if fitted is not None and len(fitted):
            r["prior_var"] = float(fitted[r["chain"] - c0])
    _save(store, plan, chains, state, k1)
    block = store.commit_block(
        _array_path(plan, chains, seg), params.cpu().numpy(), "float32", plan.arch, rows
    )
    store.remove_state(_state_path(plan, chains, k0))
    return state, block


def _drop_nonfinite(
    plan: Plan, c0: int, params: torch.Tensor, rows: list[dict], state, divergent: dict
):
    """Add metrics to the sample rows; a sample whose training NLL is not finite marks its
    chain divergent from there on (an SG step computes the energy only at its start).
    ``c0``: the first chain of the block (``state`` holds chains c0, c0+1, ...)."""
    if not rows:
        return params, rows
    metrics = _metrics(plan, params)
    bad_from: dict[int, int] = {}
    for j, r in enumerate(rows):
        r.update({k: float(v[j]) for k, v in metrics.items()})
        if not np.isfinite(r["train_nll"]) and r["chain"] not in bad_from:
            bad_from[r["chain"]] = r["sample_index"]
            divergent.setdefault(r["chain"], r["step"])
    if not bad_from:
        return params, rows
    state.diverged[[c - c0 for c in bad_from]] = True
    keep = [j for j, r in enumerate(rows) if r["sample_index"] < bad_from.get(r["chain"], 1 << 62)]
    return params[keep], [rows[j] for j in keep]


def _step_sizes(plan: Plan, state, m: int) -> list[float | None]:
    cfg = plan.config
    if cfg.method == "hmc":
        return state.step_size.tolist()
    if cfg.method in ("sgld", "sghmc"):
        return [step_size_at(cfg, state.step - 1)] * m
    return [cfg.step_size if cfg.step_size else None] * m


def _accept(state) -> list[float] | None:
    return state.accept_rate.tolist() if hasattr(state, "accept_rate") else None


def _row(
    plan: Plan, chain: int, index: int, step: int, size, accept, what: str | None = None
) -> dict:
    cfg, ds = plan.config, plan.dataset
    suffix = f"s{index:06d}" if what is None else what
    posterior = cfg.method != "mc_dropout"  # dropout masks on a checkpoint: no prior, no T
    return {
        "model_id": f"{plan.population}.c{chain:05d}.{suffix}",
        "kind": "sample",
        "method": cfg.method if what is None else f"{cfg.method}-{what}",
        "population": plan.population,
        "seed": chain,
        **popmod.data_columns(ds, plan.data_path),
        "config_sha256": plan.sha256,
        "parent_id": plan.parents[chain],
        "chain": chain,
        "step": step,
        "sample_index": index if what is None else None,
        "burn_in": cfg.burn_in,
        "accept_rate": accept,
        "step_size": size,
        "temperature": cfg.temperature if posterior else None,
        "prior_var": cfg.prior_var if posterior else None,
        "noise_std": cfg.noise_std if ds.task == "regression" else None,
        "batch_size": cfg.batch_size if cfg.method in ("sgld", "sghmc", "mfvi", "swag") else None,
    }


def _add_summary(plan: Plan, c0: int, sampler: Sampler, state, params, rows):
    """Append q's mean / std rows (approximations with a summary) to the first segment's
    block; the mean rows get metrics like samples, the std rows none. ``c0``: the first
    chain of the block."""
    if sampler.summary is None:
        return params, rows
    ok = torch.nonzero(~state.diverged).flatten().tolist()
    for what, value in sampler.summary(state).items():
        extra = [_row(plan, c0 + c, -1, state.step, None, None, what) for c in ok]
        if what == "mean" and extra:
            metrics = _metrics(plan, value[ok].float())
            for j, r in enumerate(extra):
                r.update({k: float(v[j]) for k, v in metrics.items()})
        params = torch.cat([params, value[ok].float()])
        rows = rows + extra
    return params, rows


def _metrics(plan: Plan, params: torch.Tensor) -> dict[str, np.ndarray]:
    """Train and test metrics of stacked params, in chunks of models."""
    lik = for_task(plan.dataset.task, plan.config.noise_std)
    parts = [
        metrics_of(plan.arch, lik, params[i : i + METRIC_CHUNK], plan.dataset)
        for i in range(0, len(params), METRIC_CHUNK)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
