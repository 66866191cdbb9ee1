"""The sampler configuration and the method names: torch-free, so that the CLI can list
the choices without importing torch. Each method module owns its defaults
(``DEFAULTS``); :data:`bnnctl.samplers.registry.REGISTRY` maps a method to its module."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum

from bnnctl.errors import UsageError


class Method(str, Enum):
    """Sampling methods; :data:`.registry.REGISTRY` maps each to its module."""

    sgld = "sgld"
    sghmc = "sghmc"
    hmc = "hmc"
    mfvi = "mfvi"
    laplace = "laplace"
    laplace_ll = "laplace_ll"
    swag = "swag"
    mc_dropout = "mc_dropout"


class Schedule(str, Enum):
    """SGLD/SGHMC step-size schedules."""

    constant = "constant"
    poly = "poly"


class Fisher(str, Enum):
    """Laplace curvatures (``laplace``, ``laplace_ll``): generalised Gauss-Newton or
    empirical Fisher."""

    ggn = "ggn"
    ef = "ef"


METHODS = tuple(m.value for m in Method)
#: Methods that fit an approximation q and then draw from it.
APPROXIMATIONS = ("mfvi", "laplace", "laplace_ll", "swag", "mc_dropout")
#: Methods that only make sense around a trained checkpoint (need ``--from``).
NEED_START = ("laplace", "laplace_ll", "swag", "mc_dropout")
SCHEDULES = tuple(s.value for s in Schedule)
FISHERS = tuple(f.value for f in Fisher)


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
            raise UsageError.choice("method", self.method, METHODS)
        if self.step_size is None or self.burn_in is None:
            from bnnctl.samplers.registry import REGISTRY  # each method owns its defaults

            defaults = REGISTRY[self.method].DEFAULTS[self.method]
            for name in ("step_size", "burn_in"):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, defaults[name])
        step_size, burn_in = self.step_size, self.burn_in
        assert step_size is not None and burn_in is not None  # every DEFAULTS entry has both
        finite = all(
            math.isfinite(v) for v in (step_size, self.prior_var, self.temperature, self.noise_std)
        )
        exact_step = self.method in ("laplace", "laplace_ll", "mc_dropout")  # they take no steps
        checks = [
            (
                finite,
                "step_size",
                "`step_size`, `prior_var`, `temperature` and `noise_std` must be finite",
            ),
            (
                self.prior_var > 0,
                "prior_var",
                f"`prior_var` must be positive, got {self.prior_var}",
            ),
            (
                self.temperature > 0,
                "temperature",
                f"`temperature` must be positive, got {self.temperature}",
            ),
            (
                self.noise_std > 0,
                "noise_std",
                f"`noise_std` must be positive, got {self.noise_std}",
            ),
            (
                step_size > 0 or (exact_step and step_size == 0),
                "step_size",
                f"`step_size` must be positive, got {step_size}",
            ),
            (burn_in >= 0, "burn_in", f"`burn_in` must be >= 0, got {burn_in}"),
            (self.thin >= 1, "thin", f"`thin` must be >= 1, got {self.thin}"),
            (
                self.batch_size >= 1,
                "batch_size",
                f"`batch_size` must be >= 1, got {self.batch_size}",
            ),
            (
                0 < self.friction <= 1,
                "friction",
                f"`friction` must be in (0, 1], got {self.friction}",
            ),
            (self.leapfrog >= 1, "leapfrog", f"`leapfrog` must be >= 1, got {self.leapfrog}"),
            (
                0 < self.target_accept < 1,
                "target_accept",
                f"`target_accept` must be in (0, 1), got {self.target_accept}",
            ),
            (
                self.schedule in SCHEDULES,
                "schedule",
                f"unknown `schedule` {self.schedule!r}; choose from {', '.join(SCHEDULES)}",
            ),
            (
                self.fisher in FISHERS,
                "fisher",
                f"unknown `fisher` {self.fisher!r}; choose ggn or ef",
            ),
            (self.rank >= 2, "rank", f"`rank` must be >= 2, got {self.rank}"),
            (self.init_std > 0, "init_std", f"`init_std` must be positive, got {self.init_std}"),
        ]
        for ok, param, msg in checks:
            if not ok:
                raise UsageError(msg, param)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
