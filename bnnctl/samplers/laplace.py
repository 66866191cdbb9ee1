"""Diagonal Laplace approximation around a checkpoint (MacKay 1992; Ritter et al. 2018;
Daxberger et al., "Laplace Redux", NeurIPS 2021), for M checkpoints at once.

q(θ) = N(θ*, diag(1/λ)) with λ = (c + 1/σ_p²) / T, where c is the diagonal of a
curvature of the summed NLL at θ*, over all N training points:

- ``ggn``: the generalised Gauss-Newton Σ_n J_nᵀ H_n J_n (J_n = ∂f(x_n)/∂θ, H_n the
  Hessian of −log p(y_n | f) in f). With H_n = Σ_k s_k s_kᵀ — s_k = e_k/σ (Gaussian);
  s_k = sqrt(p_k)(e_k − p) (softmax) — its diagonal is Σ_n Σ_k (J_nᵀ s_k)² exactly.
- ``ef``: the empirical Fisher Σ_n g_n ⊙ g_n, g_n the per-point NLL gradient.

Both are computed without per-example gradient tensors: for a linear layer z = W h + b
the per-example gradient of W is dz hᵀ, so Σ_n (dz_n hᵀ_n)² = (dz²)ᵀ (h²) — one matmul
per layer and per factor s_k. For a linear model with Gaussian likelihood the GGN is the
exact Hessian, so the Laplace precision diagonal is exact (and the whole approximation
is exact when the design is orthogonal).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from bnnctl.arch import ArchSpec
from bnnctl.errors import UsageError
from bnnctl.evaluate.likelihood import Gaussian, two_class_logits
from bnnctl.samplers.base import ChainState, Sampler, SamplerConfig
from bnnctl.samplers.posterior import LogPosterior, randn

#: Defaults of the method(s) this module implements. No steps: the curvature is computed once at each checkpoint.  # noqa: E501
DEFAULTS = {"laplace": {"step_size": 0.0, "burn_in": 0}}


@dataclass(frozen=True, kw_only=True)
class LaplaceState(ChainState):
    """``params`` is the mode θ*; ``std`` = λ^(-1/2)."""

    std: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """Diagonal Laplace with ``config.fisher`` curvature; ``update`` does nothing."""

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> LaplaceState:
        curv = diag_curvature(post, params, config.fisher)
        precision = (curv + 1.0 / post.prior_var) / post.temperature
        return LaplaceState(
            params=params.clone(),
            gens=gens,
            std=precision.rsqrt(),
            diverged=~torch.isfinite(precision).all(-1),
        )

    def update(state: LaplaceState, batch: torch.Tensor | None = None) -> LaplaceState:
        return dataclasses.replace(state, step=state.step + 1)

    def draw(state: LaplaceState) -> torch.Tensor:
        theta = state.params
        return theta + state.std * randn(state.gens, theta.shape[1], theta.dtype, theta.device)

    def summary(state: LaplaceState) -> dict[str, torch.Tensor]:
        return {"std": state.std}

    return Sampler("laplace", init, update, draw, summary, 0, LaplaceState)


def diag_curvature(post: LogPosterior, params: torch.Tensor, kind: str = "ggn") -> torch.Tensor:
    """Diagonal GGN or empirical Fisher of the summed NLL, ``[M, P]`` (MLPs only)."""
    arch = post.arch
    if not isinstance(arch, ArchSpec):
        raise UsageError(
            f"laplace does not support conv nets yet ({arch.name}); use laplace_ll or swag"
        )
    out = torch.zeros_like(params)
    with torch.no_grad():
        for x, y, _ in post._batches(params, None):
            keep: list = []
            f = arch.forward(params, x, keep)
            for s in _factors(post, f, y, kind):
                _accumulate_squares(arch, params, keep, s, out)
    return out


def _factors(post: LogPosterior, f: torch.Tensor, y: torch.Tensor, kind: str):
    """Vectors s with Σ s sᵀ = the per-point output Hessian (ggn) or g gᵀ (ef)."""
    lik = post.likelihood
    if kind == "ef":
        yield lik.nll_and_grad(f, y)[1]
        return
    if isinstance(lik, Gaussian):
        for k in range(f.shape[-1]):
            s = torch.zeros_like(f)
            s[..., k] = 1.0 / lik.noise_std
            yield s
        return
    if f.shape[-1] == 1:  # binary logistic: H = σ(z)(1 − σ(z))
        p = torch.sigmoid(f)
        yield (p * (1 - p)).sqrt()
        return
    p = torch.softmax(two_class_logits(f), -1)
    for k in range(p.shape[-1]):
        s = -p * p[..., k : k + 1].sqrt()
        s[..., k] += p[..., k].sqrt()
        yield s


def _accumulate_squares(arch, params, keep, dout, out) -> None:
    """Add Σ_n (per-example gradient of ⟨dout_n, f(x_n)⟩)² into ``out`` (model-major)."""
    layers, olayers = arch.unflatten(params), arch.unflatten(out)
    dz = dout
    for i in range(len(layers) - 1, -1, -1):
        h_in = keep[3 * i]
        gw, gb = olayers[i]
        gw += torch.matmul(dz.square().transpose(1, 2), h_in.square())
        gb += dz.square().sum(1)
        if i == 0:
            return
        dz = arch.act_backward(torch.bmm(dz, layers[i][0]), keep[3 * i - 2], keep[3 * i - 1])
