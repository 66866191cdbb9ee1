"""Where the arithmetic runs: ``--device auto|cpu|cuda[:N]``.

Every engine runs one code path on any device: the tensors that do the arithmetic
(stacked params, data, optimizer state, outputs) live on the chosen device, while each
model's random stream stays a CPU :class:`torch.Generator`, so that seed k draws the same
initialisation, data order and dropout masks whatever the device and the block (the
draws are moved to the device; only the floating-point arithmetic on them may round
differently from one device to another). Weights and metrics come back to the CPU to be
committed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bnnctl.errors import EnvironmentFault, UsageError

if TYPE_CHECKING:
    import torch

#: The forms ``--device`` takes.
CHOICES = ("auto", "cpu", "cuda", "cuda:N")

_CUDA = re.compile(r"cuda(?::(\d+))?")


def parse(spec: str | torch.device | None) -> str:
    """``spec`` checked for form only (``auto``, ``cpu``, ``cuda``, ``cuda:N``), for a
    device that another machine (a Dask worker) resolves; a usage error otherwise.
    (Without importing torch: a command checks its flags before it loads torch.)"""
    text = str(spec or "auto").strip().lower()
    if text not in ("auto", "cpu") and _CUDA.fullmatch(text) is None:
        raise UsageError.choice("device", text, CHOICES)
    return text


def checked(spec: str | torch.device | None, scheduled: bool) -> str:
    """The device a run hands to where it computes, checked before any work: resolved
    here (a GPU torch does not see is refused now), or, for Dask workers that resolve it
    themselves (``scheduled``), checked for form only."""
    return parse(spec) if scheduled else str(resolve(spec))


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """The device ``spec`` names: ``auto`` is the first GPU torch sees, else the CPU;
    ``cuda[:N]`` is refused (exit 3) when torch sees no such GPU, and anything else is a
    usage error."""
    import torch

    if isinstance(spec, torch.device) and spec.type == "cpu":
        return spec
    spec = parse(spec)
    if spec == "auto":
        spec = "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    m = _CUDA.fullmatch(spec)
    assert m is not None
    index = int(m.group(1) or 0)
    if not torch.cuda.is_available():
        raise EnvironmentFault(
            f"`device` {spec} asked, but torch sees no GPU "
            f"(torch {torch.__version__}); use `device` cpu or auto",
            "device",
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise EnvironmentFault(
            f"`device` {spec} asked, but torch sees {count} GPU(s): cuda:0..cuda:{count - 1}",
            "device",
        )
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """The device as rows record it (column ``device``): ``cpu``, or ``cuda:0 (NVIDIA
    H100 80GB HBM3)``: results computed on different devices may differ in the last bits."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
