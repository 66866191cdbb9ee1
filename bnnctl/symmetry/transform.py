"""The transform as data: which symmetries are removed and how, validated against an
architecture and recorded as JSON in the manifest. Torch-free, so the CLI can list choices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from bnnctl.arch import AnyArch
from bnnctl.errors import UsageError

SYMMETRIES = ("perm", "scale", "sign")


class Key(str, Enum):
    """Sort keys of hidden units."""

    pc = "pc"
    mass = "mass"
    weight0 = "weight0"
    mean = "mean"
    median = "median"


class ScaleMode(str, Enum):
    """How scaling symmetry is removed."""

    l2 = "l2"
    unitnorm = "unitnorm"


KEYS = tuple(k.value for k in Key)
SCALE_MODES = tuple(m.value for m in ScaleMode)
#: The paper's key. ``pc`` is steadier under weight noise, but its direction's sign is set
#: by the direction's overlap with the all-ones vector, near 0 in deeper layers: models
#: then sort in either orientation and fall into mirrored clusters (scripts/bench_keys.py).
DEFAULT_KEY = "mean"
#: The ``pc`` key's power iteration: ``PC_STEPS`` steps with ``(uᵀu)^(2^PC_SQUARINGS)``,
#: i.e. 64 steps with ``uᵀu`` (fewer measurably flip more orders: bench_canonicalize).
PC_STEPS = 16
PC_SQUARINGS = 2
#: Stop the scaling sweeps when no log-scale moves by more than this (float64): weights
#: are then exact to ~1e-8 relative, below float32 resolution (6e-8).
SCALE_TOL = 1e-8
SCALE_MAX_SWEEPS = 10_000
#: Adjacent sorted keys closer than this times the layer's largest |key| are a near-tie.
TIE_RTOL = 1e-4
#: Keys are compared after rounding to this fraction of the layer's max |key|.
KEY_QUANTUM = 1e-9
# --- the transform, as data -------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """What a canonicalisation or alignment does; recorded as JSON in the manifest."""

    method: str = "canonical"  # canonical | align
    symmetries: tuple[str, ...] = ("perm", "scale")
    key: str | None = DEFAULT_KEY  # sort key (canonical only)
    scale_mode: str | None = "l2"  # when "scale" is removed
    reference: str | None = None  # model id aligned to (align only)

    def spec_json(self) -> str:
        """The user-chosen part, canonical JSON: what identifies a transform."""
        return json.dumps(
            {
                "method": self.method,
                "symmetries": list(self.symmetries),
                "key": self.key,
                "scale_mode": self.scale_mode,
                "reference": self.reference,
            },
            sort_keys=True,
        )

    def to_json(self, arch: AnyArch) -> str:
        """Full record: the spec plus which tensors are counted, rescaled and permuted."""
        weights, biases = mass_tensors(arch), [t.name for t in arch.layout if len(t.shape) == 1]
        hidden = sorted(
            {n for g in arch.unit_groups() for n, _ in g.incoming + g.outgoing + g.carried}
        )
        d = json.loads(self.spec_json())
        d.update(
            {
                "mass_counted": weights,
                "mass_not_counted": biases,
                "rescaled_biases": [
                    n for g in arch.unit_groups() for n, _ in g.incoming if n in biases
                ]
                if "scale" in self.symmetries
                else [],
                "touched_tensors": hidden,
                "output_layer_permuted": False,
                "scale_tol": SCALE_TOL if self.scale_mode == "l2" else None,
                "tie_rtol": TIE_RTOL if self.key else None,
                "key_quantum": KEY_QUANTUM if self.key else None,
                "pc_power_steps": PC_STEPS * 2**PC_SQUARINGS if self.key == "pc" else None,
            }
        )
        return json.dumps(d, sort_keys=True)


def make_transform(
    arch: AnyArch,
    symmetries: Sequence[str] | None = None,
    key: str = DEFAULT_KEY,
    scale_mode: str = "l2",
    reference: str | None = None,
) -> Transform:
    """Validate a request against the arch: unknown names and symmetries the activation
    does not have are :class:`UsageError`. ``symmetries=None`` means all of the arch's."""
    if symmetries is None:
        syms = tuple(arch.symmetries)
    else:
        syms = tuple(dict.fromkeys(s.strip() for s in symmetries if s.strip()))
        unknown = [s for s in syms if s not in SYMMETRIES]
        if unknown or not syms:
            names = ", ".join(unknown) or "(none)"
            raise UsageError(
                f"unknown `symmetries` {names}; choose from {','.join(SYMMETRIES)}", "symmetries"
            )
        missing = [s for s in syms if s not in arch.symmetries]
        if missing:
            raise UsageError(
                f"{arch.name} with {arch.activation} has no {'/'.join(missing)} symmetry; "
                f"its symmetries are {','.join(arch.symmetries)}"
            )
    if key not in KEYS:
        raise UsageError(f"unknown sort key {key!r}; choose from {', '.join(KEYS)}")
    if scale_mode not in SCALE_MODES:
        raise UsageError(f"unknown scale mode {scale_mode!r}; choose from {', '.join(SCALE_MODES)}")
    if not arch.unit_groups():
        raise UsageError(f"{arch.name} has no hidden units: nothing to canonicalise")
    syms = tuple(s for s in SYMMETRIES if s in syms)  # fixed order
    if reference is not None:
        if "perm" not in syms:
            raise UsageError("--align-to matches permutations: its symmetries must include perm")
        return Transform("align", syms, None, scale_mode if "scale" in syms else None, reference)
    return Transform(
        "canonical", syms, key if "perm" in syms else None, scale_mode if "scale" in syms else None
    )


# --- generic application of a symmetry ----------------------------------------------


def mass_tensors(arch: AnyArch) -> list[str]:
    """Tensors counted in the L2 mass: the weight matrices and conv kernels (biases are
    not counted)."""
    return [t.name for t in arch.layout if len(t.shape) >= 2]
