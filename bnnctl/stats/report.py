"""The stats report: manifest summaries (torch-free) and, when asked for, the
re-evaluated sections. Torch is imported only for those."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import bnnctl.device as devmod
from bnnctl.errors import UsageError
from bnnctl.stats.modes import functional_members, modes_report, split_canonical
from bnnctl.stats.summary import summary
from bnnctl.store import Store, select
from bnnctl.symmetry.modes import MODE_RTOL

if TYPE_CHECKING:
    from bnnctl.stats.members import Members

FORMAT = "bnnctl.stats/1"

#: The JSON document `bnnctl stats --format json` prints; every key is always present
#: (null when not asked for or not applicable).
JSON_SHAPE = {
    "format": "'bnnctl.stats/1'",
    "where": "the --where expression or null",
    "n_models": "rows selected",
    "summary": {
        "overall": "{test_acc: {count, mean, std, min, median, max}, ...} of manifest metrics",
        "groups": "[{population, kind, method, arch_name, n, test_acc_mean, test_acc_std, ...}]",
    },
    "evaluation": "null | {arch, dataset, n_members, n_test, seconds, models_per_s, "
    "max_abs_diff_vs_manifest: {acc, nll} (regression: {rmse}); null values where the manifest has none}",  # noqa: E501
    "ensemble": "null | {bma: {acc, nll, ece, brier}, curve: [{members, acc, nll, ece, brier, "
    "acc_std, nll_std, ece_std, brier_std}] (mean and std over 16 random member orders), "
    "diversity: {n_pairs, mutual_information: {mean, std, median, min, max}, disagreement: {...}} | null}"  # noqa: E501
    " (regression: {bma: {rmse}, curve: [], diversity: null})",
    "modes": "null | {tolerance, before: {n_rows, n_modes}, "
    "after: {<transform>: {n_rows, n_modes}}, "
    "l2_mass_excess_pct: {n, mean, std, median, min, max} | null} (transform: the tag its "
    "canonical ids end in, e.g. canon; excess: once per source, from rows at the L2 minimum)",
    "ood": "null | {source, n_in, n_out, scores: {max_prob|entropy|mutual_information: {auroc, aupr, fpr95}}}",  # noqa: E501
    "compare": "null | {a: {where, n}, b: {where, n}, agreement, total_variation, "
    "mmd: {before: {n_a, n_b, median_l2, median_l1, gaussian: [{multiple, sigma, mmd2}], laplace: [...]}, "  # noqa: E501
    "after: {<transform>: same} }}",
    "plots": "[paths of PNGs written]",
}


# --- summaries and comparison ----------------------------------------------------------------


def compare(
    store: Store,
    where_a: str,
    where_b: str,
    seed: int = 0,
    max_n: int = 256,
    pool: Members | None = None,
    device: str = "auto",
) -> dict:
    """Agreement and TV of the two BMA predictives; weight-space MMD² before and after
    canonicalisation (per transform present for both sides)."""
    from bnnctl.stats.measures import agreement_tv
    from bnnctl.stats.members import evaluate_members, one_group
    from bnnctl.stats.mmd import mmd

    man = store.manifest()
    try:
        sel = [select(man, w) for w in (where_a, where_b)]
    except UsageError as e:  # the expressions came from --compare, not --where
        raise UsageError(str(e).replace("`where`", "`compare_exprs`"), "compare_exprs") from None
    for w, s in zip((where_a, where_b), sel, strict=True):
        if s.empty:
            raise UsageError(f"--compare: {w!r} selects no rows")
    splits = [split_canonical(man, s) for s in sel]
    raws = [functional_members(r) for r, _ in splits]
    out: dict[str, Any] = {
        "a": {"where": where_a, "n": len(raws[0])},
        "b": {"where": where_b, "n": len(raws[1])},
        "agreement": None,
        "total_variation": None,
        "mmd": None,
    }
    one_group(pd.concat(raws), "--compare")
    mems = [evaluate_members(store, r, "--compare", pool, device=device) for r in raws]
    if mems[0].classification:
        out["agreement"], out["total_variation"] = agreement_tv(
            mems[0].probs.mean(0), mems[1].probs.mean(0)
        )
    after = {}
    for name in sorted(set(splits[0][1]) & set(splits[1][1])):
        ca, cb = splits[0][1][name], splits[1][1][name]
        if len(ca) >= 2 and len(cb) >= 2:
            after[name] = mmd(store.read_params(ca), store.read_params(cb), max_n=max_n, seed=seed)
    out["mmd"] = {
        "before": mmd(mems[0].params, mems[1].params, max_n=max_n, seed=seed),
        "after": after,
    }
    return out


@dataclass
class Context:
    """Arrays behind a report, for :mod:`bnnctl.stats.plots`."""

    members: Members | None = None
    selection: pd.DataFrame | None = None
    raw: pd.DataFrame | None = None
    canonical: dict[str, pd.DataFrame] = field(default_factory=dict)
    pair_arrays: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)


def compute(
    store: Store | str,
    where: str | None = None,
    ensemble: bool = False,
    compare_exprs: tuple[str, str] | None = None,
    ood: str | None = None,
    pairs: int = 1000,
    seed: int = 0,
    plot: bool | str | Path = False,
    max_n_mmd: int = 256,
    mode_tol: float = MODE_RTOL,
    scheduler: str | None = None,
    device: str = "auto",
) -> tuple[dict, Context]:
    """The stats report of the rows ``where`` selects (see :data:`JSON_SHAPE`), and the
    arrays behind it. ``plot``: a folder to write the figures into (or True to compute
    what the figures need without writing them). ``scheduler`` runs the re-evaluation's
    forward passes on Dask workers (:func:`~bnnctl.stats.members.evaluate_members`), and
    ``device`` (:mod:`bnnctl.device`) is where they run."""
    if pairs < 1:
        raise UsageError(f"`pairs` must be at least 1, got {pairs}", "pairs")
    if seed < 0:
        raise UsageError(f"`seed` must be non-negative, got {seed}", "seed")
    if not 0 <= mode_tol < 1:
        raise UsageError(f"`mode_tol` must be in [0, 1), got {mode_tol}", "mode_tol")
    devmod.parse(device)
    if scheduler is not None and not (ensemble or ood or plot):
        raise UsageError(
            "`scheduler` runs the re-evaluation: give it with --ensemble, --ood or --plot",
            "scheduler",
        )
    store = store if isinstance(store, Store) else Store.open(store)
    rows = select(store.manifest(), where)
    if rows.empty:
        raise UsageError(
            f"where {where!r} selects no rows" if where else "the store holds no checkpoints",
            "where",
        )
    rep: dict[str, Any] = {
        "format": FORMAT,
        "where": where,
        "n_models": len(rows),
        "summary": summary(rows),
        "evaluation": None,
        "ensemble": None,
        "modes": None,
        "ood": None,
        "compare": None,
        "plots": [],
    }
    ctx = Context(selection=rows)
    members = functional_members(rows)
    if plot and not (ensemble or ood):
        members = _main_group(members)
    if ensemble or ood or plot:
        from bnnctl.stats.members import (  # torch: only when re-evaluating
            ensemble_report,
            evaluate_members,
            evaluation_report,
            ood_report,
        )

        what = "--ensemble" if ensemble else "--ood" if ood else "--plot"
        mem = evaluate_members(store, members, what, scheduler=scheduler, device=device)
        ctx.members = mem
        rep["evaluation"] = evaluation_report(mem)
        rep["ensemble"], ctx.pair_arrays = ensemble_report(mem, pairs, seed)
        ctx.curve = rep["ensemble"]["curve"]
        if ood:
            rep["ood"] = ood_report(mem, ood)
        rep["modes"] = modes_report(store, members, mode_tol)
        ctx.raw, ctx.canonical = split_canonical(store.manifest(), members)
    if compare_exprs is not None:
        rep["compare"] = compare(
            store, *compare_exprs, seed=seed, max_n=max_n_mmd, pool=ctx.members, device=device
        )
    if isinstance(plot, (str, Path)):
        from bnnctl.stats.plots import write_all

        rep["plots"] = [str(p) for p in write_all(store, ctx, plot)]
    return rep, ctx


def _main_group(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most common (architecture, dataset) pair that has stored data."""
    rows = rows[rows["data"].notna()]
    if rows.empty:
        raise UsageError("--plot: no selected rows have data stored to evaluate on")
    key = rows.groupby(["arch", "data_sha256"]).size().idxmax()
    return rows[(rows["arch"] == key[0]) & (rows["data_sha256"] == key[1])]
