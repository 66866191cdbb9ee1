"""Generic application of a symmetry to the ``(tensor, axis)`` pairs a unit group names:
permute, rescale or flip the units of ``M`` stacked models in place, and L2 masses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch

from bnnctl.arch import ArchSpec, UnitGroup
from bnnctl.symmetry.transform import mass_tensors


def tensor_sum(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """Built-in ``sum(parts)``, typed as the tensor it is when ``parts`` is non-empty
    (an empty sum would be the int 0): callers pass parts that exist by construction."""
    return cast(torch.Tensor, sum(parts))


def l2_mass(arch: ArchSpec, flat: torch.Tensor) -> torch.Tensor:
    """``[M]`` sum of squared weights (biases not counted), as float64 (summed in the
    input's precision: torch's cascade summation keeps float32 to ~1e-7)."""
    v = arch.views(flat)
    # an MLP has at least one weight matrix
    return tensor_sum(
        torch.linalg.vector_norm(v[n], dim=(1, 2)).double() ** 2 for n in mass_tensors(arch)
    )


def shape_for(t: torch.Tensor, axis: int, vec: torch.Tensor) -> torch.Tensor:
    """``vec [M, n]`` reshaped to broadcast along ``axis`` of a ``[M, *shape]`` tensor."""
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[axis + 1] = vec.shape[1]
    return vec.view(shape)


def take(t: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    """Per-model ``t[m].index_select(axis, idx[m])`` for ``t [M, *shape]``, ``idx [M, n]``."""
    return torch.gather(t, axis + 1, shape_for(t, axis, idx).expand_as(t))


def unit_rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``[M, n, rest]``: each unit's slice of ``t [M, *shape]`` along ``axis``."""
    moved = t.movedim(axis + 1, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def permute_(v: dict[str, torch.Tensor], group: UnitGroup, perm: torch.Tensor) -> None:
    """Reorder a layer's units in place: new unit ``k`` is old unit ``perm[:, k]``."""
    for name, axis in group.incoming + group.outgoing:
        v[name].copy_(take(v[name], axis, perm))


def scale_(v: dict[str, torch.Tensor], group: UnitGroup, log_scale: torch.Tensor) -> None:
    """Incoming ×exp(s), outgoing ×exp(−s), per unit, in place."""
    up, down = log_scale.exp(), (-log_scale).exp()
    for name, axis in group.incoming:
        v[name].mul_(shape_for(v[name], axis, up))
    for name, axis in group.outgoing:
        v[name].mul_(shape_for(v[name], axis, down))


def flip_(v: dict[str, torch.Tensor], group: UnitGroup, sign: torch.Tensor) -> None:
    """Incoming and outgoing ×sign (±1), per unit, in place (odd activations)."""
    for name, axis in group.incoming + group.outgoing:
        v[name].mul_(shape_for(v[name], axis, sign))


def reduce_except(t: torch.Tensor, axis: int, op: str = "sumsq") -> torch.Tensor:
    """``[M, n]``: reduce ``t [M, *shape]`` over every axis but 0 and the unit axis."""
    dims = [d for d in range(1, t.dim()) if d != axis + 1]
    x = t.pow(2) if op == "sumsq" else t
    return x.sum(dims) if dims else x


def unit_mass(
    v: dict[str, torch.Tensor], group: UnitGroup, side: str, counted: set[str]
) -> torch.Tensor:
    """``[M, n]`` counted squared mass of each unit's incoming or outgoing weights."""
    pairs = group.incoming if side == "in" else group.outgoing
    parts = [reduce_except(v[n], a) for n, a in pairs if n in counted]
    return tensor_sum(parts) if parts else torch.zeros_like(v[pairs[0][0]].select(0, 0))
