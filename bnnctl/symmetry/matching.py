"""Weight matching (Git Re-Basin): align models to a reference by one linear assignment
per layer. An alignment, not a canonical form."""

from __future__ import annotations

import numpy as np
import torch

from bnnctl.arch import AnyArch, UnitGroup
from bnnctl.symmetry.action import pair_rows, permute_, tensor_sum

ALIGN_MAX_ITER = 100

# --- weight matching (Git Re-Basin) ---------------------------------------------------


def weight_match(
    arch: AnyArch, flat: torch.Tensor, ref: torch.Tensor, max_iter: int = ALIGN_MAX_ITER
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Permute each model's hidden units to best match ``ref [P]`` (Ainsworth et al.,
    2023, weight matching): for each layer in turn, the permutation maximising
    ``Σ <ref tensors, permuted model tensors>`` over the tensors the layer's units
    index, with the other layers fixed, is a linear assignment problem
    (``scipy.optimize.linear_sum_assignment``). Sweeps repeat until no layer changes
    (a fixed point) or ``max_iter``, after a first forward pass that matches each
    layer on its incoming weights alone. A layer in blocks (a grouped convolution) is
    matched within the permutations it allows (:func:`block_assignment`). Returns
    aligned params (float64 copy), the permutations relative to the input (of each
    group's own units: those a block move carries in another group are not tracked),
    and the sweeps used."""
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
            cost = tensor_sum(  # every unit group has incoming tensors
                torch.matmul(pair_rows(rv, g, n, a), pair_rows(v, g, n, a).transpose(1, 2))
                for n, a in pairs
            ).numpy()  # [M, n_ref, n_model]
            if g.blocks == 1:
                perm = np.stack([linear_sum_assignment(c, maximize=True)[1] for c in cost])
            else:
                # what a block carries counts once the next layer is matched (sweep 1 on)
                carries = sweep > 0 and g.block_moves and g.carried
                moved = carried_cost(rv, v, g) if carries else None
                perm = np.stack(
                    [
                        block_assignment(
                            cost[k], g.blocks, g.block_moves, None if moved is None else moved[k]
                        )
                        for k in range(m)
                    ]
                )
            if (perm != np.arange(g.size)).any():
                changed = True
                p = torch.from_numpy(perm)
                permute_(v, g, p)
                total[gi] = torch.gather(total[gi], 1, p)
        if not changed and sweep > 0:
            return x, total, sweep
    return x, total, max_iter


def block_assignment(
    cost: np.ndarray, blocks: int, moves: bool, carried: np.ndarray | None = None
) -> np.ndarray:
    """The permutation maximising ``Σ_i cost[i, perm[i]]`` among those a layer in
    ``blocks`` equal blocks allows: each unit stays in its block, or (``moves``) whole
    blocks move too, each block move also scoring ``carried[B, B']`` (what moving model
    block B' to B carries along). Exact: the best within-block assignment of every pair of
    blocks, then the best assignment of blocks to blocks on those scores."""
    from scipy.optimize import linear_sum_assignment

    bs = cost.shape[0] // blocks
    inner = np.empty((blocks, blocks, bs), dtype=np.int64)
    score = np.zeros((blocks, blocks))
    for a in range(blocks):
        for b in range(blocks) if moves else [a]:
            sub = cost[a * bs : (a + 1) * bs, b * bs : (b + 1) * bs]
            rows, cols = linear_sum_assignment(sub, maximize=True)
            inner[a, b] = cols
            score[a, b] = sub[rows, cols].sum()
    if carried is not None:
        score = score + carried
    to = linear_sum_assignment(score, maximize=True)[1] if moves else np.arange(blocks)
    return np.concatenate([to[a] * bs + inner[a, to[a]] for a in range(blocks)])


def carried_cost(
    rv: dict[str, torch.Tensor], v: dict[str, torch.Tensor], g: UnitGroup
) -> np.ndarray:
    """``[M, blocks, blocks]``: the inner product of the reference's block ``B`` with the
    model's block ``B'`` of every tensor a block move of ``g`` carries."""

    def rows(t: torch.Tensor, axis: int) -> torch.Tensor:  # [M, blocks, rest]
        t = t.movedim(axis + 1, 1)
        return t.reshape(t.shape[0], g.blocks, -1)

    parts = [
        torch.matmul(rows(rv[name], axis), rows(v[name], axis).transpose(1, 2))
        for name, axis in g.carried
    ]
    return tensor_sum(parts).numpy()
