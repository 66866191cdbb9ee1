"""Permutation removal: sort each hidden layer's units by a per-unit key, layer by layer
from the input, carrying each permutation into the next layer."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from bnnctl.arch import AnyArch, UnitGroup
from bnnctl.symmetry.action import pair_rows, permute_, unit_mass
from bnnctl.symmetry.scaling import matvec
from bnnctl.symmetry.transform import (
    DEFAULT_KEY,
    KEY_QUANTUM,
    PC_SQUARINGS,
    PC_STEPS,
    TIE_RTOL,
    mass_tensors,
)

# --- sorting --------------------------------------------------------------------------


def unit_keys(v: dict[str, torch.Tensor], group: UnitGroup, key: str, counted: set[str]):
    """Primary and tie-break keys ``[M, n]`` of a layer's units."""
    bias = [v[n] for n, a in group.incoming if v[n].dim() == 2]
    w_in = [(n, a) for n, a in group.incoming if n in counted]
    tie = bias[0] if bias else unit_mass(v, group, "in", counted)
    if key == "mass":
        return unit_mass(v, group, "in", counted) + unit_mass(v, group, "out", counted), tie
    if key == "pc":
        return principal_key(torch.cat([pair_rows(v, group, n, a) for n, a in w_in], 2)), tie
    n0, a0 = w_in[0]
    rows = pair_rows(v, group, n0, a0)  # [M, n, fan_in]
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
        d = matvec(a, d)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return matvec(u, d.to(u.dtype))


def quantise(key: torch.Tensor, rel: float = KEY_QUANTUM) -> torch.Tensor:
    """Round keys to ``rel`` × the layer's max |key|, so that keys equal up to float
    rounding (structural ties, e.g. all incoming norms 1 in unitnorm mode) compare
    equal and fall through to the tie-break key instead of to rounding noise."""
    step = key.abs().amax(1, keepdim=True).mul(rel).clamp_min(torch.finfo(key.dtype).tiny)
    return torch.round(key / step)


def lex_order(keys: list[torch.Tensor]) -> torch.Tensor:
    """``[M, n]`` permutation sorting units by ``keys[0]``, then ``keys[1]``, ...
    (each ``[M, n]``), descending, stably: one stable sort per key, the last key first."""
    order = torch.arange(keys[0].shape[1]).expand_as(keys[0])
    for k in reversed(keys):
        o = torch.sort(torch.gather(k, 1, order), dim=1, descending=True, stable=True).indices
        order = torch.gather(order, 1, o)
    return order


def sort_order(
    primary: torch.Tensor,
    tie: torch.Tensor,
    outgoing: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[M, n]`` permutation sorting units by (primary, tie) descending, stably; both
    keys are compared after :func:`quantise`. Units still exactly tied (equal incoming
    weights and bias, say) are ordered by their outgoing weights ``outgoing() [M, n, r]``,
    compared lexicographically after quantising: otherwise they would keep the order
    they came in, and the canonical form would depend on it. ``outgoing`` is only
    called when some units tie."""
    keys = [quantise(primary), quantise(tie)]
    order = lex_order(keys)
    if outgoing is None or not exact_ties(keys, order).any():
        return order
    out = outgoing()
    return lex_order(keys + list(quantise(out.flatten(1)).view_as(out).unbind(2)))


def exact_ties(keys: list[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    """``[M, n-1]``: adjacent units in ``order`` equal on every key."""
    same = [torch.gather(k, 1, order).diff(dim=1) == 0 for k in keys]
    return torch.stack(same).all(0)


def outgoing_rows(v: dict[str, torch.Tensor], group: UnitGroup, hidden: set[str]) -> torch.Tensor:
    """``[M, n, r]``: each unit's outgoing weights, in an order that does not depend on
    how the layers above are permuted. Weights into the output layer (never permuted)
    keep its order; weights into a hidden layer, whose order is not fixed yet when this
    one is sorted, are sorted by value (descending)."""
    parts = []
    for name, axis in group.outgoing:
        rows = pair_rows(v, group, name, axis)
        parts.append(torch.sort(rows, 2, descending=True).values if name in hidden else rows)
    return torch.cat(parts, 2)


def near_ties(sorted_keys: torch.Tensor, rtol: float = TIE_RTOL) -> torch.Tensor:
    """``[M]`` number of adjacent sorted keys within ``rtol`` × the layer's max |key|."""
    gaps = (sorted_keys[:, :-1] - sorted_keys[:, 1:]).abs()
    scale = sorted_keys.abs().amax(1, keepdim=True)
    return (gaps <= rtol * scale).sum(1)


def sort_(
    arch: AnyArch, flat: torch.Tensor, key: str = DEFAULT_KEY
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sort each hidden layer's units in place, layer by layer from the input (each
    layer's permutation is applied to the next layer's inputs before its keys are
    taken); exact ties fall to the outgoing weights (:func:`sort_order`). Units in
    ``blocks`` are sorted within their block, then whole blocks ordered
    (:func:`block_sort_order`). Returns the permutations and the near-tie count per
    model."""
    v, counted, groups = arch.views(flat), set(mass_tensors(arch)), arch.unit_groups()
    hidden = {n for g in groups for n, _ in g.incoming}  # tensors into hidden units
    perms, ties = [], torch.zeros(flat.shape[0], dtype=torch.int64)
    for g in groups:
        primary, tie = unit_keys(v, g, key, counted)
        outgoing = partial(outgoing_rows, v, g, hidden)
        if g.blocks > 1:
            perm, n_ties = block_sort_order(g, primary, tie, outgoing)
            ties += n_ties
        else:
            perm = sort_order(primary, tie, outgoing)
            ties += near_ties(torch.gather(primary, 1, perm))
        permute_(v, g, perm)
        perms.append(perm)
    return perms, ties


def block_sort_order(
    group: UnitGroup,
    primary: torch.Tensor,
    tie: torch.Tensor,
    outgoing: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([M, n] permutation, [M] near ties)`` for units in ``group.blocks`` blocks:
    each block sorted on its own as :func:`sort_order` does (units never leave it),
    then, with ``block_moves``, whole blocks ordered by their sorted quantised keys
    (primary keys position by position, then tie keys), descending, lexicographically.
    Keys are quantised against the whole layer's largest |key|, as without blocks."""
    m, n, nb = primary.shape[0], primary.shape[1], group.blocks
    bs = n // nb
    qp, qt = quantise(primary), quantise(tie)

    def per_block(k: torch.Tensor) -> torch.Tensor:
        return k.reshape(m * nb, bs)

    def out_rows() -> torch.Tensor:
        out = outgoing()
        return out.reshape(m * nb, bs, out.shape[2])

    # within each block (rows [M*nb, bs]), on the keys quantised against the whole layer
    inner = _sort_quantised(per_block(qp), per_block(qt), out_rows).view(m, nb, bs)
    sorted_p = torch.gather(primary.view(m, nb, bs), 2, inner)
    gaps = (sorted_p[:, :, :-1] - sorted_p[:, :, 1:]).abs()
    scale = primary.abs().amax(1).view(m, 1, 1)
    n_ties = (gaps <= TIE_RTOL * scale).sum((1, 2))
    if group.block_moves:
        kp = torch.gather(qp.view(m, nb, bs), 2, inner)
        kt = torch.gather(qt.view(m, nb, bs), 2, inner)
        keys = list(kp.unbind(2)) + list(kt.unbind(2))
        border = lex_order(keys)  # [M, nb]
        if exact_ties(keys, border).any():  # then by the blocks' outgoing weights
            out = outgoing()
            rows = out.view(m, nb, bs, -1)
            rows = torch.gather(rows, 2, inner.unsqueeze(3).expand_as(rows)).flatten(2)
            border = lex_order(keys + list(quantise(rows.flatten(1)).view_as(rows).unbind(2)))
        # blocks whose sorted primary keys are all within the tolerance are a near tie
        bp = torch.gather(sorted_p, 1, border.unsqueeze(2).expand(m, nb, bs))
        close = ((bp[:, :-1] - bp[:, 1:]).abs() <= TIE_RTOL * scale).all(2)
        n_ties = n_ties + close.sum(1)
    else:
        border = torch.arange(nb).expand(m, nb)
    base = (border * bs).unsqueeze(2)  # [M, nb, 1]
    within = torch.gather(inner, 1, border.unsqueeze(2).expand(m, nb, bs))
    return (base + within).reshape(m, n), n_ties


def _sort_quantised(
    qp: torch.Tensor, qt: torch.Tensor, outgoing: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """:func:`sort_order` on keys already quantised (rows = blocks)."""
    keys = [qp, qt]
    order = lex_order(keys)
    if not exact_ties(keys, order).any():
        return order
    out = outgoing()
    return lex_order(keys + list(quantise(out.flatten(1)).view_as(out).unbind(2)))
