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
its samples do not depend on how many chains run beside it or on where a run was cut.

**Threads.** An update splits the chains into ``torch.get_num_threads()`` blocks and runs
each block's whole update (draws, gradients, steps) in a thread of its own whose torch ops
use that one thread (:func:`in_blocks`): the blocks never wait on one another's parallel
regions, and since every op of a chain runs on one thread, its rounding does not depend on
the thread count (nor, on per-chain minibatches, on the chains beside it; a full-batch
gradient's product over all chains at once still can on some shapes). A block draws its
chains' minibatches, takes their gradients, draws their noise, then makes the step in a few
in-place passes (the prior's gradient folded in); only the draws go chain by chain.
"""

from __future__ import annotations

import dataclasses
import math
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
from bnnctl.threads import in_blocks

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
        _, v = draw(gens, p.shape[1], p.dtype, math.sqrt(step_size), device=p.device)
        return SGState(params=p, gens=gens, momenta=v)

    def update(state: SGState, batch: torch.Tensor | None = None) -> SGState:
        t, theta, gens = state.step, state.params, state.gens
        lr = step_size_at(config, t)
        alpha = config.friction
        inv_t, prec = 1.0 / post.temperature, 1.0 / post.prior_var
        mom = state.momenta
        m, p = theta.shape
        n = None if batch is not None or config.batch_size >= post.n else post.n
        scale = math.sqrt(2 * alpha * lr) if sghmc else math.sqrt(2 * lr)
        dev = theta.device
        # drawn on the CPU (each chain's generator is), used on the device
        idx = None if n is None else torch.empty((m, config.batch_size), dtype=torch.int64)
        noise = torch.empty((m, p), dtype=theta.dtype, device=dev)  # v' (SGHMC) or θ' (SGLD)
        drawn = noise if dev.type == "cpu" else torch.empty((m, p), dtype=theta.dtype)
        grad = torch.empty_like(theta)  # becomes θ' (SGHMC)
        energy = torch.empty(m, dtype=torch.float64, device=dev)
        diverged = torch.empty(m, dtype=torch.bool, device=dev)
        # The step, with the prior's gradient folded in, as a few in-place passes over a
        # group's rows (per-row passes measured slower: one Python call per row and op):
        #   SGHMC  v' = sqrt(2αη) ξ + (1-α) v − (η/(Tσ²)) θ − (η/T) ∇U_nll;  θ' = θ + v'
        #   SGLD   θ' = sqrt(2ε) ξ + (1 − ε/(Tσ²)) θ − (ε/T) ∇U_nll
        decay = -lr * inv_t * prec

        def group(lo: int, hi: int) -> None:
            """Chains lo..hi-1: their minibatches, gradients, noise, then their steps."""
            sl = slice(lo, hi)
            th, g, step = theta[sl], grad[sl], noise[sl]
            _draw_rows(gens, lo, hi, None, 0.0, idx, n or 0)
            chosen = (None if batch is None else batch[sl]) if idx is None else idx[sl].to(dev)
            nll, _ = post.energy_and_grad(th, chosen, prior=False, out=g)
            energy[sl] = (nll + 0.5 * prec * _sqnorm(th)).mul_(inv_t)
            _draw_rows(gens, lo, hi, drawn, scale, None, 0)
            if drawn is not noise:
                step.copy_(drawn[sl])
            if sghmc:
                step.add_(mom[sl], alpha=1 - alpha).add_(th, alpha=decay)
                step.add_(g, alpha=-lr * inv_t)
                torch.add(th, step, out=g)  # θ' reuses the gradient's buffer
            else:
                step.add_(th, alpha=1 + decay).add_(g, alpha=-lr * inv_t)
            diverged[sl] = check_divergence(state.diverged[sl], energy[sl], g if sghmc else step)

        def block(lo: int, hi: int) -> None:
            for i in range(lo, hi, GROUP):
                group(i, min(i + GROUP, hi))

        in_blocks(m, block, dev)
        params, mom = (grad, noise) if sghmc else (noise, mom)
        return dataclasses.replace(
            state, params=params, momenta=mom, energy=energy, step=t + 1, diverged=diverged
        )

    return Sampler(config.method, init, update, state_type=SGState)


def _sqnorm(x: torch.Tensor) -> torch.Tensor:
    """|x_m|² per row as float64 ``[M]``, summed in x's dtype (one pass, no temporary)."""
    return torch.linalg.vector_norm(x, dim=-1).double().square_()


# --- the chains' draws and updates, in parallel -------------------------------------------

#: Most chains whose draws, gradients and steps an update does together (within a block;
#: 32, one block of 64 chains on two threads, measured faster than 16 or 8: fewer calls).
GROUP = 32


def draw(
    gens: list[torch.Generator],
    p: int,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    n: int | None = None,
    size: int = 0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Each chain's minibatch indices ``[M, size]`` uniform on 0..n-1 (None when ``n`` is
    None), then its ``scale`` · N(0, I) noise ``[M, p]``, both from the chain's own
    generator in that order (the draws :func:`.posterior.minibatch` and
    :func:`.posterior.randn` make). Row k depends on ``gens[k]`` only; the chains are
    split over threads (:func:`in_blocks`). Drawn on the CPU, returned on ``device``."""
    m = len(gens)
    noise = torch.empty((m, p), dtype=dtype)
    idx = None if n is None else torch.empty((m, min(size, n)), dtype=torch.int64)
    in_blocks(m, lambda lo, hi: _draw_rows(gens, lo, hi, noise, scale, idx, n or 0))
    return (None if idx is None else idx.to(device)), noise.to(device)


def _draw_rows(
    gens: list[torch.Generator],
    lo: int,
    hi: int,
    noise: torch.Tensor | None,
    scale: float,
    idx: torch.Tensor | None,
    high: int,
) -> None:
    """Rows lo..hi-1 of :func:`draw`, in this thread: chain k's minibatch (when ``idx``
    is given), then its noise (when ``noise`` is)."""
    for k in range(lo, hi):
        if idx is not None:
            torch.randint(high, idx.shape[1:], generator=gens[k], out=idx[k])
        if noise is not None:
            noise[k].normal_(0.0, scale, generator=gens[k])
