"""Stochastic-gradient MCMC: SGLD and SGHMC over M stacked chains.

Both target exp(-U_T(θ)) (see :mod:`bnnctl.samplers.posterior`) with minibatch estimates of ∇U_T
(each chain draws its own minibatch from its own generator). No Metropolis correction:
the bias is O(step size), so use small steps.

SGLD (Welling & Teh, ICML 2011), ξ ~ N(0, I)::

    θ ← θ − ε_t ∇Û_T(θ) + sqrt(2 ε_t) ξ

SGHMC (Chen, Fox & Guestrin, ICML 2014, eq. 15, with the noise estimate β̂ = 0), in the
"SGD with momentum" form with learning rate η and friction α = 1 − momentum::

    v ← (1 − α) v − η ∇Û_T(θ) + sqrt(2 α η) ξ
    θ ← θ + v

Since U_T = U / T, the temperature enters through the gradient; equivalently this is
θ ← θ − η' ∇U + sqrt(2 η' T) ξ with η' = η / T in the usual cold-posterior form.
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
    batch_for,
    check_divergence,
    step_size_at,
)
from bnnctl.samplers.posterior import LogPosterior, randn

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
    step = _sgld_step if config.method == "sgld" else _sghmc_step
    step_size = config.step_size
    assert step_size is not None  # set by SamplerConfig.__post_init__

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> SGState:
        p = params.clone()
        if config.method == "sgld":
            return SGState(params=p, gens=gens)
        # stationary velocity: v = ε r with r ~ N(0, I) and η = ε²
        v = randn(gens, p.shape[1], p.dtype).mul_(math.sqrt(step_size))
        return SGState(params=p, gens=gens, momenta=v)

    def update(state: SGState, batch: torch.Tensor | None = None) -> SGState:
        idx = batch if batch is not None else batch_for(config, post, state.gens)
        energy, grad = post.energy_and_grad(state.params, idx)
        params, momenta = step(config, state, grad)
        return dataclasses.replace(
            state,
            params=params,
            momenta=momenta,
            energy=energy,
            step=state.step + 1,
            diverged=check_divergence(state.diverged, energy, params),
        )

    return Sampler(config.method, init, update, state_type=SGState)


def _sgld_step(cfg: SamplerConfig, state: SGState, grad: torch.Tensor):
    eps = step_size_at(cfg, state.step)
    step = (
        randn(state.gens, grad.shape[1], grad.dtype).mul_(math.sqrt(2 * eps)).sub_(grad, alpha=eps)
    )
    return step.add_(state.params), state.momenta


def _sghmc_step(cfg: SamplerConfig, state: SGState, grad: torch.Tensor):
    lr, alpha = step_size_at(cfg, state.step), cfg.friction
    v = randn(state.gens, grad.shape[1], grad.dtype).mul_(math.sqrt(2 * alpha * lr))
    v.sub_(grad, alpha=lr).add_(state.momenta, alpha=1 - alpha)
    return state.params + v, v
