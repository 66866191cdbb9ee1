"""Out-of-distribution scores and detection metrics (AUROC, AUPR, FPR95)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bnnctl.data import Dataset
from bnnctl.errors import DataError
from bnnctl.stats.measures import entropy

# --- OOD --------------------------------------------------------------------------------


def ood_scores(probs: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-point OOD scores ``[N]`` from member probabilities ``[M, N, C]`` (higher = more OOD)."""
    pbar = probs.mean(0)
    h = entropy(pbar)
    return {
        "max_prob": (-pbar.max(-1).values).double().numpy(),
        "entropy": h.double().numpy(),
        "mutual_information": (h - entropy(probs).mean(0)).double().numpy(),
    }


def detection_metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (OOD positive) and FPR at 95 % TPR of scores that grow with OOD-ness."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    scores = np.r_[s_in, s_out]
    # every threshold: dropping "intermediate" (collinear) points can drop the one where
    # the TPR first reaches 95 %, and the next one kept has a higher FPR
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def builtin_ood(ds: Dataset) -> tuple[np.ndarray, str]:
    """A shifted copy of the test set and its description: for features in [0, 1] (images)
    the inverted test images 1 − x; otherwise the test points pushed away from the
    training mean, μ + 3(x − μ)."""
    x = ds.x_test.astype(np.float64)
    if ds.x_train.min() >= 0 and ds.x_train.max() <= 1:
        return (1.0 - x).astype(np.float32), "builtin: inverted test images (1 - x)"
    mu = ds.x_train.mean(0, dtype=np.float64)
    return (mu + 3 * (x - mu)).astype(
        np.float32
    ), "builtin: test points pushed out from the training mean (mu + 3(x - mu))"


def load_ood(path: str | Path, n_features: int) -> np.ndarray:
    """Features ``[N, d]`` from an .npz holding ``x`` (or ``x_ood`` or ``x_test``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"OOD file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("x", "x_ood", "x_test") if k in z.files), None)
            if key is None:
                raise DataError(
                    f"{p}: no array named x, x_ood or x_test (found {', '.join(z.files) or 'none'})"
                )
            x = z[key]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read {p} as an .npz file: {e}") from None
    if x.dtype.kind not in "fiub" or x.ndim < 2 or len(x) == 0:
        raise DataError(
            f"{p}: OOD features must be a non-empty numeric [N, features] array, got {x.dtype} {x.shape}"  # noqa: E501
        )
    x = x.reshape(len(x), -1).astype(np.float32)
    if x.shape[1] != n_features:
        raise DataError(f"{p}: OOD data has {x.shape[1]} features but the models take {n_features}")
    if not np.isfinite(x).all():
        raise DataError(f"{p}: OOD data contains NaN or Inf")
    return x
