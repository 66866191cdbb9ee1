"""bnnctl stats fixes against independent truth: FPR95 on a tied ROC worked out by hand;
modes and L2-mass excess of a population canonicalised two ways, against the closed-form
scaling minimum of one-hidden-layer nets; the BMA curve against a numpy mean over the
same member orders, on probabilities from torch.nn modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnctl import ArchSpec, Store
from bnnctl.engines.canonicalize import canonicalize
from bnnctl.stats.measures import CURVE_ORDERINGS, bma_curve, curve_sizes
from bnnctl.stats.ood import detection_metrics
from bnnctl.stats.report import compute
from bnnctl.testing.reference import outputs as nn_outputs


def np_metrics(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    """acc, nll, ece, brier of one predictive p [N, C], straight from the definitions."""
    n, c = p.shape
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    ece = sum(
        abs((conf[m] - correct[m]).sum()) / n
        for b in range(1, bins + 1)
        if (m := (conf > (b - 1) / bins) & (conf <= b / bins)).any()
    )
    return {
        "acc": correct.mean(),
        "nll": -np.log(p[np.arange(n), y]).mean(),
        "ece": ece,
        "brier": ((p - np.eye(c)[y]) ** 2).sum(1).mean(),
    }


# --- A: FPR95 with tied scores -----------------------------------------------------------


def test_fpr95_with_tied_scores_by_hand():
    # 20 OOD points: 18 score 3, one 2, one 1; 20 in-distribution points: one 2, one 1,
    # 18 score 0. Flagging score >= 2 catches 19/20 = 95 % of OOD points and 1/20 of the
    # in-distribution ones: FPR95 = 0.05. The ROC points (0, .9), (.05, .95), (.1, 1) are
    # collinear, and sklearn's default dropped the middle one: 0.1 was reported.
    s_out = np.r_[np.full(18, 3.0), 2.0, 1.0]
    s_in = np.r_[2.0, 1.0, np.zeros(18)]
    assert detection_metrics(s_in, s_out)["fpr95"] == pytest.approx(0.05)


# --- D: one population canonicalised two ways ----------------------------------------------


def min_l2_mass(arch: ArchSpec, row: np.ndarray) -> float:
    """The scaling minimum of a one-hidden-layer net, in closed form: unit j with in/out
    masses a_j, c_j contributes min_λ a_j λ² + c_j / λ² = 2 sqrt(a_j c_j)."""
    sd = arch.state_dict(torch.from_numpy(row).double())
    w1, w2 = (sd[t.name].numpy() for t in arch.layout if len(t.shape) == 2)
    return float((2 * np.sqrt((w1**2).sum(1) * (w2**2).sum(0))).sum())


@pytest.fixture
def twice_store(tmp_path, digits):
    """Population 'pop': 3 random 64-8-10 nets (seeds 0-2) and a permuted, rescaled copy
    of each (seeds 3-5), canonicalised with the default transform (perm, scale) and with
    perm only."""
    arch = ArchSpec((64, 8, 10))
    gen = torch.Generator().manual_seed(0)
    bases = [arch.init(gen).double() for _ in range(3)]
    copies = []
    for b in bases:
        w1, b1, w2, b2 = arch.state_dict(b).values()
        lam = torch.exp(torch.rand(8, generator=gen).double() * 3 - 1.5)
        perm = torch.randperm(8, generator=gen)
        w1, b1, w2 = (w1 * lam[:, None])[perm], (b1 * lam)[perm], (w2 / lam)[:, perm]
        copies.append(torch.cat([w1.reshape(-1), b1, w2.reshape(-1), b2]))
    params = torch.stack(bases + copies).float().numpy()
    st = Store.open(tmp_path / "t.zarr", create=True)
    common = {
        "population": "pop",
        "kind": "import",
        "method": "import",
        "dataset": "digits",
        "task": "classification",
        "data": st.put_dataset(digits),
        "data_sha256": digits.sha256,
        "config_sha256": "0" * 64,
    }
    rows = [{"model_id": f"pop.{k}", "seed": k, **common} for k in range(6)]
    st.commit_block("params/pop/a", params, "float32", arch, rows)
    canonicalize(st)
    canonicalize(st, symmetries=["perm"])
    return tmp_path / "t.zarr", arch, params


def test_modes_and_excess_are_per_transform(twice_store):
    path, arch, params = twice_store
    rep, _ = compute(Store.open(path), where="kind == 'import'", ensemble=True)
    modes = rep["modes"]
    # before the fix: after = {'canonical': {'n_rows': 12, 'n_modes': 9}} and an excess
    # of 87 % (mean of 12 rows) for a true 174 %: the perm-only rows have excess 0
    assert modes["before"] == {"n_rows": 6, "n_modes": 6}
    default, perm_only = sorted(modes["after"])  # ids <source>.canon, <source>.canon-<hash>
    assert default == "canon" and perm_only.startswith("canon-")
    assert modes["after"][default] == {"n_rows": 6, "n_modes": 3}  # a copy is its base
    assert modes["after"][perm_only] == {"n_rows": 6, "n_modes": 6}  # rescaled copies differ
    before = sum(
        (params[:, t.offset : t.offset + t.size].astype(np.float64) ** 2).sum(1)
        for t in arch.layout
        if len(t.shape) == 2
    )
    after = np.array([min_l2_mass(arch, r) for r in params])
    excess = 100 * (before - after) / after
    assert modes["l2_mass_excess_pct"]["n"] == 6
    assert modes["l2_mass_excess_pct"]["mean"] == pytest.approx(excess.mean(), rel=1e-4)
    assert modes["l2_mass_excess_pct"]["max"] == pytest.approx(excess.max(), rel=1e-4)
    cmp = compute(Store.open(path), compare_exprs=("seed < 3", "seed >= 3"))[0]["compare"]
    assert set(cmp["mmd"]["after"]) == set(modes["after"])


# --- E: the BMA curve over several member orders -----------------------------------------


def test_bma_curve_is_the_mean_over_member_orders():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(11, 30))  # 11 members, 30 points, 4 classes
    y = rng.integers(0, 4, size=30)
    curve = bma_curve(torch.from_numpy(p), torch.from_numpy(y), seed=7, orderings=16)
    rng = np.random.default_rng(7)  # the documented orders: successive permutations
    orders = [rng.permutation(11) for _ in range(16)]
    assert [c["members"] for c in curve] == curve_sizes(11) == [1, 2, 4, 8, 11]
    for c in curve:
        per = [np_metrics(p[o[: c["members"]]].mean(0), y) for o in orders]
        for k in ("acc", "nll", "ece", "brier"):
            vals = np.array([m[k] for m in per])
            assert c[k] == pytest.approx(vals.mean(), rel=1e-9, abs=1e-12), (c["members"], k)
            assert c[f"{k}_std"] == pytest.approx(vals.std(), rel=1e-6, abs=1e-12)
    full = np_metrics(p.mean(0), y)
    for k in full:  # every order ends with the full ensemble
        assert curve[-1][k] == pytest.approx(full[k], rel=1e-12)
        assert curve[-1][f"{k}_std"] == pytest.approx(0, abs=1e-12)


def test_report_curve_averages_orders_and_plots_a_band(twice_store, digits):
    path, arch, params = twice_store
    rep, _ = compute(Store.open(path), where="kind == 'import'", ensemble=True, seed=3)
    x = torch.from_numpy(digits.x_test)
    p = torch.softmax(nn_outputs(arch, torch.from_numpy(params), x), -1).double().numpy()
    rng = np.random.default_rng(3)
    orders = [rng.permutation(6) for _ in range(CURVE_ORDERINGS)]
    for c in rep["ensemble"]["curve"]:
        want = np.mean(
            [np_metrics(p[o[: c["members"]]].mean(0), digits.y_test)["nll"] for o in orders]
        )
        assert c["nll"] == pytest.approx(want, rel=1e-5)
    from bnnctl.stats.plots import bma_curve as plot_curve

    fig = plot_curve(rep["ensemble"]["curve"])
    assert all(len(ax.collections) == 1 for ax in fig.axes)  # the ± std band
