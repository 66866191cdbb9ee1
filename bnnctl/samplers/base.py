"""What every sampler shares: its configuration, its face, the chain state and how a
state is saved for resuming.

Every method module has the same face (as in the ``posteriors`` library):
``build(config, posterior) -> Sampler`` whose ``init(params [M, P], gens) -> state`` and
``update(state, batch=None) -> state`` are transforms over ``M`` stacked chains. An
update returns a new state; the only thing it changes in place is the chains' own
``torch.Generator`` objects (one per chain, never the global RNG), whose states are part
of the saved state, so a chain is reproducible and resumable bit for bit.

MCMC methods (SGLD, SGHMC, HMC) are kept by taking ``state.params`` every ``thin``
updates after ``burn_in``. Approximations (MFVI, Laplace, SWAG, MC dropout) are first fit
by ``fit_steps`` updates, then sampled by ``draw(state) -> [M, P]`` from q.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bnnctl.samplers.config import SamplerConfig
from bnnctl.samplers.posterior import LogPosterior, minibatch


@dataclass(frozen=True, kw_only=True)
class ChainState:
    """What every chain carries: positions ``params [M, P]``, one generator per chain,
    the number of updates done, and which chains have diverged (non-finite energy or
    parameters; their samples are not stored from then on)."""

    params: torch.Tensor
    gens: list[torch.Generator]
    step: int = 0
    diverged: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        if self.diverged.numel() != self.params.shape[0]:
            object.__setattr__(
                self,
                "diverged",
                torch.zeros(self.params.shape[0], dtype=torch.bool, device=self.params.device),
            )


@dataclass(frozen=True)
class Sampler:
    """A method's transforms. ``fit_steps`` is the number of updates before ``draw`` for
    approximations (None for MCMC, which keeps ``state.params``)."""

    method: str
    init: Callable[..., Any]
    update: Callable[..., Any]
    draw: Callable[[Any], torch.Tensor] | None = None
    summary: Callable[[Any], dict[str, torch.Tensor]] | None = None
    fit_steps: int | None = None
    state_type: type = ChainState

    @property
    def approximate(self) -> bool:
        return self.draw is not None


def check_divergence(
    diverged: torch.Tensor, energy: torch.Tensor, params: torch.Tensor
) -> torch.Tensor:
    """Chains whose energy or parameters are no longer finite (sticky). (A row sum is
    non-finite iff the row holds a NaN or inf, short of overflow at ~1e38.)"""
    bad = ~torch.isfinite(energy) | ~torch.isfinite(params.sum(-1))
    return diverged | bad


def batch_for(
    cfg: SamplerConfig, post: LogPosterior, gens: list[torch.Generator]
) -> torch.Tensor | None:
    """Per-chain minibatch indices, or None (full batch) when the batch covers the data."""
    if cfg.batch_size >= post.n:
        return None
    return minibatch(gens, post.n, cfg.batch_size, post.x.device)


def step_size_at(cfg: SamplerConfig, step: int) -> float:
    """Constant, or polynomial decay ε_t = ε (1 + t/τ)^(-0.55) with τ = max(burn_in, 1)
    (Welling & Teh 2011's a(b + t)^(-γ) with γ = 0.55)."""
    assert cfg.step_size is not None and cfg.burn_in is not None  # set by __post_init__
    if cfg.schedule == "poly":
        return cfg.step_size * (1 + step / max(cfg.burn_in, 1)) ** -0.55
    return cfg.step_size


# --- saving and restoring a state -------------------------------------------------------


def save_state(state: ChainState) -> tuple[dict[str, np.ndarray], dict]:
    """The state as arrays (tensors, generator states as uint8 rows) and JSON attrs."""
    arrays: dict[str, np.ndarray] = {}
    attrs: dict[str, dict[str, Any]] = {"tensors": {}, "scalars": {}}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if f.name == "gens":
            arrays["gens"] = torch.stack([g.get_state() for g in v]).numpy()
        elif isinstance(v, torch.Tensor):
            arrays[f.name] = v.detach().cpu().numpy()
            attrs["tensors"][f.name] = str(v.dtype).removeprefix("torch.")
        else:
            attrs["scalars"][f.name] = v
    return arrays, attrs


def load_state(
    cls: type, arrays: dict[str, np.ndarray], attrs: dict, device: torch.device | None = None
) -> ChainState:
    """Inverse of :func:`save_state`, its tensors on ``device`` (default the CPU)."""
    kw: dict[str, Any] = dict(attrs["scalars"])
    for name, dtype in attrs["tensors"].items():
        t = torch.from_numpy(np.array(arrays[name]))
        kw[name] = t.to(device=device, dtype=getattr(torch, dtype))
    gens = []
    for row in arrays["gens"]:
        g = torch.Generator()
        g.set_state(torch.from_numpy(np.array(row, dtype=np.uint8)))
        gens.append(g)
    return cls(gens=gens, **kw)
