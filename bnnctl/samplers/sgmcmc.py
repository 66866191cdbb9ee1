"""Stochastic-gradient MCMC: SGLD and SGHMC over M stacked chains.

Both target exp(-U_T(θ)) (see :mod:`bnnctl.samplers.posterior`) with minibatch estimates of ∇U_T
(each chain draws its own minibatch from its own generator). No Metropolis correction: the
bias is O(step size), so use small steps.

SGLD (Welling & Teh, ICML 2011), ξ ~ N(0, I)::

    θ ← θ − ε_t ∇Û_T(θ) + sqrt(2 ε_t) ξ

SGHMC (Chen, Fox & Guestrin, ICML 2014, eq. 15, with the noise estimate β̂ = 0), in the
"SGD with momentum" form with learning rate η and friction α = 1 − momentum::

    v ← (1 − α) v − η ∇Û_T(θ) + sqrt(2 α η) ξ
    θ ← θ + v

Since U_T = U / T, the temperature enters through the gradient; equivalently this is
θ ← θ − η' ∇U + sqrt(2 η' T) ξ with η' = η / T in the usual cold-posterior form.

**Randomness.** Chain k draws its minibatch, then its noise ξ, from its own
``torch.Generator`` (as since the first version: samples and saved states are unchanged), so
its samples do not depend on how many chains run beside it or on where a run was cut. The
draws of different chains are independent, so they run on ``torch.get_num_threads()`` threads
at once (:func:`draw`); the rest of an update is a few fused passes over ``[M, P]`` (the
prior's gradient is folded into them).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from bnnctl.samplers.base import (
    ChainState,
    Sampler,
    SamplerConfig,
    check_divergence,
    step_size_at,
)
from bnnctl.samplers.posterior import LogPosterior

#: Defaults of the method(s) this module implements. Step sizes act on the summed energy U_T, so they shrink with N.  # noqa: E501
DEFAULTS = {
    "sgld": {"step_size": 1e-5, "burn_in": 100},
    "sghmc": {"step_size": 1e-5, "burn_in": 100},
}


@dataclass(frozen=True, kw_only=True)
class SGState(ChainState):
    """Positions, velocities ``v`` (SGHMC; empty for SGLD) and the last minibatch
    estimate of each chain's energy."""

    momenta: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    energy: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """SGLD or SGHMC, as ``config.method`` says."""
    sghmc = config.method == "sghmc"
    step_size = config.step_size
    assert step_size is not None  # set by SamplerConfig.__post_init__

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> SGState:
        p = params.clone()
        if not sghmc:
            return SGState(params=p, gens=gens)
        # stationary velocity: v = ε r with r ~ N(0, I) and η = ε²
        _, v = draw(gens, p.shape[1], p.dtype, math.sqrt(step_size))
        return SGState(params=p, gens=gens, momenta=v)

    def update(state: SGState, batch: torch.Tensor | None = None) -> SGState:
        t, theta = state.step, state.params
        lr = step_size_at(config, t)
        alpha = config.friction
        inv_t, prec = 1.0 / post.temperature, 1.0 / post.prior_var
        mom = state.momenta
        # Per chain, in parallel: its minibatch, its noise, and the terms of the step that
        # need no gradient (the prior's gradient is folded in here):
        #   SGHMC  v' = [sqrt(2αη) ξ + (1-α) v − (η/(Tσ²)) θ] − (η/T) ∇U_nll;  θ' = θ + v'
        #   SGLD   θ' = [sqrt(2ε) ξ + (1 − ε/(Tσ²)) θ] − (ε/T) ∇U_nll
        if sghmc:

            def then(k: int, row: torch.Tensor) -> None:
                row.add_(mom[k], alpha=1 - alpha).add_(theta[k], alpha=-lr * inv_t * prec)

        else:

            def then(k: int, row: torch.Tensor) -> None:
                row.add_(theta[k], alpha=1 - lr * inv_t * prec)

        draws = None if batch is not None or config.batch_size >= post.n else post.n
        scale = math.sqrt(2 * alpha * lr) if sghmc else math.sqrt(2 * lr)
        idx, step = draw(
            state.gens, theta.shape[1], theta.dtype, scale, draws, config.batch_size, then
        )
        nll, grad = post.energy_and_grad(theta, batch if idx is None else idx, prior=False)
        energy = (nll + 0.5 * prec * _sqnorm(theta)).mul_(inv_t)
        step.add_(grad, alpha=-lr * inv_t)
        if sghmc:
            params, mom = torch.add(theta, step, out=grad), step  # θ' reuses grad's buffer
        else:
            params = step
        return dataclasses.replace(
            state,
            params=params,
            momenta=mom,
            energy=energy,
            step=t + 1,
            diverged=check_divergence(state.diverged, energy, params),
        )

    return Sampler(config.method, init, update, state_type=SGState)


def _sqnorm(x: torch.Tensor) -> torch.Tensor:
    """|x_m|² per row as float64 ``[M]``, summed in x's dtype (one pass, no temporary)."""
    return torch.linalg.vector_norm(x, dim=-1).double().square_()


# --- the chains' draws, in parallel --------------------------------------------------------

#: Fewest chains per thread: below it one thread draws them all.
CHAINS_PER_THREAD = 8
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def draw(
    gens: list[torch.Generator],
    p: int,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    n: int | None = None,
    size: int = 0,
    then: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Each chain's minibatch indices ``[M, size]`` uniform on 0..n-1 (None when ``n`` is
    None), then its ``scale`` · N(0, I) noise ``[M, p]``, both from the chain's own
    generator in that order (the draws :func:`.posterior.minibatch` and
    :func:`.posterior.randn` make). Row k depends on ``gens[k]`` only; the chains are
    split over ``torch.get_num_threads()`` threads (torch releases the GIL in each draw,
    and one generator's draw runs on one core however many threads torch has).
    ``then(k, row)``, if given, works on chain k's noise row in place right after its draw
    (in the same thread, while the row is in cache)."""
    m = len(gens)
    noise = torch.empty((m, p), dtype=dtype)
    idx = None if n is None else torch.empty((m, min(size, n)), dtype=torch.int64)
    high = n or 0

    def run(lo: int, hi: int) -> None:
        for k in range(lo, hi):
            if idx is not None:
                torch.randint(high, idx.shape[1:], generator=gens[k], out=idx[k])
            row = noise[k].normal_(0.0, scale, generator=gens[k])
            if then is not None:
                then(k, row)

    threads = max(1, min(torch.get_num_threads(), m // CHAINS_PER_THREAD))
    if threads == 1:
        run(0, m)
        return idx, noise
    cuts = [m * i // threads for i in range(threads + 1)]
    pool = _pool(threads - 1)
    jobs = [pool.submit(run, lo, hi) for lo, hi in zip(cuts[1:-1], cuts[2:], strict=True)]
    run(cuts[0], cuts[1])  # this thread draws the first block
    for job in jobs:
        job.result()
    return idx, noise


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads of this process (made anew in a forked child)."""
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="bnnctl-draw")
    return _pools[key]
