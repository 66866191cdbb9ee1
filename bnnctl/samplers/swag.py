"""SWAG: SWA-Gaussian, diagonal plus low-rank (Maddox et al., NeurIPS 2019), from a short
SGD run after each checkpoint, M runs at once.

SGD with momentum 0.9 and learning rate η on the per-point objective U_T / N (minibatch
estimate) runs ``burn_in`` steps, then collects K = ``rank`` snapshots θ_i every
``thin`` steps: running moments θ̄ = mean θ_i, s = mean θ_i², and the deviations
D = [θ_i − θ̄_i] (the last K columns). A draw is

    θ = θ̄ + (1/√2) sqrt(diag(s − θ̄²)) z₁ + (1/√(2(K − 1))) D z₂,   z₁ ~ N(0, I_P), z₂ ~ N(0, I_K).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from bnnctl.samplers.base import ChainState, Sampler, SamplerConfig, batch_for, check_divergence
from bnnctl.samplers.posterior import LogPosterior, randn

#: Defaults of the method(s) this module implements. SGD's learning rate on per-point scales; burn-in steps before the snapshots.  # noqa: E501
DEFAULTS = {"swag": {"step_size": 0.05, "burn_in": 100}}

MOMENTUM = 0.9
MIN_VAR = 1e-30


@dataclass(frozen=True, kw_only=True)
class SWAGState(ChainState):
    """The SGD iterate ``params`` and its momentum buffer; the running moments and the
    ring buffer of deviations ``dev [M, K, P]``; ``collected`` snapshots so far."""

    velocity: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    sq_mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    dev: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    energy: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    collected: int = 0

    @property
    def diag_var(self) -> torch.Tensor:
        return (self.sq_mean - self.mean.square()).clamp_min(MIN_VAR)


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """SWAG fit by ``burn_in + rank * thin`` SGD steps."""
    k = config.rank
    step_size, burn_in = config.step_size, config.burn_in
    assert step_size is not None and burn_in is not None  # set by SamplerConfig.__post_init__

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> SWAGState:
        m, p = params.shape
        z = torch.zeros_like(params)
        return SWAGState(
            params=params.clone(),
            gens=gens,
            velocity=z,
            mean=z.clone(),
            sq_mean=z.clone(),
            dev=torch.zeros((m, k, p), dtype=params.dtype),
        )

    def update(state: SWAGState, batch: torch.Tensor | None = None) -> SWAGState:
        idx = batch if batch is not None else batch_for(config, post, state.gens)
        energy, grad = post.energy_and_grad(state.params, idx)
        velocity = MOMENTUM * state.velocity + grad / post.n
        params = state.params - step_size * velocity
        new = dataclasses.replace(
            state,
            params=params,
            velocity=velocity,
            energy=energy,
            step=state.step + 1,
            diverged=check_divergence(state.diverged, energy, params),
        )
        after = new.step - burn_in
        return (
            _collect(new) if after > 0 and after % config.thin == 0 and state.collected < k else new
        )

    def draw(state: SWAGState) -> torch.Tensor:
        m, p = state.params.shape
        n = min(state.collected, k)
        z1 = randn(state.gens, p, state.params.dtype)
        theta = state.mean + math.sqrt(0.5) * state.diag_var.sqrt() * z1
        if n >= 2:
            z2 = randn(state.gens, n, state.params.dtype)
            theta += torch.bmm(z2[:, None, :], state.dev[:, :n]).squeeze(1) / math.sqrt(2 * (n - 1))
        return theta

    def summary(state: SWAGState) -> dict[str, torch.Tensor]:
        return {"mean": state.mean, "std": state.diag_var.sqrt()}

    return Sampler("swag", init, update, draw, summary, burn_in + k * config.thin, SWAGState)


def _collect(state: SWAGState) -> SWAGState:
    """Add the current iterate to the moments and the deviation buffer."""
    n = state.collected + 1
    mean = state.mean + (state.params - state.mean) / n
    sq_mean = state.sq_mean + (state.params.square() - state.sq_mean) / n
    dev = state.dev.clone()
    dev[:, (n - 1) % dev.shape[1]] = state.params - mean
    return dataclasses.replace(state, mean=mean, sq_mean=sq_mean, dev=dev, collected=n)
