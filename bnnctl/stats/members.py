"""Members of a selection re-evaluated on their stored data, and the reports built on them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

import bnnctl.device as devmod
import bnnctl.scheduler as schedmod
from bnnctl.arch import AnyArch, arch_from_json
from bnnctl.data import Dataset
from bnnctl.errors import UsageError
from bnnctl.evaluate import MODEL_BATCH, predict
from bnnctl.evaluate.likelihood import Categorical
from bnnctl.evaluate.metrics import classification
from bnnctl.stats.measures import (
    CURVE_ORDERINGS,
    bma,
    bma_curve,
    pair_indices,
    pairwise_diversity,
)
from bnnctl.stats.ood import builtin_ood, detection_metrics, load_ood, ood_scores
from bnnctl.stats.summary import describe
from bnnctl.store import Store

# --- selections from the store ------------------------------------------------------------


@dataclass
class Members:
    """Models of one architecture and dataset, evaluated on its stored test data."""

    rows: pd.DataFrame
    arch: AnyArch
    data: Dataset
    params: np.ndarray
    out: torch.Tensor  # test outputs [M, N, out]
    seconds: float
    device: torch.device = torch.device("cpu")  # where forward passes run

    @property
    def classification(self) -> bool:
        return self.data.task == "classification"

    @property
    def probs(self) -> torch.Tensor:
        return Categorical().probs(self.out)

    def outputs_on(self, x: np.ndarray) -> torch.Tensor:
        return predict(self.arch, self.params, x, device=self.device)


def one_group(rows: pd.DataFrame, what: str) -> None:
    """Refuse a selection that mixes architectures or datasets, or lacks stored data."""
    if rows.empty:
        raise UsageError(f"{what}: the selection is empty")
    if rows["arch"].nunique() > 1 or rows["data_sha256"].nunique() > 1:
        groups = rows.groupby(["arch_name", "dataset"]).size()
        desc = ", ".join(f"{a} on {d} ({n})" for (a, d), n in groups.items())
        raise UsageError(
            f"{what} needs one architecture and one dataset; the selection has {desc}; narrow it with --where"  # noqa: E501
        )
    if rows["data"].isna().any():
        raise UsageError(
            f"{what}: the selected rows have no data stored in the store to evaluate on"
        )


def evaluate_members(
    store: Store,
    rows: pd.DataFrame,
    what: str = "evaluation",
    pool: Members | None = None,
    scheduler: str | None = None,
    device: str = "auto",
) -> Members:
    """Read and run the selected models on their population's stored test data (taken
    from ``pool`` when it already evaluated all of them). ``scheduler`` (``local:N`` or
    ``tcp://HOST:PORT``) runs the forward passes on Dask workers, a block of
    :data:`~bnnctl.evaluate.MODEL_BATCH` models per task, each worker reading its block
    from the store: the same outputs as in this process on one thread, bit for bit.
    ``device``: where the forward passes run (:mod:`bnnctl.device`; a Dask worker
    resolves it itself); the outputs come back to the CPU."""
    sched = schedmod.require(scheduler)
    dev = devmod.resolve("cpu" if sched is not None else device)
    where = devmod.parse(device)
    one_group(rows, what)
    if (
        pool is not None
        and rows["arch"].iloc[0] == pool.arch.to_json()
        and rows["data"].iloc[0] == pool.rows["data"].iloc[0]
    ):
        pos = pd.Series(np.arange(len(pool.rows)), index=pool.rows["model_id"].to_numpy())
        if rows["model_id"].isin(pos.index).all():
            idx = pos.loc[rows["model_id"]].to_numpy().copy()
            out = pool.out[torch.from_numpy(idx)]
            return Members(rows, pool.arch, pool.data, pool.params[idx], out, 0.0, pool.device)
    t0 = time.perf_counter()
    arch = arch_from_json(rows["arch"].iloc[0])
    data = store.load_data(rows["data"].iloc[0])
    params = store.read_params(rows)
    if sched is None:
        out = predict(arch, params, data.x_test, device=dev)
    else:
        out = _predict_scheduled(store, rows, sched, where)
    return Members(rows, arch, data, params, out, time.perf_counter() - t0, dev)


#: The manifest columns a worker needs to read and run its block.
_BLOCK_COLUMNS = ["model_id", "arch", "data", "array", "row", "n_params", "sha256"]


def _predict_scheduled(
    store: Store, rows: pd.DataFrame, sched: schedmod.Scheduler, device: str
) -> torch.Tensor:
    """Test outputs ``[M, N, out]`` of ``rows``, a block of MODEL_BATCH models per Dask
    task (the blocks :func:`~bnnctl.evaluate.predict` runs in this process)."""
    cols = rows[_BLOCK_COLUMNS].reset_index(drop=True)
    blocks = [(cols.iloc[s : s + MODEL_BATCH],) for s in range(0, len(cols), MODEL_BATCH)]
    with schedmod.connect(sched) as cluster:
        outs = cluster.map(
            _predict_block,
            blocks,
            (schedmod.location(store), device),
            name=lambda i: f"models {blocks[i][0]['model_id'].iloc[0]}...",
        )
    return torch.from_numpy(np.concatenate(outs))


def _predict_block(rows: pd.DataFrame, url: str, device: str) -> np.ndarray:
    """One block's test outputs, on a Dask worker (it opens the store by URL) and its
    ``device``."""
    store = Store.open(url)
    arch = arch_from_json(rows["arch"].iloc[0])
    data = store.load_data(rows["data"].iloc[0])
    dev = devmod.resolve(device)
    return predict(arch, store.read_params(rows), data.x_test, device=dev).numpy()


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
        "arch": mem.arch.name,
        "dataset": mem.data.name,
        "n_members": m,
        "n_test": int(len(y)),
        "seconds": mem.seconds,
        "models_per_s": m / max(mem.seconds, 1e-9),
        "max_abs_diff_vs_manifest": diffs,
    }


def ensemble_report(mem: Members, pairs: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """BMA metrics, BMA curve (mean and std over ``CURVE_ORDERINGS`` member orders) and
    pairwise diversity; also the per-pair arrays."""
    y = torch.from_numpy(mem.data.y_test)
    if not mem.classification:
        mean = mem.out.mean(0)
        rmse = float(((mean - y) ** 2).sum(-1).mean().sqrt())
        return {"bma": {"rmse": rmse}, "curve": [], "diversity": None}, {}
    p = mem.probs
    i, j = pair_indices(len(p), pairs, seed)
    mi, dis = pairwise_diversity(p, i, j) if len(i) else (np.zeros(0), np.zeros(0))
    div = (
        None
        if not len(i)
        else {
            "n_pairs": int(len(i)),
            "mutual_information": describe(mi),
            "disagreement": describe(dis),
        }
    )
    curve = bma_curve(p, y, seed, CURVE_ORDERINGS)
    rep = {"bma": bma(p, y), "curve": curve, "diversity": div}
    return rep, {"mi": mi, "disagreement": dis}


def ood_report(mem: Members, ood: str) -> dict:
    if not mem.classification:
        raise UsageError("OOD detection scores need a classification task")
    if ood == "builtin":
        x, source = builtin_ood(mem.data)
    else:
        x, source = load_ood(ood, mem.arch.n_inputs), str(ood)
    s_in = ood_scores(mem.probs)
    s_out = ood_scores(Categorical().probs(mem.outputs_on(x)))
    scores = {k: detection_metrics(s_in[k], s_out[k]) for k in s_in}
    return {
        "source": source,
        "n_in": int(len(mem.data.x_test)),
        "n_out": int(len(x)),
        "scores": scores,
    }
