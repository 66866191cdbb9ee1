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

from bnnctl.errors import UsageError
from bnnctl.posterior import LogPosterior, minibatch

METHODS = ("sgld", "sghmc", "hmc", "mfvi", "laplace", "swag", "mc_dropout")
#: Methods that fit an approximation q and then draw from it.
APPROXIMATIONS = ("mfvi", "laplace", "swag", "mc_dropout")
#: Methods that only make sense around a trained checkpoint (need ``--from``).
NEED_START = ("laplace", "swag", "mc_dropout")
SCHEDULES = ("constant", "poly")
FISHERS = ("ggn", "ef")
#: Step size (learning rate) when none is given. SG-MCMC and HMC steps act on the summed
#: energy U_T (so they shrink with N); SWAG's SGD and MFVI's Adam on per-point scales.
DEFAULT_STEP = {"sgld": 1e-5, "sghmc": 1e-5, "hmc": 1e-3, "mfvi": 1e-3, "swag": 0.05,
                "laplace": 0.0, "mc_dropout": 0.0}
DEFAULT_BURN_IN = {"sgld": 100, "sghmc": 100, "hmc": 50, "mfvi": 1000, "swag": 100,
                   "laplace": 0, "mc_dropout": 0}


@dataclass(frozen=True)
class SamplerConfig:
    """One configuration for all methods; each reads the fields that apply to it.

    ``step_size``: SGLD ε, SGHMC learning rate η, HMC initial leapfrog step, MFVI Adam
    learning rate, SWAG SGD learning rate. ``friction``: SGHMC α (1 − momentum).
    ``leapfrog``: HMC leapfrog steps per proposal; ``target_accept``: dual-averaging
    target during burn-in (``adapt``). ``metropolis=False`` skips the accept/reject step
    (for diagnostics only: the chain is then biased). ``fisher``: Laplace curvature,
    generalised Gauss-Newton (``ggn``) or empirical Fisher (``ef``). ``rank``: SWAG's
    number of deviation columns (and of snapshots). ``init_std``: MFVI's initial σ.
    """

    method: str = "sghmc"
    step_size: float | None = None
    prior_var: float = 1.0
    temperature: float = 1.0
    noise_std: float = 1.0
    burn_in: int | None = None
    thin: int = 1
    batch_size: int = 128
    friction: float = 0.05
    schedule: str = "constant"
    leapfrog: int = 10
    target_accept: float = 0.8
    adapt: bool = True
    metropolis: bool = True
    fisher: str = "ggn"
    rank: int = 20
    init_std: float = 1e-3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.step_size is None:
            object.__setattr__(self, "step_size", DEFAULT_STEP[self.method])
        if self.burn_in is None:
            object.__setattr__(self, "burn_in", DEFAULT_BURN_IN[self.method])
        checks = [
            (self.prior_var > 0, f"--prior-var must be positive, got {self.prior_var}"),
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}"),
            (self.noise_std > 0, f"--noise-std must be positive, got {self.noise_std}"),
            (self.step_size >= 0 and (self.step_size > 0 or self.method in ("laplace", "mc_dropout")),
             f"--step-size must be positive, got {self.step_size}"),
            (self.burn_in >= 0, f"--burn-in must be >= 0, got {self.burn_in}"),
            (self.thin >= 1, f"--thin must be >= 1, got {self.thin}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (0 < self.friction <= 1, f"--friction must be in (0, 1], got {self.friction}"),
            (self.leapfrog >= 1, f"--leapfrog must be >= 1, got {self.leapfrog}"),
            (0 < self.target_accept < 1, f"target acceptance must be in (0, 1), got {self.target_accept}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}"),
            (self.fisher in FISHERS, f"unknown curvature {self.fisher!r}; choose ggn or ef"),
            (self.rank >= 2, f"--rank must be >= 2, got {self.rank}"),
            (self.init_std > 0, f"initial std must be positive, got {self.init_std}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
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
            self.diverged = torch.zeros(self.params.shape[0], dtype=torch.bool)


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


def check_divergence(diverged: torch.Tensor, energy: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Chains whose energy or parameters are no longer finite (sticky). (A row sum is
    non-finite iff the row holds a NaN or inf, short of overflow at ~1e38.)"""
    bad = ~torch.isfinite(energy) | ~torch.isfinite(params.sum(-1))
    return diverged | bad


def batch_for(cfg: SamplerConfig, post: LogPosterior, gens: list[torch.Generator]) -> torch.Tensor | None:
    """Per-chain minibatch indices, or None (full batch) when the batch covers the data."""
    return None if cfg.batch_size >= post.n else minibatch(gens, post.n, cfg.batch_size)


def step_size_at(cfg: SamplerConfig, step: int) -> float:
    """Constant, or polynomial decay ε_t = ε (1 + t/τ)^(-0.55) with τ = max(burn_in, 1)
    (Welling & Teh 2011's a(b + t)^(-γ) with γ = 0.55)."""
    if cfg.schedule == "poly":
        return cfg.step_size * (1 + step / max(cfg.burn_in, 1)) ** -0.55
    return cfg.step_size


# --- saving and restoring a state -------------------------------------------------------


def save_state(state: ChainState) -> tuple[dict[str, np.ndarray], dict]:
    """The state as arrays (tensors, generator states as uint8 rows) and JSON attrs."""
    arrays, attrs = {}, {"tensors": {}, "scalars": {}}
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


def load_state(cls: type, arrays: dict[str, np.ndarray], attrs: dict) -> ChainState:
    """Inverse of :func:`save_state`."""
    kw: dict[str, Any] = dict(attrs["scalars"])
    for name, dtype in attrs["tensors"].items():
        kw[name] = torch.from_numpy(np.array(arrays[name])).to(getattr(torch, dtype))
    gens = []
    for row in arrays["gens"]:
        g = torch.Generator()
        g.set_state(torch.from_numpy(np.array(row, dtype=np.uint8)))
        gens.append(g)
    return cls(gens=gens, **kw)
