"""The canonicalize engine: symmetry-free copies of stored checkpoints, checked.

For each selected source row it writes a new row (``kind = canonical``) holding the
canonical representative of the source's symmetry orbit (:mod:`bnnctl.symmetry`), or,
with a reference model, the source aligned to it by weight matching (``method =
align``). Sources are never modified. New rows carry ``parent_id``, the transform as
JSON, the L2 mass before and after, and ``max_logit_diff``: the largest absolute
difference of the outputs from the source's on the population's stored test data,
computed in float32 from the weights as stored. A row whose difference exceeds
``CHECK_RTOL × max|source output|`` is a :class:`CheckError` and its block is not
committed.

Rows are committed a block at a time with :meth:`Store.commit_block` (array first,
then one manifest transaction: the commit point). Ids, populations and block names are
derived from the source ids and the transform alone, so a re-run skips what is
committed (running twice adds nothing) and a crash leaves at most an unnamed array.

Canonical rows are always stored as float32: a float16 source is exactly float32, but
its transformed weights are not float16.

In process, when the sources and their canonical params fit in ``KEEP_BYTES``, each
source block is read once (its finite check), blocks are transformed and checked on
``WORKERS`` threads while one I/O thread reads and commits, and the report uses the
params and near-ties the run made instead of reading them back (:func:`_run_kept`). The
rows and the report are bit for bit those of the serial path, which larger runs and Dask
workers take.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

import bnnctl.device as devmod
import bnnctl.scheduler as schedmod
from bnnctl.arch import AnyArch, arch_from_json
from bnnctl.errors import CheckError, ConflictError, DataError, UsageError
from bnnctl.evaluate import outputs
from bnnctl.evaluate.likelihood import for_task
from bnnctl.evaluate.metrics import evaluate
from bnnctl.store import Store, select
from bnnctl.symmetry.action import l2_mass
from bnnctl.symmetry.canonical import canonicalize as canon_form
from bnnctl.symmetry.matching import weight_match
from bnnctl.symmetry.modes import MODE_RTOL, count_modes
from bnnctl.symmetry.scaling import count_dead
from bnnctl.symmetry.transform import DEFAULT_KEY, TIE_RTOL, Transform, make_transform

#: A canonical row's outputs may differ from its source's by CHECK_RTOL × max |output|.
CHECK_RTOL = 1e-5
BLOCK_SIZE = 256
#: Torch intra-op threads. The symmetry math is thousands of small tensor ops, where
#: OpenMP threads only add synchronisation (and on a busy machine each parallel region
#: can stall for milliseconds): it always runs on one thread. The function check is
#: large matmuls: torch's setting (None) by default. Measured on the shared 2-core
#: machine (scripts/bench_canonicalize.py, best of 3): check on 2 threads 1495 models/s
#: when the cores were free, but 2-4x slower than 1 thread (884 models/s) under load;
#: set CHECK_THREADS = 1 (or OMP_NUM_THREADS=1) on a busy machine.
MATH_THREADS = 1
CHECK_THREADS: int | None = None
#: Models per call of the symmetry math: small enough that a block's weights stay in cache.
MATH_BLOCK = 32
#: The in-process run keeps the sources it reads and the canonical params it makes in
#: memory (read once, and the report needs no re-read) when both together fit in this many
#: bytes; above it, each block is read again and the report reads the store (as with
#: Dask), so memory stays bounded for any population.
KEEP_BYTES = 2 * 2**30
#: Threads transforming blocks side by side in that run (None: torch's thread count, at
#: most MAX_WORKERS). Each runs its torch ops on one thread (the check too, whatever
#: CHECK_THREADS says): the symmetry math is many small ops, where threads inside each op
#: mostly wait, and two blocks at once keep both cores busy. Measured on 2 cores only;
#: beyond a few, the workers would mostly wait for each other's Python (the GIL).
WORKERS: int | None = None
MAX_WORKERS = 4
#: Columns copied from the source row (lineage, data, training config, sampler state).
INHERITED = (
    "seed",
    "dataset",
    "task",
    "data",
    "data_sha256",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "epochs",
    "batch_size",
    "schedule",
    "train_loss",
    "train_acc",
    "train_nll",
    "train_ece",
    "train_brier",
    "train_rmse",
    "chain",
    "step",
    "sample_index",
    "burn_in",
    "accept_rate",
    "step_size",
    "temperature",
    "prior_var",
    "noise_std",
)


@dataclass
class BlockResult:
    """Transformed ``[M, P]`` float32 params of one block and their checks."""

    params: np.ndarray
    max_diff: np.ndarray  # [M] max |Δ output|
    allowed: np.ndarray  # [M] CHECK_RTOL × max |source output|
    mass_before: np.ndarray
    mass_after: np.ndarray
    near_ties: np.ndarray
    outputs: torch.Tensor  # [M, N, out] outputs of the transformed models on x


def transform_block(
    arch: AnyArch,
    params: np.ndarray | torch.Tensor,
    transform: Transform,
    x: torch.Tensor,
    ref: torch.Tensor | None = None,
    out: np.ndarray | None = None,
) -> BlockResult:
    """Canonicalise (or align to ``ref``) a block of models and check the function on
    ``x``: both sides are evaluated in float32 from the weights as stored, on ``x``'s
    device (the symmetry math runs on the CPU; outputs come back to it). Works in
    chunks of ``MATH_BLOCK`` models, whose weights stay in cache. ``out``: a ``[M, P]``
    float32 array to hold the transformed params (then ``BlockResult.params`` is it)."""
    src = torch.as_tensor(params, dtype=torch.float32)
    ref64 = None
    if ref is not None:
        ref64 = canon_form(arch, ref.reshape(1, -1), _without_perm(transform)).params[0]
    new = torch.empty(src.shape, dtype=torch.float32) if out is None else torch.from_numpy(out)
    parts = []
    for i in range(0, len(src), MATH_BLOCK):
        chunk = src[i : i + MATH_BLOCK]
        with threads(MATH_THREADS):
            made, ties = _transform(arch, chunk, transform, ref64)
        dest = new[i : i + MATH_BLOCK]
        dest.copy_(made)  # written in place: no copy of the whole block afterwards
        with threads(CHECK_THREADS):
            on = x.device  # the check's device (bnnctl.device)
            src_out = outputs(arch, chunk.to(on), x).cpu()
            parts.append((ties, src_out, outputs(arch, dest.to(on), x).cpu()))
    ties = np.concatenate([p[0] for p in parts])
    out_src = torch.cat([p[1] for p in parts])
    out_new = torch.cat([p[2] for p in parts])
    return BlockResult(
        new.numpy(),
        (out_new - out_src).abs().amax((1, 2)).double().numpy(),
        CHECK_RTOL * out_src.abs().amax((1, 2)).double().clamp_min(1e-30).numpy(),
        l2_mass(arch, src).numpy(),
        l2_mass(arch, new).numpy(),
        ties,
        out_new,
    )


def _transform(arch: AnyArch, src: torch.Tensor, transform: Transform, ref64: torch.Tensor | None):
    """Transformed float32 params and near-tie counts (none for alignments); ``ref64``
    is the reference already in its scale/sign canonical form."""
    if ref64 is None:
        c = canon_form(arch, src, transform)
        return c.params.float(), c.near_ties.numpy()
    pre = canon_form(arch, src, _without_perm(transform))
    return weight_match(arch, pre.params, ref64)[0].float(), np.zeros(len(src), dtype=np.int64)


@contextmanager
def threads(n: int | None):
    """Run torch with ``n`` intra-op threads (None: as is), restoring the setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _without_perm(t: Transform) -> Transform:
    return Transform("canonical", tuple(s for s in t.symmetries if s != "perm"), None, t.scale_mode)


# --- planning -------------------------------------------------------------------------


@dataclass
class Group:
    """Source rows sharing population, arch and data: one transform, one test set."""

    population: str
    arch: AnyArch
    data: str | None
    transform: Transform
    sources: pd.DataFrame
    tag: str = ""
    todo: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def out_population(self) -> str:
        return f"{self.population}.{self.tag}"

    def target_id(self, source_id: str) -> str:
        return f"{source_id}.{self.tag}"


def tag_of(arch: AnyArch, t: Transform) -> str:
    """``canon`` (or ``align-<ref>``) for the default transform of the arch, else with a
    short hash of the transform spec: ids never collide between transforms."""
    default = make_transform(arch, reference=t.reference)
    base = "canon" if t.method == "canonical" else f"align-{t.reference}"
    if t == default:
        return base
    return f"{base}-{hashlib.sha256(t.spec_json().encode()).hexdigest()[:8]}"


def plan(
    store: Store,
    sources: pd.DataFrame,
    symmetries: list[str] | None,
    key: str,
    scale_mode: str,
    align_to: str | None,
) -> tuple[list[Group], pd.DataFrame | None]:
    """Validate the request and group the sources; raises before anything is written."""
    man = store.manifest()
    if sources.empty:
        raise UsageError("the selection is empty: no rows match")
    sources = sources[sources["kind"] != "canonical"]
    if sources.empty:
        raise UsageError(
            "the selection holds only canonical rows; "
            "select source rows (kind train, sample or import)"
        )
    ref_row = None
    if align_to is not None:
        hit = man[man["model_id"] == align_to]
        if hit.empty:
            raise UsageError(f"no model {align_to!r} in the store (reference for --align-to)")
        ref_row = hit.iloc[:1]
    groups = []
    for (pop, arch_json, data), rows in sources.groupby(
        ["population", "arch", sources["data"].fillna("")], sort=True
    ):
        arch = arch_from_json(arch_json)
        if ref_row is not None and not _same_layout(arch, arch_from_json(ref_row["arch"].iloc[0])):
            raise ConflictError(
                f"reference {align_to} is {ref_row['arch_name'].iloc[0]} "
                f"{ref_row['activation'].iloc[0]} but "
                f"population {pop} is {arch.name} {arch.activation}"
            )
        t = make_transform(arch, symmetries, key, scale_mode, align_to)
        if not data:
            raise DataError(f"population {pop} has no stored test data: its rows cannot be checked")
        g = Group(pop, arch, data, t, rows, tag_of(arch, t))
        g.todo = _todo(man, g)
        groups.append(g)
    return groups, ref_row


def _same_layout(a: AnyArch, b: AnyArch) -> bool:
    return [t.shape for t in a.layout] == [t.shape for t in b.layout] and (
        a.activation == b.activation and a.kind == b.kind
    )


def _todo(man: pd.DataFrame, g: Group) -> pd.DataFrame:
    """Sources of ``g`` not yet transformed; refuses an id taken by something else."""
    targets = g.sources["model_id"].map(g.target_id).to_numpy()
    done = np.isin(targets, man["model_id"].to_numpy())
    have = man.set_index("model_id").loc[targets[done]]
    ok = (
        (have["kind"] == "canonical")
        & (have["transform"] == g.transform.to_json(g.arch))
        & (have["parent_id"].to_numpy() == g.sources["model_id"].to_numpy()[done])
    )
    if not ok.all():
        mid = have.index[int(np.argmin(ok.to_numpy()))]
        raise ConflictError(f"model id {mid} already exists in the store with another meaning")
    return g.sources[~done]


def check_finite(store: Store, rows: pd.DataFrame, block_size: int = BLOCK_SIZE) -> None:
    """DataError naming the first source row with NaN or Inf weights."""
    for i in range(0, len(rows), block_size):
        read_finite(store, rows.iloc[i : i + block_size])


def read_finite(store: Store, rows: pd.DataFrame) -> np.ndarray:
    """The rows' params (:meth:`Store.read_params`); DataError naming the first row with
    NaN or Inf weights."""
    params = store.read_params(rows)
    bad = ~np.isfinite(params).all(1)
    if bad.any():
        mid = rows["model_id"].iloc[int(np.argmax(bad))]
        raise DataError(f"model {mid} has NaN or Inf weights; deselect it with --where")
    return params


# --- running --------------------------------------------------------------------------


@dataclass
class CanonResult:
    requested: int  # source rows selected (canonical rows excluded)
    skipped: int  # already transformed with the same transform
    rows: pd.DataFrame  # rows committed by this call
    canonical: pd.DataFrame  # the selection's transformed rows, new and old
    report: dict


def canonicalize(
    store: Store | str,
    sources: pd.DataFrame | str | None = None,
    symmetries: list[str] | None = None,
    key: str = DEFAULT_KEY,
    scale_mode: str = "l2",
    align_to: str | None = None,
    block_size: int = BLOCK_SIZE,
    mode_rtol: float = MODE_RTOL,
    progress: Callable[[int], None] | None = None,
    scheduler: str | None = None,
    device: str = "auto",
) -> CanonResult:
    """Canonicalise (or, with ``align_to``, align) ``sources`` (a selection or a
    ``--where`` expression; default: every row that is not canonical) into new rows;
    skip those already done. ``scheduler`` (``local:N`` or ``tcp://HOST:PORT``) runs the
    blocks on Dask workers (:mod:`bnnctl.scheduler`), each committing its own block: the
    same rows, bit for bit. ``device`` (:mod:`bnnctl.device`) is where the function
    check runs; Dask workers resolve it themselves. See the module doc."""
    sched = schedmod.require(scheduler)
    dev = devmod.resolve("cpu" if sched is not None else device)
    where = devmod.parse(device)
    if block_size < 1:
        raise UsageError(f"`block_size` must be at least 1, got {block_size}", "block_size")
    if not 0 <= mode_rtol < 1:
        raise UsageError(f"`mode_rtol` must be in [0, 1), got {mode_rtol}", "mode_rtol")
    store = store if isinstance(store, Store) else Store.open(store)
    if sched is not None:
        schedmod.location(store)  # refuses a store the workers cannot reach
    man = store.manifest()
    if isinstance(sources, str):
        sources = select(man, sources)
    sources = man[man["kind"] != "canonical"] if sources is None else sources
    groups, ref_row = plan(store, sources, symmetries, key, scale_mode, align_to)
    ref = None
    if ref_row is not None:
        ref = torch.from_numpy(store.read_params(ref_row)[0])
        if not torch.isfinite(ref).all():
            raise DataError(f"reference {align_to} has NaN or Inf weights")
    planned = sum(len(g.todo) * g.arch.n_params * 4 for g in groups)
    kept = None
    # kept: the sources and their canonical params, as float32 (float16 sources are read
    # as float32 too)
    if sched is None and 2 * planned <= KEEP_BYTES:
        done, kept = _run_kept(store, groups, ref, block_size, progress, planned, dev)
    else:
        for g in groups:
            if not g.todo.empty:
                check_finite(store, g.todo, block_size)
        if any(not g.todo.empty for g in groups):
            store.check_writable(planned)
        if sched is not None:
            done = _run_scheduled(store, groups, ref, block_size, progress, sched, where)
            store = Store.open(store.url)  # workers committed: read the manifest afresh
        else:
            done = [b for g in groups for b in _run_group(store, g, ref, block_size, progress, dev)]
    new = pd.concat(done, ignore_index=True) if done else man.iloc[0:0]
    n_src = sum(len(g.sources) for g in groups)
    canon = _selection_rows(store.manifest(), groups)
    if kept is not None:  # only rows this call committed hold the params it made
        kept = {m: kept[m] for m in new["model_id"]}
    rep = report(store, groups, canon, mode_rtol, kept)
    rep["new"] = int(len(new))
    store.maybe_compact()
    return CanonResult(n_src, n_src - len(new), new, canon, rep)


def _run_group(
    store: Store, g: Group, ref, block_size: int, progress, dev: torch.device
) -> list[pd.DataFrame]:
    if g.todo.empty:
        return []
    assert g.data, "plan() refuses groups without stored data"
    data = store.load_data(g.data)
    x, y = torch.from_numpy(data.x_test).to(dev), torch.from_numpy(data.y_test)
    out = []
    for i in range(0, len(g.todo), block_size):
        chunk = g.todo.iloc[i : i + block_size]
        out.append(canon_block(store, g, chunk, x, y, ref))
        if progress is not None:
            progress(len(chunk))
    return out


def canon_block(
    store: Store,
    g: Group,
    chunk: pd.DataFrame,
    x: torch.Tensor,
    y: torch.Tensor,
    ref: torch.Tensor | None,
) -> pd.DataFrame:
    """Transform, check and commit one block of ``g``'s sources: ``block -> rows``.
    ``x``, ``y``: the group's stored test data."""
    t0 = time.perf_counter()
    return commit_checked(store, check_block(g, chunk, store.read_params(chunk), x, y, ref, t0))


@dataclass
class Checked:
    """A block transformed and checked, not committed yet: what its commit and the
    report need."""

    g: Group
    chunk: pd.DataFrame  # its source rows
    params: np.ndarray  # [M, P] float32 canonical params, as they are stored
    rows: list[dict]  # manifest rows
    ties: np.ndarray | None  # [M] near-ties as the report counts them (when it does)


def check_block(
    g: Group,
    chunk: pd.DataFrame,
    src: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
    ref: torch.Tensor | None,
    t0: float | None = None,
    report_ties: bool = False,
    out: np.ndarray | None = None,
) -> Checked:
    """Transform and check the sources ``src`` of ``chunk`` (CheckError when a function
    changed) and make their rows; with ``report_ties``, also count the near-ties the
    report counts. ``t0``: when the block's work began (for ``wall_time_s``); ``out``:
    where to put the canonical params (see :func:`transform_block`)."""
    t0 = time.perf_counter() if t0 is None else t0
    res = transform_block(g.arch, src, g.transform, x, ref, out)
    bad = ~(res.max_diff <= res.allowed)  # NaN fails too
    if bad.any():
        j = int(np.argmax(bad))
        raise CheckError(
            f"{g.target_id(chunk['model_id'].iloc[j])}: outputs differ from the source by "
            f"{res.max_diff[j]:.3g} > {res.allowed[j]:.3g} (rtol {CHECK_RTOL:g}); not committed"
        )
    noise = _py(chunk["noise_std"].iloc[0]) if "noise_std" in chunk else None
    lik = for_task(chunk["task"].iloc[0], *([] if noise is None else [float(noise)]))
    metrics = {k: v.double().numpy() for k, v in evaluate(lik, res.outputs, y).items()}
    ties = report_near_ties(g, res.params) if report_ties else None
    wall = (time.perf_counter() - t0) / len(chunk)
    spec, on = g.transform.to_json(g.arch), devmod.describe(x.device)
    rows = [
        _row(g, src, spec, res, j, metrics, wall, on)
        for j, src in enumerate(chunk.to_dict("records"))
    ]
    return Checked(g, chunk, res.params, rows, ties)


def commit_checked(store: Store, c: Checked) -> pd.DataFrame:
    """Commit a checked block (:meth:`Store.commit_block`): the rows committed."""
    path = f"params/{c.g.out_population}/{_block_name(c.g, c.chunk)}"
    return store.commit_block(path, c.params, "float32", c.g.arch, c.rows)


def _read_units(todo: pd.DataFrame, block_size: int) -> list[tuple[int, int]]:
    """``todo``'s rows cut into runs ``[a, b)`` to read at once: each run of rows stored in
    one array (in order) is one unit, and runs shorter than ``block_size`` are merged
    with the next until a unit has that many rows."""
    if todo.empty:
        return []
    arrays = todo["array"].to_numpy()
    cuts = [0, *(np.flatnonzero(arrays[1:] != arrays[:-1]) + 1).tolist(), len(todo)]
    out: list[tuple[int, int]] = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if out and out[-1][1] - out[-1][0] < block_size:
            out[-1] = (out[-1][0], b)  # too short alone: merged
        else:
            out.append((a, b))
    return out


@dataclass
class Made:
    """One group's canonical rows made by an in-process run, in ``todo`` order: what the
    report would otherwise read back."""

    params: np.ndarray  # [len(todo), P] float32, as stored
    ties: np.ndarray | None  # [len(todo)] near-ties as the report counts them (when it does)


#: canonical model id -> (its group's rows, its index there), for the report
Kept = dict[str, tuple[Made, int]]


def _run_kept(
    store: Store,
    groups: list[Group],
    ref: torch.Tensor | None,
    block_size: int,
    progress: Callable[[int], None] | None,
    planned: int,
    dev: torch.device,
) -> tuple[list[pd.DataFrame], Kept]:
    """The in-process run when sources and results fit in memory: each source block is
    read once (its finite check) and its canonical params are kept for the report.

    One thread makes every store call, in order: all reads first, then the commits, so
    the store is never used by two threads at once. Meanwhile ``WORKERS`` threads
    transform and check blocks side by side, each block's torch ops on one thread (the
    results are those of the serial run: no op's result depends on the thread count
    here, and a block's chunks are the same). What is written, and when it is refused,
    is as in the serial run: no commit is queued before every source has been read and
    found finite and the store found writable; after a CheckError the blocks before it
    are committed; after a failed commit none after it is."""
    blocks = [
        (g, g.todo.iloc[i : i + block_size], i)
        for g in groups
        for i in range(0, len(g.todo), block_size)
    ]
    made = {
        id(g): Made(
            np.empty((len(g.todo), g.arch.n_params), dtype=np.float32),
            np.zeros(len(g.todo), dtype=np.int64) if _counts_ties(g) else None,
        )
        for g in groups
    }
    kept: Kept = {}
    if not blocks:
        return [], kept
    tests: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
    for g, _, _ in blocks:
        if g.data not in tests:
            assert g.data, "plan() refuses groups without stored data"
            data = store.load_data(g.data)
            tests[g.data] = torch.from_numpy(data.x_test).to(dev), torch.from_numpy(data.y_test)
    # the sources are read in units of whole stored arrays where they can be (a block of
    # half an array would read its shard twice), each a run of a group's rows
    units = [(g, a, b) for g in groups for a, b in _read_units(g.todo, block_size)]
    sources: dict[int, np.ndarray] = {}  # unit -> its params
    out: list[pd.DataFrame] = []
    waiting: list[Checked] = []  # checked, commit not queued yet
    commits: list[tuple[Future, int]] = []  # queued commits and their block sizes, in order
    failed: list[BaseException] = []
    writable = False

    def read(u: int) -> None:  # on the I/O thread
        g, a, b = units[u]
        sources[u] = read_finite(store, g.todo.iloc[a:b])

    def spans(k: int) -> list[int]:  # the units block k takes rows from
        g, chunk, i = blocks[k]
        return [u for u, (gu, a, b) in enumerate(units) if gu is g and a < i + len(chunk) and i < b]

    users = [0] * len(units)  # blocks still to take rows from each unit
    for k in range(len(blocks)):
        for u in spans(k):
            users[u] += 1
    lock = threading.Lock()

    def block_sources(k: int) -> np.ndarray:  # block k's params, from the units it spans
        g, chunk, i = blocks[k]
        parts = []
        for u in spans(k):
            reads[u].result()  # its DataError, if any
            a, b = units[u][1:]
            parts.append(sources[u][max(i - a, 0) : min(i + len(chunk), b) - a])
            with lock:  # the last block to use a unit lets it go (once its views are gone)
                users[u] -= 1
                if users[u] == 0:
                    del sources[u]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def work(k: int) -> Checked:  # on a worker: block k, once read
        g, chunk, i = blocks[k]
        src = block_sources(k)
        t0 = time.perf_counter()
        m, (x, y) = made[id(g)], tests[g.data]
        dest = m.params[i : i + len(chunk)]
        c = check_block(g, chunk, src, x, y, ref, t0, m.ties is not None, dest)
        if m.ties is not None and c.ties is not None:
            m.ties[i : i + len(chunk)] = c.ties
        return c

    def commit(c: Checked) -> pd.DataFrame | None:  # on the I/O thread
        if failed:  # a serial run would have stopped at the failed commit
            return None
        try:
            return commit_checked(store, c)
        except BaseException as e:
            failed.append(e)
            raise

    def flush() -> None:  # queue the waiting commits (only when every read passed)
        nonlocal writable
        if waiting and not writable:
            store.check_writable(planned)  # the I/O thread is idle: its reads are done
            writable = True
        for c in waiting:
            commits.append((io.submit(commit, c), len(c.chunk)))
        waiting.clear()

    def collect(wait: bool) -> None:  # finished commits, in order
        while commits and (wait or commits[0][0].done()):
            f, n = commits.pop(0)
            out.append(f.result())
            if progress is not None:
                progress(n)

    n_workers = WORKERS or min(torch.get_num_threads(), MAX_WORKERS)
    io = ThreadPoolExecutor(1, thread_name_prefix="bnnctl-canonicalize-io")
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="bnnctl-canonicalize")
    try:
        with threads(1):  # for the whole run: workers must not change it under each other
            reads = [io.submit(read, u) for u in range(len(units))]
            jobs = [pool.submit(work, k) for k in range(len(blocks))]
            for k, job in enumerate(jobs):  # in order, as the serial run
                try:
                    c = job.result()
                except CheckError:
                    for r in reads:  # a non-finite source is reported first
                        r.result()
                    flush()
                    collect(True)
                    raise
                g, chunk, i = blocks[k]
                ids = chunk["model_id"].map(g.target_id)
                kept.update((mid, (made[id(g)], i + j)) for j, mid in enumerate(ids))
                waiting.append(c)
                if all(r.done() and r.exception() is None for r in reads):
                    flush()
                collect(False)
            flush()
            collect(True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        io.shutdown(wait=True, cancel_futures=True)
    return out, kept


def _scheduled_block(
    chunk: pd.DataFrame, g: Group, url: str, ref: torch.Tensor | None, device: str
) -> pd.DataFrame:
    """One block on a Dask worker: open the store, read the group's test data (kept
    per worker process), transform, check, commit."""
    store = Store.open(url)
    assert g.data, "plan() refuses groups without stored data"
    key = (url, g.data, device)
    if key not in _TEST_DATA:
        data = store.load_data(g.data)
        _TEST_DATA.clear()
        x = torch.from_numpy(data.x_test).to(devmod.resolve(device))
        _TEST_DATA[key] = x, torch.from_numpy(data.y_test)
    x, y = _TEST_DATA[key]
    return canon_block(store, g, chunk, x, y, ref)


#: A worker's test data of the last group it ran (data paths are content hashes).
_TEST_DATA: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _run_scheduled(
    store: Store,
    groups: list[Group],
    ref: torch.Tensor | None,
    block_size: int,
    progress: Callable[[int], None] | None,
    sched: schedmod.Scheduler,
    device: str,
) -> list[pd.DataFrame]:
    """Every group's blocks as Dask tasks (:mod:`bnnctl.scheduler`), each committed by
    its worker; ``progress`` advances by a block's rows as it finishes."""
    tasks = [
        (
            g.todo.iloc[i : i + block_size],
            replace(g, sources=g.todo.iloc[0:0], todo=g.todo.iloc[0:0]),
        )
        for g in groups
        for i in range(0, len(g.todo), block_size)
    ]
    if not tasks:
        return []

    def done(i: int, rows: pd.DataFrame) -> None:
        if progress is not None:
            progress(len(tasks[i][0]))

    with schedmod.connect(sched) as cluster:
        return cluster.map(
            _scheduled_block,
            tasks,
            (schedmod.location(store), ref, device),
            done,
            lambda i: f"block {tasks[i][1].out_population}/{_block_name(tasks[i][1], tasks[i][0])}",
        )


def _block_name(g: Group, chunk: pd.DataFrame) -> str:
    """Deterministic in the block's sources and the transform (the store adds an attempt
    id, so two attempts never share an array)."""
    h = hashlib.sha256(g.transform.spec_json().encode())
    for mid in chunk["model_id"]:
        h.update(f"\0{mid}".encode())
    return f"b{h.hexdigest()[:16]}"


def _row(
    g: Group,
    src: dict,
    spec: str,
    res: BlockResult,
    j: int,
    metrics: dict,
    wall: float,
    device: str,
) -> dict:
    row = {k: _py(src.get(k)) for k in INHERITED}
    row.update(
        {
            "model_id": g.target_id(src["model_id"]),
            "kind": "canonical",
            "method": g.transform.method,
            "population": g.out_population,
            "parent_id": src["model_id"],
            "config_sha256": hashlib.sha256(f"{src['config_sha256']}:{spec}".encode()).hexdigest(),
            "transform": spec,
            "max_logit_diff": float(res.max_diff[j]),
            "l2_mass_before": float(res.mass_before[j]),
            "l2_mass_after": float(res.mass_after[j]),
            "wall_time_s": wall,
            "device": device,  # where the check ran
            **{f"test_{k}": float(v[j]) for k, v in metrics.items()},
        }
    )
    return row


def _py(v):
    """A pandas cell as a plain Python value (None for missing)."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _selection_rows(man: pd.DataFrame, groups: list[Group]) -> pd.DataFrame:
    ids = [g.target_id(m) for g in groups for m in g.sources["model_id"]]
    return man[man["model_id"].isin(ids)]


# --- the report -----------------------------------------------------------------------


def report(
    store: Store,
    groups: list[Group],
    canon: pd.DataFrame,
    mode_rtol: float = MODE_RTOL,
    kept: Kept | None = None,
) -> dict:
    """Summary of the selection's transformed rows: excess L2 mass over the scaling
    minimum, distinct modes, near-ties, dead units (all incoming or all outgoing weights
    zero: :func:`~bnnctl.symmetry.scaling.dead_units_`), the largest function difference.
    Rows in ``kept`` (committed by this call) are not read again: their params and
    near-ties are the ones the run made, bit for bit what reading them would give."""
    before, after = canon["l2_mass_before"].to_numpy(float), canon["l2_mass_after"].to_numpy(float)
    excess = 100.0 * (before / after - 1.0)
    rel = canon["max_logit_diff"].to_numpy(float)
    rep: dict[str, Any] = {
        "models": int(len(canon)),
        "new": None,
        "transforms": sorted({g.tag for g in groups}),
        "symmetries": sorted({",".join(g.transform.symmetries) for g in groups}),
        "key": sorted({g.transform.key or "-" for g in groups}),
        "l2_mass_before_median": _stat(np.median, before),
        "l2_mass_after_median": _stat(np.median, after),
        "excess_mass_pct_median": _stat(np.median, excess),
        "excess_mass_pct_mean": _stat(np.mean, excess),
        "excess_mass_pct_min": _stat(np.min, excess),
        "excess_mass_pct_max": _stat(np.max, excess),
        "max_logit_diff": _stat(np.max, rel),
        "check_rtol": CHECK_RTOL,
        "modes": 0,
        "mode_rtol": mode_rtol,
        "near_tie_units": 0,
        "models_with_near_ties": 0,
        "tie_rtol": None,
        "dead_units": 0,
        "models_with_dead_units": 0,
    }

    for g in groups:
        rows = canon[canon["population"] == g.out_population]
        rows = rows[rows["parent_id"].isin(g.sources["model_id"])]
        if rows.empty:
            continue
        params, ties = _canonical_params(store, g, rows, kept or {})
        rep["modes"] += count_modes(params, mode_rtol)
        # a count, not a manifest column: older stores' manifests could not be read with one
        dead = count_dead(g.arch, torch.from_numpy(params)).numpy()
        rep["dead_units"] += int(dead.sum())
        rep["models_with_dead_units"] += int((dead > 0).sum())
        if ties is not None:
            rep["near_tie_units"] += int(ties.sum())
            rep["models_with_near_ties"] += int((ties > 0).sum())
            rep["tie_rtol"] = TIE_RTOL
    return rep


def _canonical_params(
    store: Store, g: Group, rows: pd.DataFrame, kept: Kept
) -> tuple[np.ndarray, np.ndarray | None]:
    """``[len(rows), P]`` float32 params of ``g``'s canonical ``rows``, in order, and their
    near-ties as the report counts them (None when it does not): from ``kept`` where it
    has them, the rest read from the store."""
    hits = [kept.get(m) for m in rows["model_id"]]
    miss = np.flatnonzero([h is None for h in hits])
    if len(miss) == len(rows):
        params = store.read_params(rows)
        return params, report_near_ties(g, params)
    m0 = hits[0][0] if hits[0] is not None else None
    # all rows made by this run (those of one group), in order: no copy
    in_order = m0 is not None and len(m0.params) == len(rows)
    if in_order and all(h is not None and h[0] is m0 and h[1] == j for j, h in enumerate(hits)):
        assert m0 is not None
        return m0.params, m0.ties
    params = np.empty((len(rows), g.arch.n_params), dtype=np.float32)
    ties = np.zeros(len(rows), dtype=np.int64)
    for i, hit in enumerate(hits):
        if hit is not None:
            m, j = hit
            params[i] = m.params[j]
            if m.ties is not None:
                ties[i] = m.ties[j]
    if len(miss):
        params[miss] = store.read_params(rows.iloc[miss])
        more = report_near_ties(g, params[miss])
        if more is not None:
            ties[miss] = more
    return params, ties if _counts_ties(g) else None


def _counts_ties(g: Group) -> bool:
    return g.transform.method == "canonical" and "perm" in g.transform.symmetries


def report_near_ties(g: Group, params: np.ndarray) -> np.ndarray | None:
    """``[M]`` near-ties of canonical rows as stored (float32): found by sorting them again
    (:func:`_perm_only`), in chunks of ``MATH_BLOCK``; each model's count is its own
    (no step of the sort mixes models), whatever chunk it is in. None when ``g``'s
    transform does not sort."""
    if not _counts_ties(g):
        return None
    with threads(MATH_THREADS):
        return np.concatenate(
            [
                canon_form(
                    g.arch, torch.from_numpy(params[i : i + MATH_BLOCK]), _perm_only(g.transform)
                ).near_ties.numpy()
                for i in range(0, len(params), MATH_BLOCK)
            ]
        )


def _perm_only(t: Transform) -> Transform:
    """Sorting an already canonical model again: same order, and it yields its ties."""
    return Transform("canonical", ("perm",), t.key, None)


def _stat(fn, a: np.ndarray) -> float | None:
    return float(fn(a)) if len(a) and np.isfinite(a).all() else None
