"""How each model of a trained population is optimised (torch-free, so the CLI can list
the choices without importing torch)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
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
    ``N * weight_decay`` on the summed log-likelihood of N training points.

    ``lr_milestones`` and ``lr_gamma`` refine the ``step`` schedule (as
    ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch): the rate is
    multiplied by ``lr_gamma`` (default 0.1) at the start of each milestone epoch
    (0-based; default milestones 50 % and 75 % of the epochs). Unset, they are left out of
    :meth:`identity`, so populations trained before they existed keep their hashes.

    ``stop_below_acc`` and ``stop_after_epoch`` are an early-stop rule (OptuNet's: 0.15
    after epoch 3): once ``stop_after_epoch`` epochs are done, each model whose accuracy on
    the *test* split (bnnctl has train and test splits only, no validation split) is
    below ``stop_below_acc`` stops: its parameters stay as they are from then on, and its
    manifest row's ``epochs`` is ``stop_after_epoch``. Set, both are hashed into
    :meth:`identity` (a population with the rule is another population); unset, left
    out, so older hashes are unchanged. They are not manifest columns."""

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 128
    schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float | None = None
    stop_below_acc: float | None = None
    stop_after_epoch: int | None = None

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
        self._check_steps()
        self._check_stop()

    def _check_stop(self) -> None:
        acc, after = self.stop_below_acc, self.stop_after_epoch
        if (acc is None) != (after is None):
            given, missing = (
                ("stop_below_acc", "stop_after_epoch")
                if after is None
                else ("stop_after_epoch", "stop_below_acc")
            )
            raise UsageError(f"`{given}` needs `{missing}` too (the early-stop rule)", missing)
        if acc is not None and not (
            isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 <= acc <= 1
        ):
            raise UsageError(f"`stop_below_acc` must be in [0, 1], got {acc}", "stop_below_acc")
        if after is not None and not (
            isinstance(after, int) and not isinstance(after, bool) and 1 <= after < self.epochs
        ):
            raise UsageError(
                f"`stop_after_epoch` must be in 1..{self.epochs - 1} (epochs {self.epochs}), "
                f"got {after}",
                "stop_after_epoch",
            )

    def _check_steps(self) -> None:
        ms = self.lr_milestones
        if not isinstance(ms, tuple) or not all(
            isinstance(e, int) and not isinstance(e, bool) for e in ms
        ):
            raise UsageError(
                f"`lr_milestones` must be a tuple of epochs, got {ms!r}", "lr_milestones"
            )
        if ms and not (all(0 < e < self.epochs for e in ms) and list(ms) == sorted(set(ms))):
            raise UsageError(
                f"`lr_milestones` must be increasing epochs in 1..{self.epochs - 1} (epochs "
                f"{self.epochs}), got {','.join(map(str, ms))}",
                "lr_milestones",
            )
        g = self.lr_gamma
        if g is not None and not (
            isinstance(g, (int, float)) and not isinstance(g, bool) and 0 < g <= 1
        ):
            raise UsageError(f"`lr_gamma` must be in (0, 1], got {g}", "lr_gamma")
        if (ms or g is not None) and self.schedule != "step":
            raise UsageError(
                f"`lr_milestones` and `lr_gamma` refine the step schedule; got schedule "
                f"{self.schedule!r}",
                "schedule",
            )

    def identity(self) -> dict:
        """The configuration as hashed into a population's identity: every field, except
        ``lr_milestones``, ``lr_gamma`` and the early-stop rule when unset (so older hashes
        are unchanged)."""
        d = asdict(self)
        if not self.lr_milestones:
            del d["lr_milestones"]
        else:
            d["lr_milestones"] = list(self.lr_milestones)
        if self.lr_gamma is None:
            del d["lr_gamma"]
        if self.stop_below_acc is None:
            del d["stop_below_acc"], d["stop_after_epoch"]
        else:
            d["stop_below_acc"] = float(self.stop_below_acc)
        return d

    def columns(self) -> dict:
        """The manifest's training-configuration columns: the fields, with milestones
        and gamma written into ``schedule`` when set (e.g. ``step@15,30x0.5``); the
        early-stop rule is not a column (a stopped model's ``epochs`` says it)."""
        d = asdict(self)
        ms, g = d.pop("lr_milestones"), d.pop("lr_gamma")
        del d["stop_below_acc"], d["stop_after_epoch"]  # hashed, not columns
        if ms or g is not None:
            d["schedule"] = f"step@{','.join(map(str, ms)) or '50%,75%'}x{g if g else 0.1:g}"
        return d

    def lr_at(self, epoch: int) -> float:
        """Learning rate of an epoch: constant; cosine from lr to 0 over the epochs; or
        step, ×0.1 at 50 % and again at 75 % of the epochs (or ×``lr_gamma`` at each of
        ``lr_milestones``)."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step" and (self.lr_milestones or self.lr_gamma is not None):
            ms = self.lr_milestones or (self.epochs // 2, (3 * self.epochs) // 4)
            gamma = 0.1 if self.lr_gamma is None else self.lr_gamma
            return self.lr * gamma ** sum(epoch >= e for e in ms)
        if self.schedule == "step":
            drops = (epoch >= self.epochs // 2) + (epoch >= (3 * self.epochs) // 4)
            return self.lr * 0.1**drops
        return self.lr

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The torch.optim optimizer; on stacked params it is exactly one per model."""
        import torch

        if self.optimizer == "adam":
            # fused where torch has the kernel (CPU, CUDA); the same arithmetic elsewhere
            fused = params[0].device.type in ("cpu", "cuda")
            return torch.optim.Adam(
                params, lr=self.lr, weight_decay=self.weight_decay, fused=fused or None
            )
        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            foreach=True,
        )
