"""Statistics of selections of checkpoints: the numbers of Laurent et al. (ICLR 2024) and
Izmailov et al. (ICML 2021), computed from the store.

Everything predictive is *re-evaluated*: the members' weights are read from the store and
run with :meth:`ArchSpec.forward` (in batches of models) on the exact test data stored with
their population (``store.load_data(row.data)``); the per-model accuracy and NLL are
checked against the manifest's recorded ones (``evaluation.max_abs_diff_vs_manifest``).

Definitions (p_m(x) = softmax output of member m, p̄ = mean over the M members, H =
entropy in nats):

- BMA: the predictive p̄; its accuracy, NLL, ECE (15 bins) and Brier as in metrics.py;
  the curve of those against the number of members k = 1, 2, 4, ..., M (the first k of a
  seeded random order of the members).
- Pairwise mutual information of models i, j: the information the model index carries
  about the label under the two-member mixture, I = mean_x [H((p_i+p_j)/2) -
  (H(p_i)+H(p_j))/2] (the Jensen-Shannon divergence); disagreement = fraction of points
  whose argmax differs. All pairs, or ``pairs`` distinct pairs sampled uniformly.
- Comparing selections A and B (Izmailov et al.): agreement = mean_x [argmax p̄_A =
  argmax p̄_B], total variation = ½ mean_x ‖p̄_A − p̄_B‖₁; and MMD² between the two weight
  clouds, unbiased estimate

      MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ_ij k(x_i,y_j)/(mn)

  with Gaussian k = exp(−‖x−y‖₂²/(2σ²)) and Laplace k = exp(−‖x−y‖₁/σ) (sklearn's
  ``rbf_kernel`` / ``laplacian_kernel`` conventions) and σ = c × the median pooled
  pairwise distance (L2 resp. L1), c in :data:`BANDWIDTH_MULTIPLES`; before and after
  canonicalisation (canonical rows: ``kind == 'canonical'``, ``parent_id`` -> source).
- Modes: rows a, b are in one mode when ‖a−b‖₂ ≤ tol · sqrt((‖a‖₂²+‖b‖₂²)/2); modes =
  connected components. L2-mass excess = (l2_mass_before − l2_mass_after)/l2_mass_after.
- OOD (OOD = positive class; every score grows with OOD-ness): max_prob = −max_c p̄,
  entropy = H(p̄), mutual_information = H(p̄) − mean_m H(p_m). AUROC and AUPR (average
  precision) by sklearn.metrics; FPR95 = fraction of in-distribution test points flagged
  at the lowest threshold that flags ≥ 95 % of OOD points. The built-in OOD set: for
  features in [0, 1] (digits' pixels) the inverted test images 1 − x; otherwise the test
  points pushed away from the training mean, μ + 3(x − μ).

:func:`compute` returns a JSON-able dict of the stable shape documented in
:data:`JSON_SHAPE` and a :class:`Context` of the arrays behind it (for plots.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bnnctl.arch import ArchSpec
from bnnctl.data import Dataset
from bnnctl.errors import DataError, UsageError
from bnnctl.likelihood import Categorical
from bnnctl.metrics import classification
from bnnctl.store import Store, select
from bnnctl.symmetry import MODE_RTOL, count_modes
from bnnctl.train import outputs

FORMAT = "bnnctl.stats/1"
METRICS = ("acc", "nll", "ece", "brier", "rmse")
BANDWIDTH_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)
MODEL_BATCH = 1024  # models per forward: one big first-layer gemm (faster than 256 here)

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
    "max_abs_diff_vs_manifest: {acc, nll} (regression: {rmse}); null values where the manifest has none}",
    "ensemble": "null | {bma: {acc, nll, ece, brier}, curve: [{members, acc, nll, ece, brier}], "
    "diversity: {n_pairs, mutual_information: {mean, std, median, min, max}, disagreement: {...}} | null}"
    " (regression: {bma: {rmse}, curve: [], diversity: null})",
    "modes": "null | {tolerance, before: {n_rows, n_modes}, after: {<method>: {n_rows, n_modes}}, "
    "l2_mass_excess_pct: {n, mean, std, median, min, max} | null}",
    "ood": "null | {source, n_in, n_out, scores: {max_prob|entropy|mutual_information: {auroc, aupr, fpr95}}}",
    "compare": "null | {a: {where, n}, b: {where, n}, agreement, total_variation, "
    "mmd: {before: {n_a, n_b, median_l2, median_l1, gaussian: [{multiple, sigma, mmd2}], laplace: [...]}, "
    "after: {<method>: same} }}",
    "plots": "[paths of PNGs written]",
}


# --- pure functions on probability arrays (tested against numpy formulas) -------------


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_c p_c log p_c over the last axis, with 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def _floats(d: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.reshape(-1)[0]) for k, v in d.items()}


def bma(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier of the averaged predictive p̄ = mean_m probs[m]."""
    return _floats(classification(probs.mean(0, keepdim=True), y))


def curve_sizes(m: int) -> list[int]:
    """1, 2, 4, ... below m, then m."""
    sizes = [2**i for i in range(int(math.log2(m)) + 1) if 2**i < m] if m > 1 else []
    return sizes + [m]


def bma_curve(probs: torch.Tensor, y: torch.Tensor, seed: int = 0) -> list[dict]:
    """BMA metrics of the first k members of a seeded random order, k in :func:`curve_sizes`."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(probs.shape[0]))
    csum = torch.cumsum(probs[order], 0)
    return [{"members": k, **_floats(classification(csum[k - 1 : k] / k, y))} for k in curve_sizes(probs.shape[0])]


def pair_indices(m: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j of m members, or ``pairs`` distinct ones drawn uniformly."""
    total = m * (m - 1) // 2
    if total <= pairs:
        i, j = np.triu_indices(m, 1)
        return i, j
    k = np.sort(np.random.default_rng(seed).choice(total, size=pairs, replace=False)).astype(np.int64)
    # invert k = i*m - i(i+1)/2 + (j - i - 1), the row-major index of (i, j) in the triangle
    i = (m - 2 - np.floor(np.sqrt(-8.0 * k + 4.0 * m * (m - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = k + i + 1 - total + (m - i) * (m - i - 1) // 2
    return i, j


def pairwise_diversity(probs: torch.Tensor, i: np.ndarray, j: np.ndarray, chunk: int = 256):
    """Per pair: mutual information (JS divergence, nats, mean over points) and disagreement."""
    h = entropy(probs)
    pred = probs.argmax(-1)
    mi, dis = [], []
    for s in range(0, len(i), chunk):
        a, b = torch.from_numpy(i[s : s + chunk]), torch.from_numpy(j[s : s + chunk])
        mix = entropy((probs[a] + probs[b]) / 2)
        mi.append((mix - (h[a] + h[b]) / 2).mean(-1))
        dis.append((pred[a] != pred[b]).double().mean(-1))
    return torch.cat(mi).double().numpy(), torch.cat(dis).numpy()


def agreement_tv(pa: torch.Tensor, pb: torch.Tensor) -> tuple[float, float]:
    """Izmailov et al.'s agreement and total variation of two predictives ``[N, C]``."""
    agree = (pa.argmax(-1) == pb.argmax(-1)).double().mean()
    tv = 0.5 * (pa - pb).abs().sum(-1).double().mean()
    return float(agree), float(tv)


# --- MMD in weight space ----------------------------------------------------------------


def _offdiag_median(d: torch.Tensor) -> float:
    """Median of the distinct pairwise distances (mean of the middle two when even); when
    that is 0 (mostly coincident rows) the median of the non-zero ones, or 1 if none."""
    iu = torch.triu_indices(d.shape[0], d.shape[0], 1)
    v = d[iu[0], iu[1]].numpy()
    med = float(np.median(v))
    return med if med > 0 else float(np.median(v[v > 0])) if (v > 0).any() else 1.0


def mmd2_from_kernel(k: torch.Tensor, m: int) -> float:
    """Unbiased MMD² from the pooled kernel matrix of ``m`` X rows then the Y rows."""
    n = k.shape[0] - m
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def mmd(x: np.ndarray, y: np.ndarray, multiples=BANDWIDTH_MULTIPLES, max_n: int = 256, seed: int = 0) -> dict:
    """Unbiased MMD² of weight clouds ``x [m,P]`` and ``y [n,P]`` under Gaussian and
    Laplace kernels, bandwidths = ``multiples`` × the median pooled distance; each side
    subsampled to ``max_n`` rows (seeded) to bound the O((m+n)² P) cost."""
    rng = np.random.default_rng(seed)
    x, y = (a if len(a) <= max_n else a[np.sort(rng.choice(len(a), max_n, replace=False))] for a in (x, y))
    if len(x) < 2 or len(y) < 2:
        raise UsageError("MMD needs at least two models on each side")
    z = torch.from_numpy(np.concatenate([x, y]).astype(np.float64))
    d2 = torch.cdist(z, z, p=2.0)
    d1 = torch.cdist(z, z, p=1.0)
    med2, med1 = _offdiag_median(d2), _offdiag_median(d1)
    out = {"n_a": len(x), "n_b": len(y), "median_l2": med2, "median_l1": med1, "gaussian": [], "laplace": []}
    for c in multiples:
        s2, s1 = c * med2, c * med1
        out["gaussian"].append({"multiple": c, "sigma": s2, "mmd2": mmd2_from_kernel(torch.exp(-(d2**2) / (2 * s2 * s2)), len(x))})
        out["laplace"].append({"multiple": c, "sigma": s1, "mmd2": mmd2_from_kernel(torch.exp(-d1 / s1), len(x))})
    return out


# --- modes --------------------------------------------------------------------------------


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
    fpr, tpr, _ = roc_curve(labels, scores)
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
    return (mu + 3 * (x - mu)).astype(np.float32), "builtin: test points pushed out from the training mean (mu + 3(x - mu))"


def load_ood(path: str | Path, n_features: int) -> np.ndarray:
    """Features ``[N, d]`` from an .npz holding ``x`` (or ``x_ood`` or ``x_test``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"OOD file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("x", "x_ood", "x_test") if k in z.files), None)
            if key is None:
                raise DataError(f"{p}: no array named x, x_ood or x_test (found {', '.join(z.files) or 'none'})")
            x = z[key]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read {p} as an .npz file: {e}") from None
    if x.dtype.kind not in "fiub" or x.ndim < 2 or len(x) == 0:
        raise DataError(f"{p}: OOD features must be a non-empty numeric [N, features] array, got {x.dtype} {x.shape}")
    x = x.reshape(len(x), -1).astype(np.float32)
    if x.shape[1] != n_features:
        raise DataError(f"{p}: OOD data has {x.shape[1]} features but the models take {n_features}")
    if not np.isfinite(x).all():
        raise DataError(f"{p}: OOD data contains NaN or Inf")
    return x


# --- selections from the store ------------------------------------------------------------


@dataclass
class Members:
    """Models of one architecture and dataset, evaluated on its stored test data."""

    rows: pd.DataFrame
    arch: ArchSpec
    data: Dataset
    params: np.ndarray
    out: torch.Tensor  # test outputs [M, N, out]
    seconds: float

    @property
    def classification(self) -> bool:
        return self.data.task == "classification"

    @property
    def probs(self) -> torch.Tensor:
        return Categorical().probs(self.out)

    def outputs_on(self, x: np.ndarray) -> torch.Tensor:
        return predict(self.arch, self.params, x)


def predict(arch: ArchSpec, params: np.ndarray, x: np.ndarray, batch: int = MODEL_BATCH) -> torch.Tensor:
    """Outputs ``[M, N, out]`` of stacked models, ``batch`` models at a time."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    parts = [outputs(arch, torch.from_numpy(params[s : s + batch]), xt) for s in range(0, len(params), batch)]
    return torch.cat(parts)


def functional_members(rows: pd.DataFrame) -> pd.DataFrame:
    """The selection without canonical rows whose parent is selected too (same function)."""
    canon = (rows["kind"] == "canonical") & rows["parent_id"].isin(set(rows["model_id"]))
    return rows[~canon]


def one_group(rows: pd.DataFrame, what: str) -> None:
    """Refuse a selection that mixes architectures or datasets, or lacks stored data."""
    if rows.empty:
        raise UsageError(f"{what}: the selection is empty")
    if rows["arch"].nunique() > 1 or rows["data_sha256"].nunique() > 1:
        groups = rows.groupby(["arch_name", "dataset"]).size()
        desc = ", ".join(f"{a} on {d} ({n})" for (a, d), n in groups.items())
        raise UsageError(f"{what} needs one architecture and one dataset; the selection has {desc}; narrow it with --where")
    if rows["data"].isna().any():
        raise UsageError(f"{what}: the selected rows have no data stored in the store to evaluate on")


def evaluate_members(store: Store, rows: pd.DataFrame, what: str = "evaluation", pool: Members | None = None) -> Members:
    """Read and run the selected models on their population's stored test data (taken
    from ``pool`` when it already evaluated all of them)."""
    one_group(rows, what)
    if pool is not None and rows["arch"].iloc[0] == pool.arch.to_json() and rows["data"].iloc[0] == pool.rows["data"].iloc[0]:
        pos = pd.Series(np.arange(len(pool.rows)), index=pool.rows["model_id"].to_numpy())
        if rows["model_id"].isin(pos.index).all():
            idx = pos.loc[rows["model_id"]].to_numpy().copy()
            return Members(rows, pool.arch, pool.data, pool.params[idx], pool.out[torch.from_numpy(idx)], 0.0)
    t0 = time.perf_counter()
    arch = ArchSpec.from_json(rows["arch"].iloc[0])
    data = store.load_data(rows["data"].iloc[0])
    params = store.read_params(rows)
    out = predict(arch, params, data.x_test)
    return Members(rows, arch, data, params, out, time.perf_counter() - t0)


def evaluation_report(mem: Members) -> dict:
    """Size, speed and the largest gap between re-evaluated and recorded metrics."""
    y = torch.from_numpy(mem.data.y_test)
    if mem.classification:
        got = {k: v for k, v in classification(mem.probs, y).items() if k in ("acc", "nll")}
    else:
        got = {"rmse": ((mem.out - y) ** 2).sum(-1).mean(-1).sqrt()}
    diffs = {}
    for k, v in got.items():
        rec = mem.rows[f"test_{k}"].to_numpy(dtype=float, na_value=np.nan)
        ok = ~np.isnan(rec)
        diffs[k] = float(np.abs(v.double().numpy()[ok] - rec[ok]).max()) if ok.any() else None
    m = len(mem.rows)
    return {
        "arch": mem.arch.name, "dataset": mem.data.name, "n_members": m, "n_test": int(len(y)),
        "seconds": mem.seconds, "models_per_s": m / max(mem.seconds, 1e-9), "max_abs_diff_vs_manifest": diffs,
    }


def _describe(v: np.ndarray) -> dict[str, float]:
    v = np.asarray(v, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}


def ensemble_report(mem: Members, pairs: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """BMA metrics, BMA curve and pairwise diversity; also the per-pair arrays."""
    y = torch.from_numpy(mem.data.y_test)
    if not mem.classification:
        mean = mem.out.mean(0)
        rmse = float(((mean - y) ** 2).sum(-1).mean().sqrt())
        return {"bma": {"rmse": rmse}, "curve": [], "diversity": None}, {}
    p = mem.probs
    i, j = pair_indices(len(p), pairs, seed)
    mi, dis = pairwise_diversity(p, i, j) if len(i) else (np.zeros(0), np.zeros(0))
    div = None if not len(i) else {
        "n_pairs": int(len(i)), "mutual_information": _describe(mi), "disagreement": _describe(dis)}
    rep = {"bma": bma(p, y), "curve": bma_curve(p, y, seed), "diversity": div}
    return rep, {"mi": mi, "disagreement": dis}


def ood_report(mem: Members, ood: str) -> dict:
    if not mem.classification:
        raise UsageError("OOD detection scores need a classification task")
    if ood == "builtin":
        x, source = builtin_ood(mem.data)
    else:
        x, source = load_ood(ood, mem.arch.widths[0]), str(ood)
    s_in = ood_scores(mem.probs)
    s_out = ood_scores(Categorical().probs(mem.outputs_on(x)))
    scores = {k: detection_metrics(s_in[k], s_out[k]) for k in s_in}
    return {"source": source, "n_in": int(len(mem.data.x_test)), "n_out": int(len(x)), "scores": scores}


# --- canonical rows ------------------------------------------------------------------------


def split_canonical(man: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
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
    after = {k: {"n_rows": len(g), "n_modes": count_modes(store.read_params(g), tol)} for k, g in canon.items()}
    allc = pd.concat(canon.values())
    both = allc[["l2_mass_before", "l2_mass_after"]].astype(float).dropna()
    excess = 100 * (both["l2_mass_before"] - both["l2_mass_after"]) / both["l2_mass_after"]
    return {
        "tolerance": tol,
        "before": {"n_rows": len(raw), "n_modes": count_modes(store.read_params(raw), tol)},
        "after": after,
        "l2_mass_excess_pct": {"n": len(excess), **_describe(excess.to_numpy())} if len(excess) else None,
    }


# --- summaries and comparison ----------------------------------------------------------------


def summary(rows: pd.DataFrame) -> dict:
    """Manifest metrics of the selection: overall distribution and per-group means."""
    cols = [f"test_{k}" for k in METRICS if f"test_{k}" in rows and rows[f"test_{k}"].notna().any()]
    overall = {}
    for c in cols:
        v = rows[c].dropna().astype(float)
        overall[c] = {"count": len(v), **_describe(v.to_numpy())}
    groups = []
    for key, g in rows.groupby(["population", "kind", "method", "arch_name"], sort=True, dropna=False):
        rec = dict(zip(("population", "kind", "method", "arch_name"), map(str, key), strict=True), n=len(g))
        for c in cols:
            v = g[c].dropna().astype(float)
            rec[f"{c}_mean"] = float(v.mean()) if len(v) else None
            rec[f"{c}_std"] = float(v.std(ddof=0)) if len(v) else None
        groups.append(rec)
    return {"overall": overall, "groups": groups}


def compare(store: Store, where_a: str, where_b: str, seed: int = 0, max_n: int = 256,
            pool: Members | None = None) -> dict:
    """Agreement and TV of the two BMA predictives; weight-space MMD² before and after
    canonicalisation (per canonicalisation method present for both sides)."""
    man = store.manifest()
    sel = [select(man, w) for w in (where_a, where_b)]
    for w, s in zip((where_a, where_b), sel, strict=True):
        if s.empty:
            raise UsageError(f"--compare: {w!r} selects no rows")
    splits = [split_canonical(man, s) for s in sel]
    raws = [functional_members(r) for r, _ in splits]
    out = {"a": {"where": where_a, "n": len(raws[0])}, "b": {"where": where_b, "n": len(raws[1])},
           "agreement": None, "total_variation": None, "mmd": None}
    one_group(pd.concat(raws), "--compare")
    mems = [evaluate_members(store, r, "--compare", pool) for r in raws]
    if mems[0].classification:
        out["agreement"], out["total_variation"] = agreement_tv(mems[0].probs.mean(0), mems[1].probs.mean(0))
    after = {}
    for method in sorted(set(splits[0][1]) & set(splits[1][1])):
        ca, cb = splits[0][1][method], splits[1][1][method]
        if len(ca) >= 2 and len(cb) >= 2:
            after[method] = mmd(store.read_params(ca), store.read_params(cb), max_n=max_n, seed=seed)
    out["mmd"] = {"before": mmd(mems[0].params, mems[1].params, max_n=max_n, seed=seed), "after": after}
    return out


@dataclass
class Context:
    """Arrays behind a report, for plots.py."""

    members: Members | None = None
    selection: pd.DataFrame | None = None
    raw: pd.DataFrame | None = None
    canonical: dict[str, pd.DataFrame] = field(default_factory=dict)
    pair_arrays: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)


def compute(
    store: Store,
    where: str | None = None,
    ensemble: bool = False,
    compare_exprs: tuple[str, str] | None = None,
    ood: str | None = None,
    pairs: int = 1000,
    seed: int = 0,
    plot: bool = False,
    max_n_mmd: int = 256,
    mode_tol: float = MODE_RTOL,
) -> tuple[dict, Context]:
    """The stats report of the rows ``where`` selects (see :data:`JSON_SHAPE`)."""
    if pairs < 1:
        raise UsageError(f"--pairs must be at least 1, got {pairs}")
    rows = select(store.manifest(), where)
    if rows.empty:
        raise UsageError(f"--where {where!r} selects no rows" if where else "the store holds no checkpoints")
    rep = {"format": FORMAT, "where": where, "n_models": len(rows), "summary": summary(rows),
           "evaluation": None, "ensemble": None, "modes": None, "ood": None, "compare": None, "plots": []}
    ctx = Context(selection=rows)
    members = functional_members(rows)
    if plot and not (ensemble or ood):
        members = _main_group(members)
    if ensemble or ood or plot:
        mem = evaluate_members(store, members, "--ensemble" if ensemble else "--ood" if ood else "--plot")
        ctx.members = mem
        rep["evaluation"] = evaluation_report(mem)
        rep["ensemble"], ctx.pair_arrays = ensemble_report(mem, pairs, seed)
        ctx.curve = rep["ensemble"]["curve"]
        if ood:
            rep["ood"] = ood_report(mem, ood)
        rep["modes"] = modes_report(store, members, mode_tol)
        ctx.raw, ctx.canonical = split_canonical(store.manifest(), members)
    if compare_exprs is not None:
        rep["compare"] = compare(store, *compare_exprs, seed=seed, max_n=max_n_mmd, pool=ctx.members)
    return rep, ctx


def _main_group(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most common (architecture, dataset) pair that has stored data."""
    rows = rows[rows["data"].notna()]
    if rows.empty:
        raise UsageError("--plot: no selected rows have data stored to evaluate on")
    key = rows.groupby(["arch", "data_sha256"]).size().idxmax()
    return rows[(rows["arch"] == key[0]) & (rows["data_sha256"] == key[1])]


def flatten(obj, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, scalar) pairs of a nested report, lists indexed by position."""
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list):
        return [kv for n, v in enumerate(obj) for kv in flatten(v, f"{prefix}.{n}" if prefix else str(n))]
    return [(prefix, obj)]
