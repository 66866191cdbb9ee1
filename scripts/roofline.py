"""The machine's limit that benchmarks compare against: the sgemm rate torch reaches on
large square float32 matrices with its current thread count."""

from __future__ import annotations

import time

import torch


def sgemm_gflops(size: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of ``torch.mm`` on two ``size x size`` matrices (one untimed warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9
