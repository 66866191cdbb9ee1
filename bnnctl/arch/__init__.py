"""Architectures as data.

- :mod:`.spec`: :class:`ArchSpec`, the layout, the unit groups symmetries act on, and the
  batched forward/backward over stacked models (torch is imported only by those).
- :mod:`.modules`: the plain ``nn.Module`` of a spec, and state_dict conversions.
- :mod:`.conv`: :class:`ConvSpec`, convolutional networks (kind ``cnn``) with the same
  surface; :func:`parse_arch` and :func:`arch_from_json` dispatch on the kind.
"""

from __future__ import annotations

import json
from typing import TypeAlias

from bnnctl.arch.conv import PRESETS, ConvSpec, Layer
from bnnctl.arch.spec import ACTIVATIONS, LEAKY_SLOPE, ArchSpec, Tensor, UnitGroup
from bnnctl.errors import DataError, UsageError, describe

#: Any architecture the symmetry code accepts.
AnyArch: TypeAlias = ArchSpec | ConvSpec


def parse_arch(text: str) -> AnyArch:
    """``mlp:...`` -> :meth:`ArchSpec.parse`; ``cnn:...`` or a preset name
    (:data:`PRESETS`) -> :meth:`ConvSpec.parse`."""
    s = text.strip()
    if s.startswith("mlp:"):
        return ArchSpec.parse(s)
    if s.startswith("cnn:") or s in PRESETS:
        return ConvSpec.parse(s)
    raise UsageError(
        f"cannot parse architecture {text!r}; expected 'mlp:64-128-10', 'cnn:1x28x28/...' "
        f"or a preset ({', '.join(PRESETS)})"
    )


def arch_from_json(text: str | dict) -> AnyArch:
    """The arch a JSON record describes, by its ``kind`` (mlp or cnn); anything else is a
    :class:`DataError` that quotes it."""
    try:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        kind = d["kind"]
    except (ValueError, KeyError, TypeError) as e:
        shown = str(text) if len(str(text)) <= 80 else str(text)[:77] + "..."
        raise DataError(f"arch {shown!r} is not a valid architecture: {describe(e)}") from None
    if kind == "cnn":
        return ConvSpec.from_json(d)
    return ArchSpec.from_json(d)


__all__ = [
    "ACTIVATIONS",
    "LEAKY_SLOPE",
    "PRESETS",
    "AnyArch",
    "ArchSpec",
    "ConvSpec",
    "Layer",
    "Tensor",
    "UnitGroup",
    "arch_from_json",
    "parse_arch",
]
