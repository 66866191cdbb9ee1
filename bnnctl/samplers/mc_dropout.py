"""MC dropout (Gal & Ghahramani, ICML 2016) as weight samples, for checkpoints trained
with dropout.

Dropout with rate p on hidden unit j multiplies its activation by z_j / (1 − p),
z_j ~ Bernoulli(1 − p). With one mask per sample (shared by all inputs) that is the same
function as the network whose *outgoing* weights — column j of the next layer's weight
matrix — are multiplied by z_j / (1 − p): Gal & Ghahramani's variational distribution
q(W) = W · diag(z). A draw is therefore an ordinary parameter vector that the
deterministic forward pass evaluates, and it can be stored, canonicalised and compared
like any other sample. (Predictions averaged over draws equal MC dropout's in
expectation; per-input masks only change the Monte Carlo noise.)
"""

from __future__ import annotations

import dataclasses

import torch

from bnnctl.errors import UsageError
from bnnctl.samplers.base import ChainState, Sampler, SamplerConfig
from bnnctl.samplers.posterior import LogPosterior

#: Defaults of the method(s) this module implements. No steps: draws are dropout masks on the checkpoint.  # noqa: E501
DEFAULTS = {"mc_dropout": {"step_size": 0.0, "burn_in": 0}}


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """MC dropout at the arch's dropout rate; nothing to fit."""
    arch = post.arch
    if arch.dropout <= 0:
        raise UsageError(
            f"MC dropout needs an architecture trained with dropout; {arch.name} has none "
            "(train with --dropout RATE)"
        )

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> ChainState:
        return ChainState(
            params=params.clone(), gens=gens, diverged=~torch.isfinite(params).all(-1)
        )

    def update(state: ChainState, batch: torch.Tensor | None = None) -> ChainState:
        return dataclasses.replace(state, step=state.step + 1)

    def draw(state: ChainState) -> torch.Tensor:
        return apply_masks(arch, state.params, masks(arch, state.gens, state.params.dtype))

    return Sampler("mc_dropout", init, update, draw, None, 0, ChainState)


def masks(arch, gens: list[torch.Generator], dtype: torch.dtype) -> list[torch.Tensor]:
    """Per-chain unit masks ``[M, width]`` per hidden layer, scaled by 1/(1 − p)."""
    keep = 1.0 - arch.dropout
    return [
        torch.stack(
            [torch.bernoulli(torch.full((w,), keep, dtype=dtype), generator=g) for g in gens]
        ).div_(keep)
        for w in arch.widths[1:-1]
    ]


def apply_masks(arch, params: torch.Tensor, unit_masks: list[torch.Tensor]) -> torch.Tensor:
    """Params with each hidden unit's outgoing weights scaled by its mask."""
    out = params.clone()
    layers = arch.unflatten(out)
    for i, mask in enumerate(unit_masks):
        layers[i + 1][0].mul_(mask[:, None, :])
    return out
