"""Full-batch Hamiltonian Monte Carlo over M stacked chains, with a Metropolis
accept/reject per chain (Neal 2011, "MCMC using Hamiltonian dynamics"; the reference
posterior of Izmailov et al., ICML 2021).

With identity mass, H(θ, p) = U_T(θ) + |p|²/2. One update draws p ~ N(0, I), runs
``leapfrog`` steps of size ε (jittered ±10 % per proposal to avoid periodic orbits)::

    p ← p − (ε/2) ∇U_T(θ);  [θ ← θ + ε p;  p ← p − ε ∇U_T(θ)] × L;  last half step ε/2

and accepts (θ', p') with probability min(1, exp(H(θ, p) − H(θ', p'))). A proposal whose
energy is not finite, or whose energy error exceeds 1000, is a *divergent transition*:
it is rejected and counted. During burn-in only, each chain's step size is tuned by
dual averaging (Hoffman & Gelman 2014, Alg. 5) towards ``target_accept``; at the end of
burn-in it is fixed to the averaged iterate.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from bnnctl.samplers.base import ChainState, Sampler, SamplerConfig
from bnnctl.samplers.posterior import LogPosterior, rand, randn

#: Defaults of the method(s) this module implements. The initial leapfrog step; dual averaging tunes it during burn-in.  # noqa: E501
DEFAULTS = {"hmc": {"step_size": 1e-3, "burn_in": 50}}

JITTER = 0.1
MAX_ENERGY_ERROR = 1000.0
# dual averaging constants of Hoffman & Gelman (2014)
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75


def _f64(n: int, value: float = 0.0, device: torch.device | None = None) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float64, device=device)


@dataclass(frozen=True, kw_only=True)
class HMCState(ChainState):
    """Positions with their energy and gradient, each chain's step size and dual-averaging
    statistics, and acceptance / divergence counts (since the end of burn-in)."""

    energy: torch.Tensor = field(default_factory=lambda: _f64(0))
    grad: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    step_size: torch.Tensor = field(default_factory=lambda: _f64(0))
    log_step_bar: torch.Tensor = field(default_factory=lambda: _f64(0))
    h_bar: torch.Tensor = field(default_factory=lambda: _f64(0))
    accepted: torch.Tensor = field(default_factory=lambda: _f64(0))
    divergences: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    proposed: int = 0

    @property
    def accept_rate(self) -> torch.Tensor:
        return self.accepted / max(self.proposed, 1)


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """HMC with ``config.leapfrog`` steps per proposal."""
    step_size0, burn_in = config.step_size, config.burn_in
    assert step_size0 is not None and burn_in is not None  # set by SamplerConfig.__post_init__

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> HMCState:
        m, dev = params.shape[0], params.device
        energy, grad = post.energy_and_grad(params)
        diverged = ~torch.isfinite(energy)
        return HMCState(
            params=params.clone(),
            gens=gens,
            diverged=diverged,
            energy=energy,
            grad=grad,
            step_size=_f64(m, step_size0, dev),
            log_step_bar=_f64(m, math.log(step_size0), dev),
            h_bar=_f64(m, 0.0, dev),
            accepted=_f64(m, 0.0, dev),
            divergences=torch.zeros(m, dtype=torch.int64, device=dev),
        )

    def update(state: HMCState, batch: torch.Tensor | None = None) -> HMCState:
        if batch is not None:
            raise ValueError("HMC is full-batch: it takes no minibatch")
        dev = state.params.device
        jitter = 1 + JITTER * (2 * rand(state.gens, device=dev) - 1)
        q, p, p0, energy, grad = leapfrog(post, state, state.step_size * jitter, config.leapfrog)
        h0 = state.energy + 0.5 * p0.double().square().sum(-1)
        h1 = energy + 0.5 * p.double().square().sum(-1)
        log_accept = torch.nan_to_num(h0 - h1, nan=-math.inf)
        divergent = ~torch.isfinite(h1) | (h1 - h0 > MAX_ENERGY_ERROR)
        u = rand(state.gens, device=dev)
        ok = (u.log() < log_accept) if config.metropolis else torch.isfinite(h1)
        ok &= ~divergent
        new = dataclasses.replace(
            state,
            params=torch.where(ok[:, None], q, state.params),
            energy=torch.where(ok, energy, state.energy),
            grad=torch.where(ok[:, None], grad, state.grad),
            step=state.step + 1,
        )
        adapting = config.adapt and state.step < burn_in
        if adapting:
            return _adapt(new, log_accept.clamp(max=0).exp(), config)
        return dataclasses.replace(
            new,
            accepted=state.accepted + ok.double(),
            divergences=state.divergences + divergent.long(),
            proposed=state.proposed + 1,
        )

    return Sampler("hmc", init, update, state_type=HMCState)


def leapfrog(post: LogPosterior, state: HMCState, eps: torch.Tensor, steps: int):
    """Leapfrog from ``state`` with per-chain step sizes ``eps [M]``: returns the end
    position, momentum, start momentum, end energy and gradient."""
    e = eps.to(state.params.dtype)[:, None]
    p0 = randn(state.gens, state.params.shape[1], state.params.dtype, state.params.device)
    p = p0.addcmul(e, state.grad, value=-0.5)
    q = state.params.clone()
    for i in range(steps):
        q.addcmul_(e, p)
        energy, grad = post.energy_and_grad(q)
        p.addcmul_(e, grad, value=-1.0 if i < steps - 1 else -0.5)
    return q, p, p0, energy, grad


def _adapt(state: HMCState, accept_prob: torch.Tensor, cfg: SamplerConfig) -> HMCState:
    """One dual-averaging update of each chain's log step size (burn-in only)."""
    assert cfg.step_size is not None and cfg.burn_in is not None  # set by __post_init__
    t = state.step  # already incremented: 1, 2, ...
    mu = math.log(10 * cfg.step_size)
    w = 1.0 / (t + T0)
    h_bar = (1 - w) * state.h_bar + w * (cfg.target_accept - accept_prob)
    log_eps = (mu - math.sqrt(t) / GAMMA * h_bar).clamp(-30, 5)
    eta = t**-KAPPA
    log_bar = eta * log_eps + (1 - eta) * state.log_step_bar
    done = t >= cfg.burn_in
    step_size = (log_bar if done else log_eps).exp()
    return dataclasses.replace(state, h_bar=h_bar, log_step_bar=log_bar, step_size=step_size)
