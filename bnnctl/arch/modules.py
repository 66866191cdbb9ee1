"""PyTorch modules for an :class:`~bnnctl.arch.ArchSpec`, and rows <-> state_dicts.

:func:`build` gives the ``nn.Sequential`` of ``Linear, activation[, Dropout]`` blocks whose
``state_dict`` keys are exactly ``ArchSpec.layout``'s names ("0.weight", "0.bias",
"2.weight", ...), so a stored row, an exported file and a plain PyTorch module share one
naming. Example::

    net = load(arch, store.read_params(rows)[0])
    net(torch.from_numpy(ds.x_test))        # logits, as arch.forward gives them
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bnnctl.arch import LEAKY_SLOPE, AnyArch, ArchSpec
from bnnctl.errors import DataError


def activation_module(name: str) -> nn.Module:
    """The ``nn`` module of an activation name in :data:`bnnctl.arch.ACTIVATIONS`."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE)
    if name == "tanh":
        return nn.Tanh()
    return nn.GELU()


def build(arch: ArchSpec) -> nn.Sequential:
    """A fresh ``nn.Sequential`` for ``arch`` (PyTorch's default init); its module indices
    follow :meth:`ArchSpec.module_index`, so its state_dict keys are the layout's names."""
    mods: list[nn.Module] = []
    for i in range(arch.n_layers):
        mods.append(nn.Linear(arch.widths[i], arch.widths[i + 1]))
        if i < arch.n_layers - 1:
            mods.append(activation_module(arch.activation))
            if arch.dropout > 0:
                mods.append(nn.Dropout(arch.dropout))
    net = nn.Sequential(*mods)
    assert list(net.state_dict()) == [t.name for t in arch.layout]
    return net


def state_dict(arch: ArchSpec, row: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """One ``[P]`` row as a state_dict of float tensors (copies, the row's dtype)."""
    t = torch.from_numpy(np.ascontiguousarray(row)) if isinstance(row, np.ndarray) else row
    if t.shape != (arch.n_params,):
        raise DataError(
            f"a row of {arch.name} has {arch.n_params} numbers, got shape {tuple(t.shape)}"
        )
    return arch.state_dict(t)


def load(arch: ArchSpec, row: np.ndarray | torch.Tensor) -> nn.Sequential:
    """The module of ``arch`` holding one row's weights, in eval mode (float32)."""
    net = build(arch)
    net.load_state_dict({k: v.float() for k, v in state_dict(arch, row).items()})
    return net.eval()


def check_state_dict(arch: AnyArch, sd: dict, source: str = "state_dict") -> None:
    """Refuse a state_dict whose names or shapes differ from ``arch``'s layout, naming
    ``source`` (e.g. the file it came from) and the first difference."""
    names = [t.name for t in arch.layout]
    if set(sd) != set(names):
        extra, missing = sorted(set(sd) - set(names)), sorted(set(names) - set(sd))
        raise DataError(
            f"{source}: tensor names do not match {arch.name} "
            f"(unexpected {extra[:4] or 'none'}, missing {missing[:4] or 'none'})"
        )
    for t in arch.layout:
        shape = tuple(sd[t.name].shape)
        if shape != t.shape:
            raise DataError(
                f"{source}: tensor {t.name} has shape {shape}, expected {t.shape} for {arch.name}"
            )


def to_row(arch: ArchSpec, sd: dict, dtype=np.float32, source: str = "state_dict") -> np.ndarray:
    """Flatten a state_dict (tensors or arrays) into one ``[P]`` row in layout order,
    after :func:`check_state_dict`. Values are cast to ``dtype`` (exactly, when the
    tensors already have it)."""
    check_state_dict(arch, sd, source)
    parts = []
    for t in arch.layout:
        v = sd[t.name]
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        parts.append(a.astype(dtype, copy=False).reshape(-1))
    return np.concatenate(parts)


def save(arch: ArchSpec, row: np.ndarray, path) -> None:
    """Write one row as a plain PyTorch state_dict file (tensors only: it loads with
    ``torch.load(path, weights_only=True)``)."""
    torch.save({k: v.contiguous() for k, v in state_dict(arch, row).items()}, path)


def dropout_masks(
    gens: list[torch.Generator], shape: tuple[int, ...], rate: float, dtype=torch.float32
) -> torch.Tensor:
    """Dropout masks ``[M, *shape]`` as ``nn.Dropout`` applies them (Bernoulli(1 - rate),
    scaled by 1/(1 - rate)), model k's drawn from ``gens[k]`` alone, in order."""
    keep = 1.0 - rate
    full = torch.full(shape, keep, dtype=dtype)
    return torch.stack([torch.bernoulli(full, generator=g) for g in gens]).div_(keep)
