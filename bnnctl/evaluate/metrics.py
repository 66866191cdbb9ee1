"""Predictive metrics of many models at once, from probabilities ``[M, N, C]``.

accuracy, NLL (mean negative log-likelihood), ECE (15 equal-width confidence bins,
weighted by bin size) and Brier score (mean over points of the squared distance between
the probability vector and the one-hot label, summed over classes).
"""

from __future__ import annotations

import torch

from bnnctl.evaluate.likelihood import Categorical, Gaussian

ECE_BINS = 15


def classification(
    probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS
) -> dict[str, torch.Tensor]:
    """Metrics ``[M]`` of predictive probabilities ``probs [M, N, C]`` on labels ``y [N]``."""
    y = y.long()
    conf, pred = probs.max(dim=-1)
    correct = (pred == y).to(probs.dtype)
    p_true = probs.gather(-1, y.expand(probs.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    nll = -torch.log(p_true.clamp_min(torch.finfo(probs.dtype).tiny)).mean(-1)
    onehot = torch.nn.functional.one_hot(y, probs.shape[-1]).to(probs.dtype)
    brier = ((probs - onehot) ** 2).sum(-1).mean(-1)
    return {
        "acc": correct.mean(-1),
        "nll": nll,
        "ece": ece(conf, correct, bins),
        "brier": brier,
    }


def ece(conf: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """Expected calibration error ``[M]``; bin b holds confidences in ((b-1)/bins, b/bins]."""
    n = conf.shape[-1]
    idx = (conf * bins).ceil().long().clamp(1, bins) - 1
    shape = conf.shape[:-1] + (bins,)
    gap = torch.zeros(shape, dtype=conf.dtype, device=conf.device)
    gap.scatter_add_(-1, idx, conf - correct)
    return gap.abs().sum(-1) / n


def evaluate(
    likelihood: Categorical | Gaussian, out: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Metrics ``[M]`` from model outputs ``[M, N, out]``: for classification acc, nll,
    ece, brier; for regression rmse and the Gaussian nll (both means over points)."""
    if isinstance(likelihood, Categorical):
        return classification(likelihood.probs(out), y)
    nll, _ = likelihood.nll_and_grad(out, y)
    rmse = ((out - y) ** 2).sum(-1).mean(-1).sqrt()
    return {"rmse": rmse, "nll": nll / out.shape[1]}
