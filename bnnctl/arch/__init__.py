"""Architectures as data.

- :mod:`.spec`: :class:`ArchSpec`, the layout, the unit groups symmetries act on, and the
  batched forward/backward over stacked models (torch is imported only by those).
- :mod:`.modules`: the plain ``nn.Module`` of a spec, and state_dict conversions.
"""

from bnnctl.arch.spec import ACTIVATIONS, LEAKY_SLOPE, ArchSpec, Tensor, UnitGroup

__all__ = ["ACTIVATIONS", "LEAKY_SLOPE", "ArchSpec", "Tensor", "UnitGroup"]
