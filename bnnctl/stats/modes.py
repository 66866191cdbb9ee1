"""Canonical rows of a selection, distinct modes before and after, and L2-mass excess."""

from __future__ import annotations

import pandas as pd

from bnnctl.stats.summary import describe
from bnnctl.store import Store
from bnnctl.symmetry.modes import MODE_RTOL, count_modes

# --- canonical rows ------------------------------------------------------------------------


def split_canonical(
    man: pd.DataFrame, rows: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The raw (non-canonical) rows of a selection, with the parents of selected canonical
    rows; and the store's canonical rows of those, by canonicalisation method."""
    raw = rows[rows["kind"] != "canonical"]
    parents = set(rows.loc[rows["kind"] == "canonical", "parent_id"].dropna())
    raw = pd.concat([raw, man[man["model_id"].isin(parents - set(raw["model_id"]))]])
    canon = man[(man["kind"] == "canonical") & man["parent_id"].isin(set(raw["model_id"]))]
    return raw, {str(k): g for k, g in canon.groupby("method", sort=True)}


def modes_report(store: Store, rows: pd.DataFrame, tol: float = MODE_RTOL) -> dict | None:
    """Distinct modes before/after canonicalisation and the L2-mass excess; None when the
    store holds no canonical rows for the selection."""
    raw, canon = split_canonical(store.manifest(), rows)
    if not canon or raw.empty or raw["n_params"].nunique() > 1:
        return None
    after = {
        k: {"n_rows": len(g), "n_modes": count_modes(store.read_params(g), tol)}
        for k, g in canon.items()
    }
    allc = pd.concat(canon.values())
    both = allc[["l2_mass_before", "l2_mass_after"]].astype(float).dropna()
    excess = 100 * (both["l2_mass_before"] - both["l2_mass_after"]) / both["l2_mass_after"]
    return {
        "tolerance": tol,
        "before": {"n_rows": len(raw), "n_modes": count_modes(store.read_params(raw), tol)},
        "after": after,
        "l2_mass_excess_pct": {"n": len(excess), **describe(excess.to_numpy())}
        if len(excess)
        else None,
    }


def functional_members(rows: pd.DataFrame) -> pd.DataFrame:
    """The selection without canonical rows whose parent is selected too (same function)."""
    canon = (rows["kind"] == "canonical") & rows["parent_id"].isin(set(rows["model_id"]))
    return rows[~canon]
