"""Weight-space symmetries of stacked MLPs: canonical forms and weight matching.

Every hidden-unit permutation of an MLP gives the same function; for positively
homogeneous activations (relu, leaky relu) so does every positive rescaling of a unit
(incoming weights and bias ×λ, outgoing weights ×1/λ), and for odd ones (tanh) every
sign flip. The symmetries are *data*: :meth:`ArchSpec.unit_groups` says which
``(tensor, axis)`` pairs a hidden layer's units index, and everything here applies
permutations, scalings and signs generically from that, to ``M`` models at once held
as one model-major ``[M, P]`` float64 tensor (Laurent et al., ICLR 2024; Ainsworth et
al., Git Re-Basin, ICLR 2023).

Canonical form, in this order:

1. **scale** (``l2``): the unique minimum-L2-mass point of the scaling orbit. With
   log-scales ``s`` per hidden unit (0 for inputs and outputs) a weight ``W[j, i]``
   becomes ``W[j, i]·exp(s_row[j] − s_col[i])``, so the mass
   ``Σ_W Σ_ji W[j,i]²·exp(2 s_row[j] − 2 s_col[i])`` is a sum of exponentials of linear
   functions of ``s``: convex, strictly so when every unit has non-zero incoming and
   outgoing weights. Its gradient is ``∂/∂s_j = 2 (in_j − out_j)`` (incoming minus
   outgoing weight mass of unit ``j``), so the minimum is where every unit balances.
   Units of one layer do not interact, so one layer is solved exactly in closed form
   (``exp(4 s_j) = OUT_j / IN_j``) with the others fixed, and layers are swept
   (block Gauss–Seidel) until no log-scale moves by more than ``tol``. Biases are
   rescaled with their unit but not counted in the mass (as in the paper).
   ``unitnorm`` instead scales each unit's incoming weight vector to norm 1, layer by
   layer from the input.
2. **sign** (tanh): flip each unit so that ``Σ_i W[j, i] + b_j > 0``, layer by layer.
3. **perm**: sort each hidden layer's units by a key, descending, layer by layer from
   the input, carrying each permutation into the next layer's inputs; the output layer
   is never permuted. Keys are compared after rounding to ``KEY_QUANTUM`` of the
   layer's largest |key| (so exact structural ties fall to the tie-break, the bias).
   ``pc`` (default): each unit's incoming weight vector projected on the layer's
   leading principal direction (power iteration from the all-ones vector, see
   :func:`principal_key`); ``mass``: the unit's L2 mass in + out; the paper's
   ``weight0`` (first incoming weight), ``mean`` and ``median`` (of the incoming
   weights). Any sort flips order when two keys come closer than the noise, so the
   flip rate is ~ (key noise / spread of keys) × units; projecting on the direction
   along which units differ most maximises that spread. Measured on trained digits
   MLPs 64-128-128-10 (``scripts/bench_canonicalize.py``: 8 nets trained with Adam and
   8 with SGD + weight decay; fraction of hidden units whose canonical position
   changes under relative noise 1e-4 / 1e-3 / 1e-2): ``pc`` 0.0010–0.0016 /
   0.017–0.025 / 0.17–0.18; ``mean`` 0.002–0.004 / 0.035–0.037 / 0.28–0.31; ``mass``
   0.003–0.007 / 0.023–0.063 / 0.20–0.39; ``weight0`` 0.003–0.004 / 0.045–0.060 /
   0.34–0.37; ``median`` ~0.02 / 0.20 / 0.73. ``pc`` costs more (a few small batched
   matmuls per layer: about half the throughput of ``mass``).

Each step is equivariant under the symmetries removed before it, so
``canon(g·θ) = canon(θ)`` for every symmetry ``g`` and ``canon(canon(θ)) = canon(θ)``
(up to the solver tolerance and exact key ties).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bnnctl.arch import ArchSpec, UnitGroup
from bnnctl.errors import CheckError, UsageError

SYMMETRIES = ("perm", "scale", "sign")
KEYS = ("pc", "mass", "weight0", "mean", "median")
SCALE_MODES = ("l2", "unitnorm")
DEFAULT_KEY = "pc"
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
ALIGN_MAX_ITER = 100


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

    def to_json(self, arch: ArchSpec) -> str:
        """Full record: the spec plus which tensors are counted, rescaled and permuted."""
        weights, biases = mass_tensors(arch), [t.name for t in arch.layout if len(t.shape) == 1]
        hidden = sorted({n for g in arch.unit_groups() for n, _ in g.incoming + g.outgoing})
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
    arch: ArchSpec,
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
            raise UsageError(f"unknown symmetry {names}; choose from {','.join(SYMMETRIES)}")
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


def mass_tensors(arch: ArchSpec) -> list[str]:
    """Tensors counted in the L2 mass: the weight matrices (biases are not counted)."""
    return [t.name for t in arch.layout if len(t.shape) == 2]


def l2_mass(arch: ArchSpec, flat: torch.Tensor) -> torch.Tensor:
    """``[M]`` sum of squared weights (biases not counted), as float64 (summed in the
    input's precision: torch's cascade summation keeps float32 to ~1e-7)."""
    v = arch.views(flat)
    return sum(torch.linalg.vector_norm(v[n], dim=(1, 2)).double() ** 2 for n in mass_tensors(arch))


def _shape_for(t: torch.Tensor, axis: int, vec: torch.Tensor) -> torch.Tensor:
    """``vec [M, n]`` reshaped to broadcast along ``axis`` of a ``[M, *shape]`` tensor."""
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[axis + 1] = vec.shape[1]
    return vec.view(shape)


def take(t: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    """Per-model ``t[m].index_select(axis, idx[m])`` for ``t [M, *shape]``, ``idx [M, n]``."""
    return torch.gather(t, axis + 1, _shape_for(t, axis, idx).expand_as(t))


def _unit_rows(t: torch.Tensor, axis: int) -> torch.Tensor:
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
        v[name].mul_(_shape_for(v[name], axis, up))
    for name, axis in group.outgoing:
        v[name].mul_(_shape_for(v[name], axis, down))


def flip_(v: dict[str, torch.Tensor], group: UnitGroup, sign: torch.Tensor) -> None:
    """Incoming and outgoing ×sign (±1), per unit, in place (odd activations)."""
    for name, axis in group.incoming + group.outgoing:
        v[name].mul_(_shape_for(v[name], axis, sign))


def _reduce_except(t: torch.Tensor, axis: int, op: str = "sumsq") -> torch.Tensor:
    """``[M, n]``: reduce ``t [M, *shape]`` over every axis but 0 and the unit axis."""
    dims = [d for d in range(1, t.dim()) if d != axis + 1]
    x = t.pow(2) if op == "sumsq" else t
    return x.sum(dims) if dims else x


def unit_mass(
    v: dict[str, torch.Tensor], group: UnitGroup, side: str, counted: set[str]
) -> torch.Tensor:
    """``[M, n]`` counted squared mass of each unit's incoming or outgoing weights."""
    pairs = group.incoming if side == "in" else group.outgoing
    parts = [_reduce_except(v[n], a) for n, a in pairs if n in counted]
    return sum(parts) if parts else torch.zeros_like(v[pairs[0][0]].select(0, 0))


# --- scaling --------------------------------------------------------------------------


@dataclass
class _Role:
    """A weight matrix as the scaling solver sees it: its squares, and which group's
    log-scales act on its rows (incoming side) and columns (outgoing side)."""

    q: torch.Tensor
    row: int | None
    col: int | None

    def __post_init__(self) -> None:
        # a side with no scales (inputs, outputs) is a constant: sum it once
        self.row_sums = self.q.sum(2) if self.col is None else None
        self.col_sums = self.q.sum(1) if self.row is None else None


def _roles(arch: ArchSpec, v: dict[str, torch.Tensor]) -> list[_Role]:
    groups = arch.unit_groups()
    roles = []
    for name in mass_tensors(arch):
        row = [i for i, g in enumerate(groups) for n, a in g.incoming if n == name]
        col = [i for i, g in enumerate(groups) for n, a in g.outgoing if n == name]
        axes = {a for g in groups for n, a in g.incoming if n == name} | {
            a + 10 for g in groups for n, a in g.outgoing if n == name
        }
        if len(row) > 1 or len(col) > 1 or not axes <= {0, 11}:
            raise UsageError(
                f"scaling needs units on weight rows (in) and columns (out); {name} is not"
            )
        roles.append(_Role(v[name].pow(2), row[0] if row else None, col[0] if col else None))
    return roles


def _weighted(role: _Role, s: list[torch.Tensor], side: str) -> torch.Tensor:
    """Σ_i Q[j,i]·exp(−2 s_col[i]) (side 'in') or Σ_k Q[k,j]·exp(2 s_row[k]) ('out')."""
    if side == "in":
        if role.row_sums is not None:
            return role.row_sums
        return _matvec(role.q, torch.exp(-2 * s[role.col]))
    if role.col_sums is not None:
        return role.col_sums
    return _vecmat(torch.exp(2 * s[role.row]), role.q)


def _matvec(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-model ``a[m] @ x[m]`` for ``a [M, n, k]``, ``x [M, k]`` (broadcast-multiply and
    sum: on CPU ~2.5x faster than a batched matrix-vector bmm)."""
    return (a * x.unsqueeze(1)).sum(2)


def _vecmat(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-model ``x[m] @ a[m]`` for ``x [M, n]``, ``a [M, n, k]``."""
    return (a * x.unsqueeze(2)).sum(1)


def l2_log_scales(
    arch: ArchSpec, flat: torch.Tensor, tol: float = SCALE_TOL, max_sweeps: int = SCALE_MAX_SWEEPS
) -> tuple[list[torch.Tensor], int]:
    """Log-scales ``[M, n_l]`` per hidden layer that minimise the L2 mass, and the
    number of sweeps. Each sweep sets every layer in turn to its exact optimum given
    the others, ``s_j = ¼ log(OUT_j / IN_j)``; units with no incoming or no outgoing
    weight mass (no unique optimum) keep scale 1. Raises CheckError if not converged."""
    v = arch.views(flat)
    groups, roles = arch.unit_groups(), _roles(arch, v)
    s = [torch.zeros(flat.shape[0], g.size, dtype=flat.dtype) for g in groups]
    for sweep in range(1, max_sweeps + 1):
        moved = 0.0
        for gi in range(len(groups)):
            inn = sum(_weighted(r, s, "in") for r in roles if r.row == gi)
            out = sum(_weighted(r, s, "out") for r in roles if r.col == gi)
            ok = (inn > 0) & (out > 0)
            new = torch.where(ok, 0.25 * (out.log() - inn.log()), s[gi])
            moved = max(moved, float((new - s[gi]).abs().max()))
            s[gi] = new
        if moved <= tol:
            return s, sweep
    raise CheckError(f"scaling solve did not converge to {tol:g} in {max_sweeps} sweeps")


def balance(arch: ArchSpec, flat: torch.Tensor) -> list[torch.Tensor]:
    """Per hidden layer ``[M, n]``: log(incoming / outgoing counted mass) of each unit;
    zero at the L2 optimum (the gradient of the mass in log-scales is 2·(in − out))."""
    v, counted = arch.views(flat), set(mass_tensors(arch))
    return [
        (unit_mass(v, g, "in", counted).log() - unit_mass(v, g, "out", counted).log())
        for g in arch.unit_groups()
    ]


def scale_l2_(
    arch: ArchSpec, flat: torch.Tensor, tol: float = SCALE_TOL
) -> tuple[list[torch.Tensor], int]:
    """Move ``flat`` in place to the minimum-L2-mass point of its scaling orbit."""
    s, sweeps = l2_log_scales(arch, flat, tol)
    v = arch.views(flat)
    for g, sg in zip(arch.unit_groups(), s, strict=True):
        scale_(v, g, sg)
    return s, sweeps


def scale_unitnorm_(arch: ArchSpec, flat: torch.Tensor) -> list[torch.Tensor]:
    """Scale each unit's incoming weight vector to L2 norm 1, layer by layer from the
    input (so each layer sees its inputs already normalised). Zero vectors stay."""
    v, counted, out = arch.views(flat), set(mass_tensors(arch)), []
    for g in arch.unit_groups():
        norm = unit_mass(v, g, "in", counted).sqrt()
        s = torch.where(norm > 0, -norm.log(), torch.zeros_like(norm))
        scale_(v, g, s)
        out.append(s)
    return out


# --- signs ----------------------------------------------------------------------------


def signs_(arch: ArchSpec, flat: torch.Tensor) -> list[torch.Tensor]:
    """Flip units (odd activations) so that Σ_i W[j,i] + b_j ≥ 0, layer by layer."""
    v, out = arch.views(flat), []
    for g in arch.unit_groups():
        total = sum(_reduce_except(v[n], a, "sum") for n, a in g.incoming)
        sign = torch.where(total < 0, -1.0, 1.0).to(flat.dtype)
        flip_(v, g, sign)
        out.append(sign)
    return out


# --- sorting --------------------------------------------------------------------------


def unit_keys(v: dict[str, torch.Tensor], group: UnitGroup, key: str, counted: set[str]):
    """Primary and tie-break keys ``[M, n]`` of a layer's units."""
    bias = [v[n] for n, a in group.incoming if v[n].dim() == 2]
    w_in = [(v[n], a) for n, a in group.incoming if n in counted]
    tie = bias[0] if bias else unit_mass(v, group, "in", counted)
    if key == "mass":
        return unit_mass(v, group, "in", counted) + unit_mass(v, group, "out", counted), tie
    if key == "pc":
        return principal_key(torch.cat([_unit_rows(w, a) for w, a in w_in], 2)), tie
    w, a = w_in[0]
    rows = w.movedim(a + 1, 1).flatten(2)  # [M, n, fan_in]
    if key == "weight0":
        return rows[:, :, 0], tie
    if key == "mean":
        return rows.mean(2), tie
    return rows.median(2).values, tie


def principal_key(
    u: torch.Tensor, steps: int | None = None, squarings: int | None = None
) -> torch.Tensor:
    """``[M, n]`` projections ``u_j · d`` of the units' incoming vectors ``u [M, n, k]`` on
    ``d = normalise(A^(2^squarings · steps) · 1)``, ``A = uᵀu``: power iteration from the
    all-ones vector towards the layer's leading principal direction (0 steps is the
    paper's mean key, up to a factor). ``A`` is unchanged by permuting or sign-flipping
    units, so ``d`` and the key are invariants for any number of steps, continuous in
    the weights, with no eigen-solver sign ambiguity. ``A`` is squared (normalised)
    ``squarings`` times with batched matmuls, then ``steps`` matrix-vector steps, in
    float32; the projection is taken in ``u``'s precision, so identical units stay
    exactly tied."""
    u32 = u.float()
    a = torch.bmm(u32.transpose(1, 2), u32)
    for _ in range(PC_SQUARINGS if squarings is None else squarings):
        a = a / a.norm(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        a = torch.bmm(a, a)
    d = torch.ones(u.shape[0], u.shape[2], dtype=torch.float32)
    for _ in range(PC_STEPS if steps is None else steps):
        d = _matvec(a, d)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return _matvec(u, d.to(u.dtype))


def quantise(key: torch.Tensor, rel: float = KEY_QUANTUM) -> torch.Tensor:
    """Round keys to ``rel`` × the layer's max |key|, so that keys equal up to float
    rounding (structural ties, e.g. all incoming norms 1 in unitnorm mode) compare
    equal and fall through to the tie-break key instead of to rounding noise."""
    step = key.abs().amax(1, keepdim=True).mul(rel).clamp_min(torch.finfo(key.dtype).tiny)
    return torch.round(key / step)


def sort_order(primary: torch.Tensor, tie: torch.Tensor) -> torch.Tensor:
    """``[M, n]`` permutation sorting units by (primary, tie) descending, stably; both
    keys are compared after :func:`quantise`."""
    primary, tie = quantise(primary), quantise(tie)
    o2 = torch.sort(tie, dim=1, descending=True, stable=True).indices
    o1 = torch.sort(torch.gather(primary, 1, o2), dim=1, descending=True, stable=True).indices
    return torch.gather(o2, 1, o1)


def near_ties(sorted_keys: torch.Tensor, rtol: float = TIE_RTOL) -> torch.Tensor:
    """``[M]`` number of adjacent sorted keys within ``rtol`` × the layer's max |key|."""
    gaps = (sorted_keys[:, :-1] - sorted_keys[:, 1:]).abs()
    scale = sorted_keys.abs().amax(1, keepdim=True)
    return (gaps <= rtol * scale).sum(1)


def sort_(
    arch: ArchSpec, flat: torch.Tensor, key: str = DEFAULT_KEY
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sort each hidden layer's units in place, layer by layer from the input (each
    layer's permutation is applied to the next layer's inputs before its keys are
    taken). Returns the permutations and the near-tie count per model."""
    v, counted = arch.views(flat), set(mass_tensors(arch))
    perms, ties = [], torch.zeros(flat.shape[0], dtype=torch.int64)
    for g in arch.unit_groups():
        primary, tie = unit_keys(v, g, key, counted)
        perm = sort_order(primary, tie)
        ties += near_ties(torch.gather(primary, 1, perm))
        permute_(v, g, perm)
        perms.append(perm)
    return perms, ties


# --- the canonical form ---------------------------------------------------------------


@dataclass
class Canonical:
    """Result of :func:`canonicalize` on ``M`` models."""

    params: torch.Tensor  # [M, P] float64, canonical
    perms: list[torch.Tensor]  # per hidden layer [M, n]: canonical unit k = unit perms[k]
    log_scales: list[torch.Tensor] | None
    signs: list[torch.Tensor] | None
    near_ties: torch.Tensor  # [M]
    sweeps: int  # scaling sweeps (0 when not solved)


def canonicalize(arch: ArchSpec, flat: torch.Tensor, transform: Transform) -> Canonical:
    """The canonical representative of each model's symmetry orbit (see module doc).
    ``flat`` is ``[M, P]``; computed in float64 on a copy."""
    x = flat.to(torch.float64, copy=True).contiguous()
    m, sweeps, scales, signs = x.shape[0], 0, None, None
    if "scale" in transform.symmetries:
        if transform.scale_mode == "unitnorm":
            scales = scale_unitnorm_(arch, x)
        else:
            scales, sweeps = scale_l2_(arch, x)
    if "sign" in transform.symmetries:
        signs = signs_(arch, x)
    perms, ties = [], torch.zeros(m, dtype=torch.int64)
    if "perm" in transform.symmetries:
        perms, ties = sort_(arch, x, transform.key or DEFAULT_KEY)
    return Canonical(x, perms, scales, signs, ties, sweeps)


# --- weight matching (Git Re-Basin) ---------------------------------------------------


def weight_match(
    arch: ArchSpec, flat: torch.Tensor, ref: torch.Tensor, max_iter: int = ALIGN_MAX_ITER
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Permute each model's hidden units to best match ``ref [P]`` (Ainsworth et al.,
    2023, weight matching): for each layer in turn, the permutation maximising
    ``Σ <ref tensors, permuted model tensors>`` over the tensors the layer's units
    index, with the other layers fixed, is a linear assignment problem
    (``scipy.optimize.linear_sum_assignment``). Sweeps repeat until no layer changes
    (a fixed point) or ``max_iter``, after a first forward pass that matches each
    layer on its incoming weights alone. Returns aligned params (float64 copy), the
    permutations relative to the input, and the sweeps used."""
    from scipy.optimize import linear_sum_assignment

    x = flat.to(torch.float64, copy=True).contiguous()
    m, groups = x.shape[0], arch.unit_groups()
    v = arch.views(x)
    rv = arch.views(ref.to(torch.float64).reshape(1, -1).contiguous())
    total = [torch.arange(g.size).expand(m, -1).clone() for g in groups]
    for sweep in range(0, max_iter + 1):
        changed = False
        for gi, g in enumerate(groups):
            # sweep 0 is a forward pass on incoming tensors only (the next layer is not
            # matched yet): it recovers an exact permuted copy of ref in one pass
            pairs = g.incoming if sweep == 0 else g.incoming + g.outgoing
            cost = sum(
                torch.matmul(_unit_rows(rv[n], a), _unit_rows(v[n], a).transpose(1, 2))
                for n, a in pairs
            ).numpy()  # [M, n_ref, n_model]
            perm = np.stack([linear_sum_assignment(c, maximize=True)[1] for c in cost])
            if (perm != np.arange(g.size)).any():
                changed = True
                p = torch.from_numpy(perm)
                permute_(v, g, p)
                total[gi] = torch.gather(total[gi], 1, p)
        if not changed and sweep > 0:
            return x, total, sweep
    return x, total, max_iter


#: Canonical weight vectors a, b with ‖a − b‖ ≤ MODE_RTOL·sqrt((‖a‖²+‖b‖²)/2) are one mode.
MODE_RTOL = 0.05


def count_modes(params: np.ndarray, rtol: float = MODE_RTOL, chunk: int = 512) -> int:
    """Single-linkage clusters: connected components of the graph linking ``a`` and ``b``
    when ``‖a − b‖ ≤ rtol·sqrt((‖a‖² + ‖b‖²)/2)`` (``bnnctl canonicalize`` and ``bnnctl stats``).
    Distances in float32 (relative error ~1e-7 of ‖a‖², far below rtol²)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))
    n = len(x)
    if n <= 1:
        return n
    sq = torch.linalg.vector_norm(x, dim=1).double() ** 2
    rows, cols = [], []
    for i in range(0, n, chunk):  # pairs (a, b) with a in the chunk and b not before it
        d2 = torch.cdist(x[i : i + chunk], x[i:]).double().pow(2)
        r, c = torch.nonzero(
            d2 <= rtol**2 * (sq[i : i + chunk, None] + sq[None, i:]) / 2, as_tuple=True
        )
        rows.append(r.numpy() + i)
        cols.append(c.numpy() + i)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])
