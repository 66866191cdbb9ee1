"""bnnctl stats against independent truth: numpy formulas on hand-made probability arrays,
brute-force double loops with sklearn's kernels for MMD², a hand-computed ROC case,
constructed populations whose modes are known, and nn.Module evaluation of the stored
models for the re-evaluated BMA."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import laplacian_kernel, rbf_kernel
from typer.testing import CliRunner

from bnnctl import ArchSpec, Store, load_dataset
from bnnctl.arch import modules as models
from bnnctl.cli.common import app
from bnnctl.errors import DataError, UsageError
from bnnctl.stats.measures import (
    agreement_tv,
    bma,
    bma_curve,
    curve_sizes,
    entropy,
    pair_indices,
    pairwise_diversity,
)
from bnnctl.stats.mmd import mmd
from bnnctl.stats.ood import builtin_ood, detection_metrics, load_ood, ood_scores
from bnnctl.stats.report import JSON_SHAPE, compute
from bnnctl.symmetry.modes import count_modes

runner = CliRunner()


# --- numpy references ----------------------------------------------------------------------


def np_entropy(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p), 0.0)
    return -t.sum(-1)


def np_metrics(p, y, bins=15):
    """acc, nll, ece, brier of one predictive p [N, C], straight from the definitions."""
    n, c = p.shape
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(float)
    ece = 0.0
    for b in range(1, bins + 1):
        m = (conf > (b - 1) / bins) & (conf <= b / bins)
        ece += abs((conf[m] - correct[m]).sum()) / n
    onehot = np.eye(c)[y]
    return {
        "acc": correct.mean(),
        "nll": -np.log(p[np.arange(n), y]).mean(),
        "ece": ece,
        "brier": ((p - onehot) ** 2).sum(1).mean(),
    }


def hand_probs():
    """3 members, 4 points, 3 classes."""
    p = np.array(
        [
            [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]],
            [[0.6, 0.3, 0.1], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]],
            [[0.2, 0.2, 0.6], [0.05, 0.9, 0.05], [0.6, 0.0, 0.4], [0.34, 0.33, 0.33]],
        ]
    )
    return p, np.array([0, 1, 2, 1])


def test_entropy_matches_numpy_with_zero_log_zero():
    p, _ = hand_probs()
    np.testing.assert_allclose(entropy(torch.from_numpy(p)).numpy(), np_entropy(p), rtol=1e-12)


def test_bma_matches_numpy_formulas():
    p, y = hand_probs()
    got = bma(torch.from_numpy(p), torch.from_numpy(y))
    want = np_metrics(p.mean(0), y)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


def test_bma_curve_sizes_and_end_points():
    assert curve_sizes(1) == [1]
    assert curve_sizes(8) == [1, 2, 4, 8]
    assert curve_sizes(10) == [1, 2, 4, 8, 10]
    p, y = hand_probs()
    curve = bma_curve(torch.from_numpy(p), torch.from_numpy(y), seed=3)
    assert [c["members"] for c in curve] == [1, 2, 3]
    order = np.random.default_rng(3).permutation(3)  # documented member order
    for c in curve:
        want = np_metrics(p[order[: c["members"]]].mean(0), y)
        for k in want:
            assert c[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("m,pairs", [(2, 5), (7, 21), (7, 10), (50, 300), (1000, 1000)])
def test_pair_indices_are_distinct_valid_pairs(m, pairs):
    i, j = pair_indices(m, pairs, seed=1)
    total = m * (m - 1) // 2
    assert len(i) == min(pairs, total)
    assert ((i >= 0) & (i < j) & (j < m)).all()
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == len(i)
    if pairs >= total:
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == {
            (a, b) for a in range(m) for b in range(a + 1, m)
        }


def test_pairwise_mi_and_disagreement_match_double_loop():
    p, _ = hand_probs()
    i, j = pair_indices(3, 1000)
    mi, dis = pairwise_diversity(torch.from_numpy(p), i, j)
    for n, (a, b) in enumerate(zip(i, j, strict=True)):
        want_mi = np.mean(
            [
                np_entropy((p[a, x] + p[b, x]) / 2)
                - (np_entropy(p[a, x]) + np_entropy(p[b, x])) / 2
                for x in range(4)
            ]
        )
        want_dis = np.mean([p[a, x].argmax() != p[b, x].argmax() for x in range(4)])
        assert mi[n] == pytest.approx(want_mi, rel=1e-9)
        assert dis[n] == pytest.approx(want_dis)
    same = torch.from_numpy(np.stack([p[0], p[0]]))
    mi0, dis0 = pairwise_diversity(same, np.array([0]), np.array([1]))
    assert mi0[0] == pytest.approx(0, abs=1e-12) and dis0[0] == 0


def test_agreement_and_total_variation_by_hand():
    pa = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], dtype=torch.float64)
    pb = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]], dtype=torch.float64)
    agree, tv = agreement_tv(pa, pb)
    assert agree == pytest.approx(2 / 3)  # argmax ties resolve to the first class
    assert tv == pytest.approx(0.5 * (0.6 + 0.6 + 0.0) / 3)


def brute_mmd2(x, y, kern):
    m, n = len(x), len(y)
    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    sxx = sum(kxx[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(kyy[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(kxy[i, j] for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd_matches_brute_force_with_sklearn_kernels():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 4)), rng.normal(0.5, 1.2, size=(7, 4))
    out = mmd(x, y, multiples=(0.5, 1.0, 2.0))
    z = np.concatenate([x, y])
    med2, med1 = np.median(pdist(z)), np.median(pdist(z, "cityblock"))
    assert out["median_l2"] == pytest.approx(med2) and out["median_l1"] == pytest.approx(med1)
    for g, lap in zip(out["gaussian"], out["laplace"], strict=True):
        s2, s1 = g["multiple"] * med2, lap["multiple"] * med1
        want_g = brute_mmd2(x, y, lambda a, b, s2=s2: rbf_kernel(a, b, gamma=1 / (2 * s2 * s2)))
        want_l = brute_mmd2(x, y, lambda a, b, s1=s1: laplacian_kernel(a, b, gamma=1 / s1))
        assert g["mmd2"] == pytest.approx(want_g, rel=1e-9, abs=1e-12)
        assert lap["mmd2"] == pytest.approx(want_l, rel=1e-9, abs=1e-12)


def test_mmd_near_zero_for_same_distribution_positive_for_shifted():
    rng = np.random.default_rng(1)
    x, y, shifted = (
        rng.normal(size=(200, 5)),
        rng.normal(size=(200, 5)),
        rng.normal(1.0, 1, size=(200, 5)),
    )
    same, diff = mmd(x, y), mmd(x, shifted)
    for kern in ("gaussian", "laplace"):
        for s, d in zip(same[kern], diff[kern], strict=True):
            if s["multiple"] >= 0.5:
                assert abs(s["mmd2"]) < 0.02, (kern, s)
                assert d["mmd2"] > 5 * abs(s["mmd2"]) and d["mmd2"] > 0.02, (kern, d)
    with pytest.raises(UsageError, match="two models"):
        mmd(x[:1], y)


def test_mmd_subsamples_to_max_n():
    rng = np.random.default_rng(2)
    out = mmd(rng.normal(size=(50, 3)), rng.normal(size=(30, 3)), max_n=20)
    assert (out["n_a"], out["n_b"]) == (20, 20)


def test_count_modes_with_tolerance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20)) * 5
    x = np.concatenate([c + 1e-4 * rng.normal(size=(4, 20)) for c in centres])
    assert count_modes(x, rtol=0.01) == 3
    assert count_modes(x, rtol=1e-9) == 12
    assert count_modes(x, rtol=10.0) == 1


def test_detection_metrics_hand_case():
    got = detection_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.5, 4.0]))
    assert got["auroc"] == pytest.approx(5 / 6)  # 5 of 6 (in, out) pairs ranked right
    assert got["aupr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert got["fpr95"] == pytest.approx(1 / 3)  # catching both OOD points flags the 3


def test_ood_scores_match_numpy():
    p, _ = hand_probs()
    s = ood_scores(torch.from_numpy(p))
    pbar = p.mean(0)
    np.testing.assert_allclose(s["max_prob"], -pbar.max(1))
    np.testing.assert_allclose(s["entropy"], np_entropy(pbar))
    np.testing.assert_allclose(s["mutual_information"], np_entropy(pbar) - np_entropy(p).mean(0))
    assert (s["mutual_information"] >= -1e-12).all()


def test_builtin_ood_inverts_digits_and_pushes_out_moons(digits):
    x, desc = builtin_ood(digits)
    np.testing.assert_allclose(x, 1.0 - digits.x_test, atol=1e-7)
    assert "inverted" in desc
    moons = load_dataset("moons")
    x, desc = builtin_ood(moons)
    mu = moons.x_train.mean(0)
    np.testing.assert_allclose(x, mu + 3 * (moons.x_test - mu), rtol=1e-5, atol=1e-5)


def test_load_ood_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3), np.float32))
    with pytest.raises(DataError, match="3 features but the models take 64"):
        load_ood(tmp_path / "bad.npz", 64)
    np.savez(tmp_path / "nokey.npz", y=np.zeros(3))
    with pytest.raises(DataError, match="no array named x"):
        load_ood(tmp_path / "nokey.npz", 64)
    with pytest.raises(DataError, match="does not exist"):
        load_ood(tmp_path / "missing.npz", 64)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_ood(tmp_path / "junk.npz", 64)
    np.savez(tmp_path / "ok.npz", x_ood=np.ones((4, 8, 8)))
    assert load_ood(tmp_path / "ok.npz", 64).shape == (4, 64)


# --- on a real store -----------------------------------------------------------------------


def module_probs(store_path, digits):
    """Test-set probabilities of every stored model through torch.nn modules."""
    st = Store.open(store_path)
    man = st.manifest()
    params = st.read_params(man)
    arch = ArchSpec.from_json(man["arch"].iloc[0])
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        return np.stack(
            [torch.softmax(models.load(arch, r)(x), -1).double().numpy() for r in params]
        )


def test_ensemble_report_matches_module_evaluation(trained_store, digits):
    rep, ctx = compute(Store.open(trained_store), ensemble=True, pairs=5)
    p = module_probs(trained_store, digits)
    want = np_metrics(p.mean(0), digits.y_test)
    for k in want:
        assert rep["ensemble"]["bma"][k] == pytest.approx(want[k], abs=2e-5), k
    ev = rep["evaluation"]
    assert ev["n_members"] == 8 and ev["n_test"] == len(digits.y_test)
    assert (
        ev["max_abs_diff_vs_manifest"]["acc"] < 1e-6
        and ev["max_abs_diff_vs_manifest"]["nll"] < 1e-4
    )
    assert rep["ensemble"]["diversity"]["n_pairs"] == 5
    assert [c["members"] for c in rep["ensemble"]["curve"]] == [1, 2, 4, 8]
    assert set(rep) == set(JSON_SHAPE)  # the documented, stable shape
    assert set(ev) == {
        "arch",
        "dataset",
        "n_members",
        "n_test",
        "seconds",
        "models_per_s",
        "max_abs_diff_vs_manifest",
    }
    assert set(rep["ensemble"]) == {"bma", "curve", "diversity"} and set(
        rep["ensemble"]["bma"]
    ) == {"acc", "nll", "ece", "brier"}
    assert set(rep["ensemble"]["diversity"]) == {"n_pairs", "mutual_information", "disagreement"}


def test_ood_builtin_report(trained_store):
    rep, _ = compute(Store.open(trained_store), ood="builtin")
    assert set(rep["ood"]["scores"]) == {"max_prob", "entropy", "mutual_information"}
    for s in rep["ood"]["scores"].values():
        assert 0 <= s["auroc"] <= 1 and 0 <= s["aupr"] <= 1 and 0 <= s["fpr95"] <= 1


def permute_units(arch: ArchSpec, row: np.ndarray, perms: list[np.ndarray]) -> np.ndarray:
    """Apply one permutation per hidden layer (written here, independently of symmetry.py)."""
    out = row.copy()
    sl = arch.slices()
    for g, perm in zip(arch.unit_groups(), perms, strict=True):
        for name, axis in g.incoming + g.outgoing:
            a, b, shape = sl[name]
            out[a:b] = np.take(out[a:b].reshape(shape), perm, axis=axis).reshape(-1)
    return out


def sort_units(arch: ArchSpec, row: np.ndarray) -> np.ndarray:
    """A canonical form: each hidden layer's units sorted by their first incoming weight."""
    for k, g in enumerate(arch.unit_groups()):
        a, b, shape = arch.slices()[g.incoming[0][0]]
        perm = np.argsort(row[a:b].reshape(shape)[:, 0], kind="stable")
        perms = [np.arange(u.size) for u in arch.unit_groups()]
        perms[k] = perm
        row = permute_units(arch, row, perms)
    return row


@pytest.fixture
def modes_store(tmp_path, digits):
    """Population 'copies': seeds 0-3 are permuted copies of one random net, 4-7 of
    another; plus a canonical (sorted) row of each with l2 masses 1.3 : 1."""
    st = Store.open(tmp_path / "m.zarr", create=True)
    arch = ArchSpec((64, 8, 8, 10))
    data = st.put_dataset(digits)
    rng = np.random.default_rng(0)
    bases = [arch.init(torch.Generator().manual_seed(s)).numpy() for s in (1, 2)]
    raw = np.stack(
        [
            permute_units(arch, bases[k // 4], [rng.permutation(8), rng.permutation(8)])
            for k in range(8)
        ]
    )
    common = {
        "population": "copies",
        "dataset": "digits",
        "task": "classification",
        "data": data,
        "data_sha256": digits.sha256,
        "config_sha256": "0" * 64,
    }
    rows = [
        {"model_id": f"copies.{k}", "kind": "sample", "method": "copies", "seed": k, **common}
        for k in range(8)
    ]
    st.commit_block("params/copies/raw", raw, "float32", arch, rows)
    canon = np.stack([sort_units(arch, r) for r in raw])
    crow = [
        {
            "model_id": f"copies.{k}.sort",
            "kind": "canonical",
            "method": "sort",
            "parent_id": f"copies.{k}",
            "l2_mass_before": 13.0,
            "l2_mass_after": 10.0,
            **common,
        }
        for k in range(8)
    ]
    st.commit_block("params/copies/sort", canon, "float32", arch, crow)
    return tmp_path / "m.zarr"


def test_sort_units_is_function_preserving(digits):
    arch = ArchSpec((64, 8, 8, 10))
    row = arch.init(torch.Generator().manual_seed(3)).numpy()
    x = torch.from_numpy(digits.x_test[:20])
    torch.testing.assert_close(
        arch.forward(torch.from_numpy(sort_units(arch, row))[None], x),
        arch.forward(torch.from_numpy(row)[None], x),
    )


def test_modes_before_and_after_canonicalisation(modes_store):
    rep, _ = compute(Store.open(modes_store), where="kind == 'sample'", ensemble=True)
    modes = rep["modes"]
    assert modes["before"] == {"n_rows": 8, "n_modes": 8}
    assert modes["after"] == {"sort": {"n_rows": 8, "n_modes": 2}}
    assert modes["l2_mass_excess_pct"]["mean"] == pytest.approx(30.0)
    # canonical rows selected with their parents do not count twice in the ensemble
    rep_all, _ = compute(Store.open(modes_store), ensemble=True)
    assert rep_all["n_models"] == 16 and rep_all["evaluation"]["n_members"] == 8


def test_compare_identical_functions(modes_store):
    rep, _ = compute(Store.open(modes_store), compare_exprs=("seed in [0, 1]", "seed in [2, 3]"))
    c = rep["compare"]
    assert c["agreement"] == 1.0 and c["total_variation"] == pytest.approx(0, abs=1e-6)
    # permuted copies differ in raw weight space but coincide after sorting
    assert c["mmd"]["before"]["median_l2"] > 1
    for g in c["mmd"]["after"]["sort"]["gaussian"]:
        assert g["mmd2"] == pytest.approx(0, abs=1e-9)
    far = compute(Store.open(modes_store), compare_exprs=("seed < 4", "seed >= 4"))[0]["compare"]
    # reusing the ensemble's evaluation gives the same comparison
    pooled = compute(
        Store.open(modes_store), ensemble=True, compare_exprs=("seed < 4", "seed >= 4")
    )[0]
    assert (
        pooled["compare"]["mmd"] == far["mmd"]
        and pooled["compare"]["agreement"] == far["agreement"]
    )
    assert pooled["compare"]["total_variation"] == pytest.approx(far["total_variation"], abs=1e-6)
    # two point masses at distance D, σ = c·D (D is the pooled median): closed forms
    after = far["mmd"]["after"]["sort"]
    for g in after["gaussian"]:
        assert g["mmd2"] == pytest.approx(2 - 2 * math.exp(-1 / (2 * g["multiple"] ** 2)), rel=1e-6)
    for g in after["laplace"]:
        assert g["mmd2"] == pytest.approx(2 - 2 * math.exp(-1 / g["multiple"]), rel=1e-6)


# --- the command ------------------------------------------------------------------------


def test_cli_json_csv_table(trained_store):
    s = str(trained_store)
    r = runner.invoke(
        app, ["stats", "--store", s, "--ensemble", "--pairs", "3", "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["format"] == "bnnctl.stats/1" and rep["ensemble"]["diversity"]["n_pairs"] == 3
    r = runner.invoke(app, ["stats", "--store", s, "--format", "csv", "--where", "seed < 3"])
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and lines[0] == "section,key,value" and "n_models,,3" in lines
    r = runner.invoke(app, ["stats", "--store", s, "--ensemble", "--ood", "builtin"])
    assert r.exit_code == 0 and "BMA vs number of members" in r.stdout and "auroc" in r.stdout


def test_cli_bad_input(trained_store, tmp_path):
    s = str(trained_store)
    r = runner.invoke(app, ["stats", "--store", s, "--where", "seed > 100"])
    assert r.exit_code == 2 and "selects no rows" in r.stderr
    r = runner.invoke(app, ["stats", "--store", s, "--compare", "seed < 2", "seed > 100"])
    assert r.exit_code == 2 and "'seed > 100' selects no rows" in r.stderr
    np.savez(tmp_path / "ood.npz", x=np.zeros((4, 10), np.float32))
    r = runner.invoke(app, ["stats", "--store", s, "--ood", str(tmp_path / "ood.npz")])
    assert r.exit_code == 1 and "10 features but the models take 64" in r.stderr
    r = runner.invoke(app, ["stats", "--store", s, "--pairs", "0"])
    assert r.exit_code == 2 and "--pairs" in r.stderr


def test_cli_plots(modes_store, tmp_path, digits):
    # add 2-2-1 moons nets for the Fig. 1 view
    st = Store.open(modes_store)
    moons = load_dataset("moons")
    arch = ArchSpec((2, 2, 1))
    params = np.stack([arch.init(torch.Generator().manual_seed(s)).numpy() for s in range(6)])
    common = {
        "population": "moons221",
        "dataset": "moons",
        "task": "classification",
        "data": st.put_dataset(moons),
        "data_sha256": moons.sha256,
        "config_sha256": "1" * 64,
        "kind": "train",
        "method": "init",
    }
    st.commit_block(
        "params/moons221/a",
        params,
        "float32",
        arch,
        [{"model_id": f"m.{k}", "seed": k, **common} for k in range(6)],
    )
    out = tmp_path / "figs"  # the plotted group is the larger one: 8 'copies' nets
    r = runner.invoke(
        app, ["stats", "--store", str(modes_store), "--plot", str(out), "--format", "json"]
    )
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert {
        "weights_pca_tsne.png",
        "marginals.png",
        "largest_index.png",
        "bma_curve.png",
        "pairwise_mi.png",
        "excess_mass.png",
        "fig1_221.png",
    } <= names
    assert sorted(json.loads(r.stdout)["plots"]) == sorted(str(out / n) for n in names)
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_scale_sort_221_preserves_function_and_sorts(digits):
    from bnnctl.stats.plots import scale_sort_221

    arch = ArchSpec((2, 2, 1))
    params = np.stack(
        [arch.init(torch.Generator().manual_seed(s)).numpy() for s in range(20)]
    ).astype(np.float64)
    scaled, sorted_ = scale_sort_221(params)
    x = torch.randn(50, 2, dtype=torch.float64)
    f = [arch.forward(torch.from_numpy(p), x) for p in (params, scaled, sorted_)]
    torch.testing.assert_close(f[1], f[0])
    torch.testing.assert_close(f[2], f[0])
    assert (sorted_[:, 0] >= sorted_[:, 2]).all()  # key weight0: descending first incoming weight
    w, v = scaled[:, :4].reshape(-1, 2, 2), scaled[:, 6:8]
    np.testing.assert_allclose(
        np.sqrt((w**2).sum(-1)), np.abs(v), rtol=1e-7
    )  # balanced units (biases not counted)
    assert math.isfinite(float(np.abs(sorted_).sum()))


def test_summary_groups_per_population(trained_store):
    rep, _ = compute(Store.open(trained_store))
    g = rep["summary"]["groups"]
    man = Store.open(trained_store).manifest()
    assert len(g) == 1 and g[0]["n"] == 8
    assert g[0]["test_acc_mean"] == pytest.approx(man["test_acc"].mean())
    assert rep["summary"]["overall"]["test_nll"]["median"] == pytest.approx(
        man["test_nll"].median()
    )
    assert rep["evaluation"] is None and rep["ensemble"] is None
    assert isinstance(pd.DataFrame(g), pd.DataFrame)


def test_bench_stats_quick():
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_stats.py"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (
        out["models"] == 16
        and out["pairs"] == 50
        and out["eval_models_per_s"] > 0
        and out["loop_models_per_s"] > 0
    )
    assert out["mmd_n"] == [8, 8] and out["stats_total_s"] > 0


def test_regression_population(tmp_path):
    from bnnctl import TrainConfig, train
    from bnnctl.data import validate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.normal(size=(120, 1))).astype(np.float32)
    ds = validate("lin", {"x_train": x[:80], "y_train": y[:80], "x_test": x[80:], "y_test": y[80:]})
    st = Store.open(tmp_path / "r.zarr", create=True)
    train(st, ds, TrainConfig(epochs=2), seeds=range(4), arch=ArchSpec((3, 8, 1)))
    rep, ctx = compute(st, ensemble=True)
    assert rep["evaluation"]["max_abs_diff_vs_manifest"]["rmse"] < 1e-5
    mean = ctx.members.out.double().numpy().mean(0)
    assert rep["ensemble"]["bma"]["rmse"] == pytest.approx(
        float(np.sqrt(((mean - y[80:]) ** 2).mean())), rel=1e-5
    )
    with pytest.raises(UsageError, match="classification"):
        compute(st, ood="builtin")
