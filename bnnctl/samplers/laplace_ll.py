"""Last-layer Laplace with a Kronecker-factored GGN and the prior precision fitted by the
marginal likelihood, around each checkpoint, for M checkpoints at once: the variant
torch-uncertainty runs through laplace-torch (``Laplace(model, subset_of_weights=
"last_layer", hessian_structure="kron")``, then ``optimize_prior_precision(method=
"marglik")``; Daxberger et al., "Laplace Redux", NeurIPS 2021; Ritter et al. 2018).

The body (every layer but the last) stays at the checkpoint θ*; the last layer z = W φ + b
(W ``[C, H]``, φ the body's output) gets q = N(θ*_last, T P⁻¹). With the summed NLL over
the N training points and H_n the per-point output Hessian (``ggn``: Gaussian I/σ²,
softmax diag(p) − p pᵀ, sigmoid p(1 − p); ``ef``: g_n g_nᵀ, g_n = ∂ℓ_n/∂z), the precision
is block diagonal, as laplace-torch's KFAC (its curvlinops backend, one full batch):

- weights: P_W = G ⊗ A + δ I, with G = Σ_n H_n ``[C, C]`` and A = Σ_n φ_n φ_nᵀ / N
  ``[H, H]`` (exact when H_n does not depend on n, e.g. Gaussian regression);
- bias: P_b = G + δ I (exact); no weight-bias cross terms.

With G = U diag(λ) Uᵀ and A = V diag(μ) Vᵀ, P_W = (U ⊗ V) diag(λ_i μ_j + δ) (U ⊗ V)ᵀ, so a
draw is W = W* + U (E ⊙ S) Vᵀ with E ~ N(0, 1)^(C×H) and S_ij = (T / (λ_i μ_j + δ))^½.

δ maximises the Laplace evidence of the last layer at θ* (prior N(0, δ⁻¹ I), MacKay 1992):
log p(D | δ) ≈ log p(D | θ*) − ½ (Σ_k log(e_k + δ) − K log δ + δ |θ*_last|²), e_k the K
eigenvalues of the curvature (the λ_i μ_j and the λ_i). Its derivative in δ is
½ (Σ_k e_k / (δ (e_k + δ)) − |θ*_last|²), and Σ_k e_k / (δ (e_k + δ)) falls strictly from ∞
to 0, so the maximum is the one root; it is found by bisection in log δ (to float64
precision), per chain, where laplace-torch runs 100 Adam steps on log δ per model. The
fit is at T = 1 (the evidence of the model); T scales q's covariance. ``prior_var`` of
the configuration is not used.

Written here rather than calling laplace-torch per model: (1) laplace-torch requires
torchvision, whose PyPI wheels link CUDA torch and do not load beside the CPU torch build
bnnctl pins, and torchmetrics (another laplace-torch requirement) imports torchvision
whenever it is installed, so ``import laplace`` fails there; (2) it fits one
``nn.Module`` at a time (1–3 s per digits MLP on 2 cores, Adam on δ included; 26 s for 8),
where this fits all M stacked models in one batched pass (8 MLPs: 0.1 s, 64: 0.8 s, on
the same busy machine). tests/test_laplace.py checks the factors, δ and the covariance against
laplace-torch itself (importing it with torchvision hidden).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from bnnctl.arch import AnyArch, ArchSpec, ConvSpec
from bnnctl.errors import UsageError
from bnnctl.samplers.base import ChainState, Sampler, SamplerConfig
from bnnctl.samplers.laplace import _factors
from bnnctl.samplers.posterior import CHAIN_POINTS, LogPosterior, conv_outputs, randn

#: Defaults of the method(s) this module implements. No steps: the curvature and δ are fitted once at each checkpoint.  # noqa: E501
DEFAULTS = {"laplace_ll": {"step_size": 0.0, "burn_in": 0}}

#: Bracket of the prior precision δ searched by the marginal likelihood.
DELTA_RANGE = (1e-12, 1e12)
#: Bisection steps in log δ: the bracket shrinks to below float64 resolution.
BISECTIONS = 100
_F64 = torch.float64


@dataclass(frozen=True, kw_only=True)
class LastLayerState(ChainState):
    """``params`` is θ*; the last layer's posterior in eigenbases: ``g_vecs`` U ``[M, C, C]``,
    ``a_vecs`` V ``[M, H, H]``, ``w_std`` S ``[M, C, H]``, ``b_std`` ``[M, C]`` (the bias
    block in U's basis); ``prior_var`` the fitted 1/δ ``[M]`` (float64)."""

    g_vecs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    a_vecs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    w_std: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    b_std: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    prior_var: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=_F64))


def last_layer(arch: AnyArch) -> tuple[int, int]:
    """The last layer's outputs C and inputs H; its W ``[C, H]`` (row-major) then b are
    the last C·H + C parameters. A conv net qualifies when it ends in a linear layer with
    a bias (nothing after it); otherwise a :class:`UsageError`."""
    if isinstance(arch, ArchSpec):
        return arch.widths[-1], arch.widths[-2]
    p = arch.params[-1]
    if p.layer.op != "linear" or not p.layer.bias or p.index != len(arch.layers) - 1:
        raise UsageError(
            f"laplace_ll needs a conv net that ends in a linear layer with a bias; "
            f"{arch.name} does not"
        )
    return p.layer.out, p.in_shape[0]


def _conv_body(arch: ConvSpec) -> ConvSpec | None:
    """Every layer of ``arch`` before its last linear layer (None: none has parameters,
    the features are the flat input). Its parameters are the first ones of ``arch``'s."""
    layers = arch.layers[: arch.params[-1].index]
    if not any(ly.op in ("conv", "linear") for ly in layers):
        return None
    return ConvSpec(layers, arch.input)


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """Last-layer KFAC Laplace with ``config.fisher`` curvature; ``update`` does nothing."""
    arch = post.arch
    c, h = last_layer(arch)
    offset = arch.n_params - c * h - c  # the last layer: W row-major, then b

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> LastLayerState:
        g, a = kron_factors(post, params, config.fisher)
        lam, u = torch.linalg.eigh(g)
        mu, v = torch.linalg.eigh(a)
        lam, mu = lam.clamp_min(0), mu.clamp_min(0)  # PSD up to rounding
        w_eig = lam[:, :, None] * mu[:, None, :]
        delta = marglik_prior_precision(
            torch.cat([w_eig.flatten(1), lam], 1), params[:, offset:].double().square().sum(1)
        )
        d, t = delta[:, None], post.temperature
        ok = torch.isfinite(g).all((1, 2)) & torch.isfinite(a).all((1, 2)) & (delta > 0)
        return LastLayerState(
            params=params.clone(),
            gens=gens,
            g_vecs=u.to(params.dtype),
            a_vecs=v.to(params.dtype),
            w_std=(t / (w_eig + d[:, :, None])).sqrt().to(params.dtype),
            b_std=(t / (lam + d)).sqrt().to(params.dtype),
            prior_var=1.0 / delta,
            diverged=~ok,
        )

    def update(state: LastLayerState, batch: torch.Tensor | None = None) -> LastLayerState:
        return dataclasses.replace(state, step=state.step + 1)

    def draw(state: LastLayerState) -> torch.Tensor:
        z = randn(state.gens, c * h + c, state.params.dtype, state.params.device)
        dw = state.g_vecs @ (state.w_std * z[:, : c * h].view(-1, c, h)) @ state.a_vecs.mT
        db = (state.g_vecs @ (state.b_std * z[:, c * h :]).unsqueeze(-1)).squeeze(-1)
        out = state.params.clone()
        out[:, offset:] += torch.cat([dw.flatten(1), db], 1)
        return out

    def summary(state: LastLayerState) -> dict[str, torch.Tensor]:
        """Marginal stds: 0 for the fixed body, diag of U (E ⊙ S) Vᵀ's covariance."""
        std = torch.zeros_like(state.params)
        u2, v2 = state.g_vecs.square(), state.a_vecs.square()
        w_var = u2 @ state.w_std.square() @ v2.mT
        b_var = (u2 @ state.b_std.square().unsqueeze(-1)).squeeze(-1)
        std[:, offset:] = torch.cat([w_var.flatten(1), b_var], 1).sqrt()
        return {"std": std}

    return Sampler("laplace_ll", init, update, draw, summary, 0, LastLayerState)


def kron_factors(
    post: LogPosterior, params: torch.Tensor, kind: str = "ggn"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's Kronecker factors at ``params [M, P]``, float64: G = Σ_n H_n
    ``[M, C, C]`` (``ggn``; Σ_n g_n g_nᵀ for ``ef``) and A = Σ_n φ_n φ_nᵀ / N ``[M, H, H]``."""
    arch = post.arch
    (c, h), m = last_layer(arch), params.shape[0]
    g = torch.zeros(m, c, c, dtype=_F64, device=params.device)
    a = torch.zeros(m, h, h, dtype=_F64, device=params.device)
    group = max(1, CHAIN_POINTS * 16 // max(post.n, 1))  # chains per pass: bounds memory
    with torch.no_grad():
        for i in range(0, m, group):
            sl = slice(i, i + group)
            for x, y, _ in post._batches(params, None):
                f, phi = _outputs_and_features(arch, params[sl], x, c, h)
                a[sl] += (phi.mT @ phi).double()
                for s in _factors(post, f, y, kind):
                    g[sl] += (s.mT @ s).double()
    return g, a / post.n


def _outputs_and_features(
    arch: AnyArch, params: torch.Tensor, x: torch.Tensor, c: int, h: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``[M, B, C]`` and the last layer's inputs φ ``[M, B, H]`` on ``x``."""
    m = params.shape[0]
    if isinstance(arch, ArchSpec):
        keep: list = []
        f = arch.forward(params, x, keep)
        phi = keep[-1]  # the last layer's input: [B, H] (one layer) or [M, B, H]
        return f, (phi.expand(m, -1, -1) if phi.dim() == 2 else phi)
    offset = arch.n_params - c * h - c
    body = _conv_body(arch)
    if body is None:
        phi = x.reshape(len(x), -1).expand(m, -1, -1)
    else:
        phi = conv_outputs(body, params[:, :offset].contiguous(), x)
    w = params[:, offset : offset + c * h].reshape(m, c, h)
    b = params[:, offset + c * h :]
    return torch.baddbmm(b.unsqueeze(1), phi, w.transpose(1, 2)), phi


def marglik_prior_precision(eigvals: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """δ ``[M]`` maximising the Laplace evidence −½ (Σ_k log(e_k + δ) − K log δ + δ |θ|²)
    for curvature eigenvalues ``eigvals [M, K]`` (≥ 0) and |θ|² ``sq_norm [M]``: the root
    of Σ_k e_k / (δ (e_k + δ)) = |θ|², by bisection in log δ within :data:`DELTA_RANGE`."""
    e, target = eigvals.double(), sq_norm.double()
    lo = torch.full_like(target, math.log(DELTA_RANGE[0]))
    hi = torch.full_like(target, math.log(DELTA_RANGE[1]))
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        d = mid.exp()[:, None]
        rising = (e / (d * (e + d))).sum(1) > target  # evidence still increasing in δ
        lo, hi = torch.where(rising, mid, lo), torch.where(rising, hi, mid)
    return ((lo + hi) / 2).exp()
