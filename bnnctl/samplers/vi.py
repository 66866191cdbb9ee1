"""Mean-field Gaussian variational inference, Bayes by Backprop (Blundell et al., ICML
2015), over M stacked chains (each chain is one independent fit of q).

q(θ) = N(μ, diag σ²) with σ = softplus(ρ). Each update draws θ = μ + σ ⊙ ε, ε ~ N(0, I)
(reparameterisation) and takes an Adam step on the tempered negative ELBO

    L(μ, ρ) = E_q[ Σ_n −log p(y_n | x_n, θ) ] + E_q[ −log N(θ | 0, σ_p² I) ] − T · H(q),
    E_q[ −log N(θ | 0, σ_p² I) ] = Σ_i (σ_i² + μ_i²) / (2 σ_p²) + (P/2) log 2πσ_p²,
    H(q) = Σ_i log σ_i + (P/2) log 2πe,

which is T · KL(q ‖ p_T) up to a constant, p_T ∝ exp(−U_T) the tempered posterior
(p(D | θ) p(θ))^{1/T} of :mod:`.posterior`; at T = 1 it is E_q[NLL] + KL(q ‖ prior).
(Weighing that KL by T instead would temper the likelihood alone.) Its gradients, with
g = ∇_θ of the (N/B-scaled minibatch) summed NLL at the drawn θ, are

    ∇_μ L = g + μ / σ_p²,    ∇_σ L = g ⊙ ε + σ / σ_p² − T / σ,    ∇_ρ = ∇_σ ⊙ sigmoid(ρ).

Mean-field q matches the mean of a Gaussian posterior exactly but its variances are
1 / Λ_ii (Λ the posterior precision), smaller than the marginal variances (Λ⁻¹)_ii
whenever parameters are correlated — the well-known underestimation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bnnctl.samplers.base import ChainState, Sampler, SamplerConfig, batch_for, check_divergence
from bnnctl.samplers.posterior import LogPosterior, randn

#: Defaults of the method(s) this module implements. Adam's learning rate on per-point scales; burn-in is the fitting steps.  # noqa: E501
DEFAULTS = {"mfvi": {"step_size": 1e-3, "burn_in": 1000}}

BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True, kw_only=True)
class VIState(ChainState):
    """``params`` is q's mean μ; ``rho`` its softplus-std parameter; Adam's moments of
    (μ, ρ) stacked ``[2, M, P]``; ``energy`` the last negative-ELBO estimate."""

    rho: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    adam_m: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    adam_v: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    energy: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    @property
    def std(self) -> torch.Tensor:
        return F.softplus(self.rho)


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """MFVI fit for ``config.burn_in`` Adam steps (learning rate ``step_size``)."""
    temp, s2 = post.temperature, post.prior_var
    step_size, burn_in = config.step_size, config.burn_in
    assert step_size is not None and burn_in is not None  # set by SamplerConfig.__post_init__

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> VIState:
        rho = torch.full_like(params, inverse_softplus(config.init_std))
        zeros = params.new_zeros((2, *params.shape))
        return VIState(
            params=params.clone(), gens=gens, rho=rho, adam_m=zeros, adam_v=zeros.clone()
        )

    def update(state: VIState, batch: torch.Tensor | None = None) -> VIState:
        idx = batch if batch is not None else batch_for(config, post, state.gens)
        mu, rho = state.params, state.rho
        sigma = F.softplus(rho)
        eps = randn(state.gens, mu.shape[1], mu.dtype, mu.device)
        nll, g = post.energy_and_grad(mu + sigma * eps, idx, prior=False)
        p = mu.shape[1]
        cross = ((sigma**2 + mu**2).double().sum(-1) / s2 + p * math.log(2 * math.pi * s2)) / 2
        entropy = sigma.log().double().sum(-1) + p / 2 * math.log(2 * math.pi * math.e)
        g_mu = g + mu / s2
        g_rho = (g * eps + sigma / s2 - temp / sigma) * torch.sigmoid(rho)
        t = state.step + 1
        m = BETAS[0] * state.adam_m + (1 - BETAS[0]) * torch.stack([g_mu, g_rho])
        v = BETAS[1] * state.adam_v + (1 - BETAS[1]) * torch.stack([g_mu, g_rho]).square()
        delta = (
            step_size * (m / (1 - BETAS[0] ** t)) / ((v / (1 - BETAS[1] ** t)).sqrt() + ADAM_EPS)
        )
        energy = nll + cross - temp * entropy
        return dataclasses.replace(
            state,
            params=mu - delta[0],
            rho=rho - delta[1],
            adam_m=m,
            adam_v=v,
            step=t,
            energy=energy,
            diverged=check_divergence(state.diverged, energy, mu - delta[0]),
        )

    def draw(state: VIState) -> torch.Tensor:
        mu = state.params
        return mu + state.std * randn(state.gens, mu.shape[1], mu.dtype, mu.device)

    def summary(state: VIState) -> dict[str, torch.Tensor]:
        return {"mean": state.params, "std": state.std}

    return Sampler("mfvi", init, update, draw, summary, burn_in, VIState)
