"""Running a computation over M stacked chains (or models) in blocks, one thread each:
the samplers' updates and the trainers' per-model data orders.

:func:`in_blocks` splits the chains into ``torch.get_num_threads()`` contiguous blocks and
runs each in a thread of its own whose torch ops use that one thread: the blocks never
wait on one another's parallel regions (torch releases the GIL in its ops), and since
every op of a chain runs on one thread, its rounding depends neither on the thread count
nor on the chains beside it (a product split over threads can round differently: on two
threads the default MLP's chain alone differed from the same chain among 64 in the last
bit, and a stacked conv net's kernels split their sums by thread).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

#: Fewest chains per block: two, so that a run cut into blocks never leaves a chain alone
#: in a block where it was not alone before (a one-model batched product can take another
#: kernel and round differently: seen on mlp:64-8-10, a chain alone against beside one other).
CHAINS_PER_THREAD = 2
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def in_blocks(m: int, work: Callable[[int, int], None], device: torch.device | None = None) -> None:
    """``work(lo, hi)`` over contiguous blocks of the chains 0..m-1 that together cover
    them, each block in a thread of its own whose torch ops run on that one thread:
    ``torch.get_num_threads()`` blocks (at most one per :data:`CHAINS_PER_THREAD`
    chains), side by side (see the module doc). On a GPU (``device``) the work is one
    block: the device does the parallel part."""
    threads = torch.get_num_threads()
    # already one thread (e.g. a Dask worker, or a block's thread), or a GPU's work
    if threads == 1 or (device is not None and device.type != "cpu"):
        work(0, m)
        return
    blocks = max(1, min(threads, m // CHAINS_PER_THREAD))
    cuts = [m * i // blocks for i in range(blocks + 1)]
    pool = _pool(blocks)
    jobs = [
        pool.submit(_on_one_thread, work, lo, hi)
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    changed = [job.result() for job in jobs]
    if any(changed):
        # torch.set_num_threads also sets the count that threads started later begin with
        torch.set_num_threads(threads)


def _on_one_thread(work: Callable[[int, int], None], lo: int, hi: int) -> bool:
    """``work(lo, hi)`` with this thread's torch ops on this thread alone; whether the
    thread's count had to be set. (``torch.get_num_threads`` first settles the count a
    thread starts with, which would otherwise be taken from the process-wide one at its
    first parallel op; ``torch.set_num_threads`` sets OpenMP's and MKL's counts for the
    calling thread.)"""
    changed = torch.get_num_threads() != 1
    if changed:
        torch.set_num_threads(1)
    work(lo, hi)
    return changed


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads of this process (made anew in a forked child)."""
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="bnnctl-chains")
    return _pools[key]
