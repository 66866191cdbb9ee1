"""Batched evaluation of stacked models, shared by every engine and by stats.

- :mod:`.likelihood`: categorical and Gaussian likelihoods with their gradients.
- :mod:`.metrics`: accuracy, NLL, ECE, Brier, RMSE of predictions.
- here: the checks and batched outputs that engines and stats share.
"""

from __future__ import annotations

import numpy as np
import torch

from bnnctl.arch import AnyArch
from bnnctl.data import Dataset
from bnnctl.errors import UsageError
from bnnctl.evaluate.likelihood import Categorical, Gaussian
from bnnctl.evaluate.metrics import evaluate

#: Points per forward pass when evaluating stacked models on a dataset.
EVAL_CHUNK = 2048
#: Models per forward in :func:`predict`: one big first-layer gemm (faster than 256 here).
MODEL_BATCH = 1024


def check_arch(arch: AnyArch, ds: Dataset) -> None:
    """Refuse an architecture whose input or output width, or input image shape, does
    not fit the data."""
    shape = "x".join(map(str, getattr(arch, "input", ())))
    if shape and ds.image_shape is not None and shape != "x".join(map(str, ds.image_shape)):
        have = "x".join(map(str, ds.image_shape))
        raise UsageError(f"{arch.name} takes {shape} images but {ds.name} holds {have} images")
    if arch.n_inputs != ds.n_features:
        takes = f"{shape} images ({arch.n_inputs} values)" if shape else f"{arch.n_inputs} inputs"
        raise UsageError(
            f"{arch.name} takes {takes} but {ds.name} has {ds.n_features} features per point"
        )
    ok = {ds.n_outputs} | ({1} if ds.n_classes == 2 else set())
    if arch.n_outputs not in ok:
        what = (
            f"{ds.n_classes} classes" if ds.task == "classification" else f"{ds.n_outputs} targets"
        )
        raise UsageError(f"{arch.name} has {arch.n_outputs} outputs but {ds.name} has {what}")


def outputs(arch: AnyArch, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, N, out]`` of stacked models on shared inputs, in chunks of points."""
    with torch.no_grad():
        chunks = range(0, len(x), EVAL_CHUNK)
        return torch.cat([arch.forward(flat, x[i : i + EVAL_CHUNK]) for i in chunks], 1)


def predict(
    arch: AnyArch,
    params: np.ndarray,
    x: np.ndarray,
    batch: int = MODEL_BATCH,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Outputs ``[M, N, out]`` (on the CPU) of stacked models given as numpy, ``batch``
    models at a time, computed on ``device`` (default the CPU)."""
    dev = device or torch.device("cpu")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    starts = range(0, len(params), batch)
    return torch.cat(
        [outputs(arch, torch.from_numpy(params[s : s + batch]).to(dev), xt).cpu() for s in starts]
    )


def metrics_of(
    arch: AnyArch,
    lik: Categorical | Gaussian,
    flat: torch.Tensor,
    ds: Dataset,
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Train and test metrics ``{train_acc: [M], ...}`` of stacked models, computed on
    ``device`` (default: where ``flat`` is)."""
    dev = device or flat.device
    flat = flat.to(dev)
    out = {}
    for split in ("train", "test"):
        x = torch.from_numpy(getattr(ds, f"x_{split}")).to(dev)
        y = torch.from_numpy(getattr(ds, f"y_{split}")).to(dev)
        for k, v in evaluate(lik, outputs(arch, flat, x), y).items():
            out[f"{split}_{k}"] = v.cpu().double().numpy()
    return out
