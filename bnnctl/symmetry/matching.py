"""Weight matching (Git Re-Basin): align models to a reference by one linear assignment
per layer. An alignment, not a canonical form."""

from __future__ import annotations

import numpy as np
import torch

from bnnctl.arch import AnyArch
from bnnctl.errors import UsageError
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
    layer on its incoming weights alone. Returns aligned params (float64 copy), the
    permutations relative to the input, and the sweeps used."""
    from scipy.optimize import linear_sum_assignment

    x = flat.to(torch.float64, copy=True).contiguous()
    m, groups = x.shape[0], arch.unit_groups()
    if any(g.blocks > 1 for g in groups):  # an assignment would move units across blocks
        raise UsageError(f"weight matching of {arch.name} (grouped convolutions) is not supported")
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
            perm = np.stack([linear_sum_assignment(c, maximize=True)[1] for c in cost])
            if (perm != np.arange(g.size)).any():
                changed = True
                p = torch.from_numpy(perm)
                permute_(v, g, p)
                total[gi] = torch.gather(total[gi], 1, p)
        if not changed and sweep > 0:
            return x, total, sweep
    return x, total, max_iter
