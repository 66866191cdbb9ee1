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

Conv nets
---------
A conv net's ``d<rate>`` layers drop element-wise, as ``nn.Dropout`` (see
:mod:`bnnctl.arch.conv`). Such a mask folds exactly into weights only where each
masked element is one input column of a linear layer: a dropout on flat features, or
on a feature map that is then flattened (``f``), with nothing but ``f``, relu or leaky
relu (positively homogeneous: ``relu(z·x) = z·relu(x)`` for ``z ≥ 0``) before the
linear layer. Its mask, one per draw (``[C·H·W]`` or ``[F]``), then scales that
layer's input columns (channel-major, as ``f`` flattens). Any other dropout layer (one
followed by a conv, a pool, ``gap``, tanh or gelu, or by nothing) is refused with one
line naming it: an element-wise mask on a conv feature map is not a weight-space
sample (a conv shares its kernel across positions), and switching to channel-wise
(``Dropout2d``) masks would sample a function the net was not trained with.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from bnnctl.arch import ConvSpec
from bnnctl.arch.modules import dropout_masks
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
    if isinstance(arch, ConvSpec):
        targets = conv_fold_targets(arch)

        def draw(state: ChainState) -> torch.Tensor:
            m = conv_masks(arch, state.gens, state.params.dtype, targets)
            m = [t.to(state.params.device) for t in m]  # drawn on the CPU
            return apply_conv_masks(arch, state.params, m, targets)

    else:

        def draw(state: ChainState) -> torch.Tensor:
            m = masks(arch, state.gens, state.params.dtype)
            m = [t.to(state.params.device) for t in m]  # drawn on the CPU
            return apply_masks(arch, state.params, m)

    def init(params: torch.Tensor, gens: list[torch.Generator]) -> ChainState:
        return ChainState(
            params=params.clone(), gens=gens, diverged=~torch.isfinite(params).all(-1)
        )

    def update(state: ChainState, batch: torch.Tensor | None = None) -> ChainState:
        return dataclasses.replace(state, step=state.step + 1)

    return Sampler("mc_dropout", init, update, draw, None, 0, ChainState)


def masks(arch, gens: list[torch.Generator], dtype: torch.dtype) -> list[torch.Tensor]:
    """Per-chain unit masks ``[M, width]`` per hidden layer, scaled by 1/(1 − p)."""
    return [dropout_masks(gens, (w,), arch.dropout, dtype) for w in arch.widths[1:-1]]


def apply_masks(arch, params: torch.Tensor, unit_masks: list[torch.Tensor]) -> torch.Tensor:
    """Params with each hidden unit's outgoing weights scaled by its mask."""
    out = params.clone()
    layers = arch.unflatten(out)
    for i, mask in enumerate(unit_masks):
        layers[i + 1][0].mul_(mask[:, None, :])
    return out


#: What may lie between a conv net's dropout layer and the linear layer its mask folds into.
FOLD_THROUGH = ("flatten", "dropout")
HOMOGENEOUS = ("relu", "leaky_relu")


def conv_fold_targets(arch: ConvSpec) -> list[tuple[int, str]]:
    """``(dropout layer index, weight name of the linear layer its mask folds into)`` for
    each dropout layer with rate > 0 of a conv net; a :class:`UsageError` names the first
    layer whose element-wise mask cannot be folded (see the module doc)."""
    prefix = {p.index: p for p in arch.params}
    out = []
    for i, _shape in arch.dropout_shapes():
        ly = arch.layers[i]
        if ly.rate <= 0:
            continue
        target, blocker = None, "nothing (it is the last layer)"
        for j in range(i + 1, len(arch.layers)):
            nxt = arch.layers[j]
            if j in prefix:
                if nxt.op == "linear":
                    target = f"{prefix[j].prefix}.weight"
                else:
                    blocker = f"a conv ({nxt.token()})"
                break
            if nxt.op in FOLD_THROUGH or (nxt.op == "act" and nxt.fn in HOMOGENEOUS):
                continue
            blocker = f"{nxt.token()}"
            break
        if target is None:
            raise UsageError(
                f"mc_dropout cannot fold dropout layer {i + 1} ({ly.token()}) of {arch.name} "
                f"into weights: its element-wise mask is followed by {blocker}, not a linear "
                "layer (after only f, relu or leaky relu)"
            )
        out.append((i, target))
    return out


def conv_masks(
    arch: ConvSpec, gens: list[torch.Generator], dtype: torch.dtype, targets: list[tuple[int, str]]
) -> list[torch.Tensor]:
    """Per-chain element-wise masks ``[M, C·H·W or F]`` of each foldable dropout layer
    (``targets`` of :func:`conv_fold_targets`), scaled by 1/(1 − p): one per draw,
    shared by all inputs, chain m's from its own generator, layer by layer."""
    shapes = dict(arch.dropout_shapes())
    return [
        dropout_masks(gens, (math.prod(shapes[i]),), arch.layers[i].rate, dtype) for i, _ in targets
    ]


def apply_conv_masks(
    arch: ConvSpec,
    params: torch.Tensor,
    layer_masks: list[torch.Tensor],
    targets: list[tuple[int, str]],
) -> torch.Tensor:
    """Params with the input columns of each target linear layer scaled by its mask."""
    out = params.clone()
    views = arch.views(out)
    for (_, name), mask in zip(targets, layer_masks, strict=True):
        views[name].mul_(mask[:, None, :])
    return out
