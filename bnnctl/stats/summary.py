"""Summaries of manifest rows (torch-free: the plain ``bnnctl stats`` needs only these)."""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("acc", "nll", "ece", "brier", "rmse")


def describe(v: np.ndarray) -> dict[str, float]:
    v = np.asarray(v, dtype=float)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def summary(rows: pd.DataFrame) -> dict:
    """Manifest metrics of the selection: overall distribution and per-group means."""
    cols = [f"test_{k}" for k in METRICS if f"test_{k}" in rows and rows[f"test_{k}"].notna().any()]
    overall = {}
    for c in cols:
        v = rows[c].dropna().astype(float)
        overall[c] = {"count": len(v), **describe(v.to_numpy())}
    groups = []
    for key, g in rows.groupby(
        ["population", "kind", "method", "arch_name"], sort=True, dropna=False
    ):
        rec = dict(
            zip(("population", "kind", "method", "arch_name"), map(str, key), strict=True), n=len(g)
        )
        for c in cols:
            v = g[c].dropna().astype(float)
            rec[f"{c}_mean"] = float(v.mean()) if len(v) else None
            rec[f"{c}_std"] = float(v.std(ddof=0)) if len(v) else None
        groups.append(rec)
    return {"overall": overall, "groups": groups}


def flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, scalar) pairs of a nested report, lists indexed by position."""
    if isinstance(obj, dict):
        return [
            kv for k, v in obj.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(obj, list):
        return [
            kv
            for n, v in enumerate(obj)
            for kv in flatten(v, f"{prefix}.{n}" if prefix else str(n))
        ]
    return [(prefix, obj)]
