"""Plain ``torch.nn`` twins of an :class:`~bnnctl.arch.ArchSpec`, written without the
spec's own layout or forward code: the independent truth for tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bnnctl.arch import ArchSpec

ACTIVATION_MODULES: dict[str, Callable[[], torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(0.01),
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
}


def build_module(arch: ArchSpec, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    """The plain PyTorch network the spec describes (Linear, activation, Dropout)."""
    layers: list[torch.nn.Module] = []
    n = len(arch.widths) - 1
    for i, (a, b) in enumerate(zip(arch.widths[:-1], arch.widths[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b, dtype=dtype))
        if i < n - 1:
            layers.append(ACTIVATION_MODULES[arch.activation]())
            if arch.dropout:
                layers.append(torch.nn.Dropout(arch.dropout))
    return torch.nn.Sequential(*layers)


def module_of(arch: ArchSpec, row: torch.Tensor) -> torch.nn.Sequential:
    """The network with the weights of one ``[P]`` row, in eval mode."""
    net = build_module(arch, row.dtype).eval()
    net.load_state_dict(arch.state_dict(row))
    return net


def outputs(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[M, N, out]``: each row of ``flat [M, P]`` run as its own module on ``x``."""
    with torch.no_grad():
        return torch.stack([module_of(arch, r)(x) for r in flat])
