"""Where blocks of work run: in this process (the default), or on Dask workers.

An engine's unit of work is one block, ``block -> rows``, that shares nothing but the
store. ``--scheduler`` runs those blocks on a Dask (``distributed``) cluster:

- ``local:N``: a :class:`distributed.LocalCluster` of N worker processes on this machine,
  each running ``max(1, cores // N)`` blocks at a time (so N x threads <= cores when
  N <= cores), with torch on one thread per block (the Dask nanny's default), and no
  dashboard (the scheduler's health endpoint listens on a free local port).
- ``tcp://HOST:PORT`` (or ``tls://``): the scheduler of a running cluster (``dask
  scheduler`` and ``dask worker tcp://HOST:PORT``, see the README).

One task is one block: the worker opens the store by URL (:func:`location`: a local
store's absolute path, which workers on other machines need on a shared file system) and
runs the engine's own block function, which commits through ``Store.commit_block``
exactly as the in-process loop does: a fresh array per attempt, then one Delta merge
keyed on ``model_id``. A worker that dies mid-block loses nothing committed; Dask re-runs
its block on another worker (up to ``distributed.scheduler.allowed-failures`` times) and
the merge skips any id an earlier attempt committed, so no row is doubled. Objects every
block needs (a population with its dataset, a sample plan) are sent once, as a task of
their own that Dask can recompute if the worker holding its result dies.

``distributed`` is imported only inside :func:`connect`, so ``bnnctl ls`` stays fast and
the package stays optional (``pip install "bnnctl[dask]"``).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bnnctl.errors import EnvironmentFault, MissingDependencyError, UsageError, describe

#: Most worker processes ``local:N`` starts.
MAX_LOCAL_WORKERS = 1024
_LOCAL = re.compile(r"local:(\d{1,9})")
_ADDRESS = re.compile(r"(?:tcp|tls)://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


@dataclass(frozen=True)
class Scheduler:
    """A checked ``--scheduler`` value: ``local:N`` (``workers`` = N) or an ``address``."""

    spec: str
    workers: int | None = None
    address: str | None = None

    @property
    def threads_per_worker(self) -> int:
        """Blocks a ``local:N`` worker runs at once: N x threads <= cores."""
        return max(1, cores() // (self.workers or 1))

    @property
    def local_slots(self) -> int | None:
        """Blocks running at once on a local cluster (None: an existing cluster's)."""
        return None if self.workers is None else self.workers * self.threads_per_worker


def parse(spec: str | Scheduler | None) -> Scheduler | None:
    """``spec`` checked (None: run in this process); a :class:`UsageError` naming
    ``scheduler`` otherwise. Imports nothing."""
    if spec is None or isinstance(spec, Scheduler):
        return spec
    text = spec.strip()
    local = _LOCAL.fullmatch(text)
    if local:
        n = int(local.group(1))
        if not 1 <= n <= MAX_LOCAL_WORKERS:
            raise UsageError(
                f"`scheduler` local:N needs N in 1..{MAX_LOCAL_WORKERS} worker processes, "
                f"got {text!r}",
                "scheduler",
            )
        return Scheduler(text, workers=n)
    address = _ADDRESS.fullmatch(text)
    if address and 1 <= int(address.group(1)) <= 65535:
        return Scheduler(text, address=text)
    raise UsageError(
        f"`scheduler` must be local:N (N worker processes on this machine) or "
        f"tcp://HOST:PORT (a running Dask scheduler), got {spec!r}",
        "scheduler",
    )


def require(spec: str | Scheduler | None) -> Scheduler | None:
    """:func:`parse`, and when a scheduler is asked for, a
    :class:`MissingDependencyError` now (before any work) if ``distributed`` cannot be
    imported."""
    sched = parse(spec)
    if sched is not None:
        _distributed()
    return sched


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        why = "is not installed" if e.name == "distributed" else f"fails to import ({describe(e)})"
        raise MissingDependencyError(
            f"`scheduler` needs the distributed package, which {why}; pip install distributed"
        ) from None
    return distributed


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def location(store: Any) -> str:
    """Where a worker opens ``store`` (a :class:`~bnnctl.store.Store`): its URL, or for
    a local store its absolute path (a relative one means nothing to another process's
    working directory). A ``memory://`` store lives in this process alone: refused."""
    url = str(store.url)
    if url.startswith("memory://"):
        raise UsageError(
            "a memory:// store lives in this process only; Dask workers cannot reach it "
            "(use a path or an object store with `scheduler`)",
            "scheduler",
        )
    return url if "://" in url and not url.startswith("file://") else str(store.root)


def _same(obj: Any) -> Any:
    return obj


class Cluster:
    """A connected Dask client (and the local cluster it started, if any)."""

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self.client, self.cluster = client, cluster

    @property
    def slots(self) -> int:
        """Blocks the cluster runs at once (its workers' threads, at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def pids(self) -> dict[str, int]:
        """Worker address -> process id (tests kill workers with it)."""
        return dict(self.client.run(os.getpid))

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[tuple],
        shared: tuple = (),
        on_done: Callable[[int, Any], None] | None = None,
        name: Callable[[int], str] = lambda i: f"block {i}",
    ) -> list[Any]:
        """``[fn(*item, *shared) for item in items]``, one task per item, run on the
        cluster; ``shared`` is sent once. ``on_done(i, result)`` is called in this
        thread as each task finishes (in completion order); the results come back in
        the order of ``items``. The first task to fail cancels the rest and raises its
        error (blocks already committed stay committed, as in the in-process loop)."""
        from distributed import KilledWorker, as_completed

        with warnings.catch_warnings():  # a big dataset is sent once, on purpose
            warnings.filterwarnings("ignore", message=".*large graph")
            refs = [self.client.submit(_same, s, pure=False) for s in shared]
            futures = [self.client.submit(fn, *item, *refs, pure=False) for item in items]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        try:
            for fut in as_completed(futures, loop=self.client.loop):
                i = index[fut.key]
                try:
                    results[i] = fut.result()
                except KilledWorker:
                    raise EnvironmentFault(
                        f"Dask workers died running {name(i)} (out of memory?); committed "
                        "blocks are kept; re-run to continue"
                    ) from None
                if on_done is not None:
                    on_done(i, results[i])
        finally:
            self.client.cancel([*futures, *refs])
        return results


@contextmanager
def connect(spec: str | Scheduler) -> Iterator[Cluster]:
    """Start (``local:N``) or join (an address) a Dask cluster for the length of the
    ``with`` block. A :class:`MissingDependencyError` when ``distributed`` is not
    installed; an :class:`EnvironmentFault` when the scheduler cannot be reached or has
    no workers."""
    sched = parse(spec)
    assert sched is not None
    distributed = _distributed()
    cluster = None
    if sched.workers is not None:
        cluster = distributed.LocalCluster(
            n_workers=sched.workers,
            threads_per_worker=sched.threads_per_worker,
            processes=True,
            dashboard_address=":0",  # no dashboard; its small HTTP server on any free port
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster, set_as_default=False)
    else:
        client = _join(distributed, str(sched.address))
    try:
        yield Cluster(client, cluster)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _join(distributed: Any, address: str) -> Any:
    """A client of the scheduler at ``address`` once a worker has joined it (waits up to
    dask's ``distributed.comm.timeouts.connect``, 30 s by default)."""
    import dask

    timeout = dask.config.get("distributed.comm.timeouts.connect")
    try:
        client = distributed.Client(address, set_as_default=False, timeout=timeout)
    except OSError as e:
        raise EnvironmentFault(
            f"cannot reach the Dask scheduler at {address} ({describe(e)}); start it with "
            "`dask scheduler` and workers with `dask worker ADDRESS`"
        ) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise EnvironmentFault(
            f"the Dask scheduler at {address} has no workers; start some with "
            f"`dask worker {address}`"
        ) from None
    return client
