"""Canonical rows of a selection by transform, distinct modes before and after, and the
L2-mass excess."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bnnctl.stats.summary import describe
from bnnctl.store import Store
from bnnctl.symmetry.modes import MODE_RTOL, count_modes

# --- canonical rows ------------------------------------------------------------------------


def split_canonical(
    man: pd.DataFrame, rows: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The raw (non-canonical) rows of a selection, with the parents of selected canonical
    rows; and the store's canonical rows of those, by transform (:func:`transform_names`):
    rows of two transforms are two canonical forms of the same models."""
    raw = rows[rows["kind"] != "canonical"]
    parents = set(rows.loc[rows["kind"] == "canonical", "parent_id"].dropna())
    raw = pd.concat([raw, man[man["model_id"].isin(parents - set(raw["model_id"]))]])
    canon = man[(man["kind"] == "canonical") & man["parent_id"].isin(set(raw["model_id"]))]
    return raw, {str(k): g for k, g in canon.groupby(transform_names(canon), sort=True)}


def transform_names(canon: pd.DataFrame) -> pd.Series:
    """The transform each canonical row was made with, by the name its id ends in: ids
    are ``<parent_id>.<tag>`` (``canon``, ``canon-<hash>``, ``align-<ref>``: one tag per
    transform); the row's method where an id is not of that form."""
    names = [
        mid[len(parent) + 1 :] if isinstance(parent, str) and mid.startswith(f"{parent}.") else m
        for mid, parent, m in zip(
            canon["model_id"], canon["parent_id"], canon["method"], strict=True
        )
    ]
    return pd.Series(names, index=canon.index, dtype=object)


def at_l2_minimum(transform: object) -> bool:
    """Whether a row's recorded transform (JSON) moved it to the minimum-L2 point of its
    scaling orbit; a row without one is taken at its word (its l2_mass_after)."""
    if not isinstance(transform, str):
        return True
    t = json.loads(transform)
    return "scale" in t["symmetries"] and t["scale_mode"] == "l2"


def excess_pct(canon: dict[str, pd.DataFrame]) -> np.ndarray:
    """Per source model, once: L2-mass excess (%) over its scaling minimum, from the
    canonical rows at that minimum (a perm-only or unitnorm row's masses say nothing
    about it)."""
    if not canon:
        return np.zeros(0)
    allc = pd.concat(canon.values())
    allc = allc[allc["transform"].map(at_l2_minimum).astype(bool)]
    both = allc.drop_duplicates("parent_id")[["l2_mass_before", "l2_mass_after"]]
    both = both.astype(float).dropna()
    return (
        100 * (both["l2_mass_before"] - both["l2_mass_after"]) / both["l2_mass_after"]
    ).to_numpy()


def modes_report(store: Store, rows: pd.DataFrame, tol: float = MODE_RTOL) -> dict | None:
    """Distinct modes before/after canonicalisation (per transform) and the L2-mass
    excess; None when the store holds no canonical rows for the selection."""
    raw, canon = split_canonical(store.manifest(), rows)
    if not canon or raw.empty or raw["n_params"].nunique() > 1:
        return None
    after = {
        k: {"n_rows": len(g), "n_modes": count_modes(store.read_params(g), tol)}
        for k, g in canon.items()
    }
    excess = excess_pct(canon)
    return {
        "tolerance": tol,
        "before": {"n_rows": len(raw), "n_modes": count_modes(store.read_params(raw), tol)},
        "after": after,
        "l2_mass_excess_pct": {"n": len(excess), **describe(excess)} if len(excess) else None,
    }


def functional_members(rows: pd.DataFrame) -> pd.DataFrame:
    """The selection without canonical rows whose parent is selected too (same function)."""
    canon = (rows["kind"] == "canonical") & rows["parent_id"].isin(set(rows["model_id"]))
    return rows[~canon]
