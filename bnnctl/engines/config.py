"""How each model of a trained population is optimised (torch-free, so the CLI can list
the choices without importing torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from bnnctl.errors import UsageError

if TYPE_CHECKING:
    import torch


class Optimizer(str, Enum):
    """The choices of ``optimizer``."""

    adam = "adam"
    sgd = "sgd"


class Schedule(str, Enum):
    """The choices of ``schedule``."""

    constant = "constant"
    cosine = "cosine"
    step = "step"


OPTIMIZERS = tuple(o.value for o in Optimizer)
SCHEDULES = tuple(s.value for s in Schedule)


@dataclass(frozen=True)
class TrainConfig:
    """How each model of a population is trained. ``weight_decay`` is coupled L2 on the
    mean loss, as in ``torch.optim``: it corresponds to a Gaussian prior of precision
    ``N * weight_decay`` on the summed log-likelihood of N training points."""

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 128
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError.choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise UsageError.choice("schedule", self.schedule, SCHEDULES)
        for name in ("lr", "epochs", "batch_size"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"`{name}` must be positive and finite, got {value}", param=name)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(
                f"`weight_decay` must be >= 0, got {self.weight_decay}", "weight_decay"
            )
        if not 0 <= self.momentum < 1:
            raise UsageError(f"`momentum` must be in [0, 1), got {self.momentum}", "momentum")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise UsageError("`nesterov` needs optimizer sgd with momentum > 0", "nesterov")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of an epoch: constant; cosine from lr to 0 over the epochs; or
        step, ×0.1 at 50 % and again at 75 % of the epochs."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            drops = (epoch >= self.epochs // 2) + (epoch >= (3 * self.epochs) // 4)
            return self.lr * 0.1**drops
        return self.lr

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The torch.optim optimizer; on stacked params it is exactly one per model."""
        import torch

        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            foreach=True,
        )
