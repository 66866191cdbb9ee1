"""The canonical form: dead units and scale, then sign, then sort (see the package
docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bnnctl.arch import AnyArch
from bnnctl.symmetry.scaling import count_dead, dead_units_, scale_l2_, scale_unitnorm_, signs_
from bnnctl.symmetry.sorting import sort_
from bnnctl.symmetry.transform import DEFAULT_KEY, Transform

# --- the canonical form ---------------------------------------------------------------


@dataclass
class Canonical:
    """Result of :func:`canonicalize` on ``M`` models."""

    params: torch.Tensor  # [M, P] float64, canonical
    perms: list[torch.Tensor]  # per hidden layer [M, n]: canonical unit k = unit perms[k]
    log_scales: list[torch.Tensor] | None
    signs: list[torch.Tensor] | None
    near_ties: torch.Tensor  # [M]
    dead: torch.Tensor  # [M] dead units (see dead_units_)
    sweeps: int  # scaling sweeps (0 when not solved)


def canonicalize(arch: AnyArch, flat: torch.Tensor, transform: Transform) -> Canonical:
    """The canonical representative of each model's symmetry orbit (see module doc).
    ``flat`` is ``[M, P]``; computed in float64 on a copy."""
    x = flat.to(torch.float64, copy=True).contiguous()
    m, sweeps, scales, signs = x.shape[0], 0, None, None
    scale = "scale" in transform.symmetries
    # dead units have no scaling optimum: removing scale puts them at its limit
    dead = dead_units_(arch, x) if scale else count_dead(arch, x)
    if scale:
        if transform.scale_mode == "unitnorm":
            scales = scale_unitnorm_(arch, x)
        else:
            scales, sweeps = scale_l2_(arch, x)
    if "sign" in transform.symmetries:
        signs = signs_(arch, x)
    perms: list[torch.Tensor] = []
    ties = torch.zeros(m, dtype=torch.int64)
    if "perm" in transform.symmetries:
        perms, ties = sort_(arch, x, transform.key or DEFAULT_KEY)
    return Canonical(x, perms, scales, signs, ties, dead, sweeps)
