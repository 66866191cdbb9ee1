"""Last-layer KFAC Laplace (``laplace_ll``) against independent truths.

- Bayesian linear regression with a centred design: the last layer is the whole model,
  KFAC is exact, and both the posterior and the evidence are closed-form.
- laplace-torch itself on one plain ``nn.Sequential`` (when it is installed): the same
  Kronecker factors, marginal-likelihood prior precision and posterior covariance.
- Digits MLPs trained briefly (not MAPs of the sampled posterior): last-layer KFAC draws
  keep the checkpoints' test accuracy where the diagonal Laplace collapses.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from importlib.metadata import PackageNotFoundError

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from typer.testing import CliRunner

import bnnctl.cli  # noqa: F401  (registers the commands)
from bnnctl import Store
from bnnctl.arch import ArchSpec, modules
from bnnctl.cli.common import app
from bnnctl.data import validate
from bnnctl.samplers import SamplerConfig, build
from bnnctl.samplers.base import load_state, save_state
from bnnctl.samplers.laplace_ll import kron_factors, marglik_prior_precision
from bnnctl.samplers.posterior import LogPosterior

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def gens(m):
    return [torch.Generator().manual_seed(500 + k) for k in range(m)]


def draws(post, start, m, samples, fisher="ggn"):
    """``[samples, M, P]`` draws of M chains from one start, and the fitted state."""
    sampler = build(SamplerConfig("laplace_ll", fisher=fisher), post)
    state = sampler.init(start[None].repeat(m, 1), gens(m))
    return torch.stack([sampler.draw(state) for _ in range(samples)]).numpy(), state


def assert_gaussian(x, mean, cov, k=5.0):
    """Independent draws ``x [..., K]`` against N(mean, cov): whitened by the true
    covariance they are N(0, I), so each entry of their mean and second moment is within
    ``k`` of its exact standard error (1/√n; √(2/n) on the diagonal, √(1/n) off it) of 0
    and I. (k = 5 over a few hundred entries: a false alarm once in ~10⁴ seeds.)"""
    z = (x.reshape(-1, len(mean)) - mean) @ np.linalg.inv(np.linalg.cholesky(cov)).T
    n, dim = z.shape
    second = z.T @ z / n
    assert (np.abs(z.mean(0)) < k / math.sqrt(n)).all(), z.mean(0)
    se = np.sqrt((1 + np.eye(dim)) / n)
    assert (np.abs(second - np.eye(dim)) < k * se).all(), np.abs(second - np.eye(dim)).max()


# --- closed form: Bayesian linear regression ---------------------------------------------


def test_exact_on_centred_linear_regression():
    """mlp:3-2 with a Gaussian likelihood, X's columns orthogonal to 1: the posterior is
    N(μ, Λ⁻¹) per output with Λ = blockdiag(XᵀX, n)/σ² + δ I, so KFAC (G = n I/σ²,
    A = XᵀX/n) and the block-diagonal bias are exact. The evidence
    Σ_c log N(y_c | 0, σ² I + X̃X̃ᵀ/δ) is maximised by δ_E; at μ(δ_E) the Laplace evidence is
    stationary at the same δ (MacKay), so the sampler must find δ_E and draw N(μ, Λ⁻¹)."""
    n, noise = 60, 0.7
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(np.c_[np.ones(n), rng.normal(size=(n, 3))])
    x = q[:, 1:] * np.array([3.0, 1.0, 0.5]) * math.sqrt(n)
    y = x @ rng.normal(size=(3, 2)) + [0.5, -1.0] + noise * rng.normal(size=(n, 2))
    ds = validate("linreg", {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": y[:5]})
    xt = np.c_[ds.x_train.astype(np.float64), np.ones(n)]  # the data as stored (float32)
    yy = ds.y_train.astype(np.float64)

    def neg_evidence(log_delta):
        cov = noise**2 * np.eye(n) + xt @ xt.T / math.exp(log_delta)
        _, logdet = np.linalg.slogdet(cov)
        return 0.5 * sum(logdet + yc @ np.linalg.solve(cov, yc) for yc in yy.T)

    delta = math.exp(
        minimize_scalar(
            neg_evidence, bounds=(-15, 15), method="bounded", options={"xatol": 1e-10}
        ).x
    )
    lam = xt.T @ xt / noise**2 + delta * np.eye(4)
    cov = np.linalg.inv(lam)
    mu = cov @ xt.T @ yy / noise**2  # [4, 2]: rows w_1..w_3, b; columns outputs
    theta = np.r_[mu[:3].T.reshape(-1), mu[3]]  # bnnctl layout: W [2, 3] row-major, then b
    full = np.zeros((8, 8))  # covariance in that layout: outputs independent, same Λ⁻¹
    for c in range(2):
        idx = [3 * c, 3 * c + 1, 3 * c + 2, 6 + c]
        full[np.ix_(idx, idx)] = cov
    post = LogPosterior.of(ArchSpec((3, 2)), ds, noise_std=noise, dtype=F64)
    x_s, state = draws(post, torch.from_numpy(theta), m=4, samples=1000)
    np.testing.assert_allclose(1 / state.prior_var.numpy(), delta, rtol=1e-5)
    assert_gaussian(x_s, theta, full)


def test_marglik_root_is_the_evidence_maximum():
    """The bisection lands on the argmax of −½(Σ log(e + δ) − K log δ + δ|θ|²) found by a
    generic optimiser, chain by chain (and stays in its bracket for degenerate chains)."""
    rng = np.random.default_rng(1)
    e = rng.gamma(0.5, 50.0, size=(3, 40)) * (rng.random((3, 40)) < 0.8)
    sq = np.array([2.0, 30.0, 0.01])
    got = marglik_prior_precision(torch.from_numpy(e), torch.from_numpy(sq)).numpy()
    for k in range(3):

        def neg(ld, k=k):
            d = math.exp(ld)
            return 0.5 * (np.log(e[k] + d).sum() - e.shape[1] * ld + d * sq[k])

        best = math.exp(
            minimize_scalar(neg, bounds=(-20, 20), method="bounded", options={"xatol": 1e-12}).x
        )
        np.testing.assert_allclose(got[k], best, rtol=1e-6)
    flat = marglik_prior_precision(torch.zeros(1, 5, dtype=F64), torch.ones(1, dtype=F64))
    assert 0 < flat.item() <= 1e-11  # no curvature: the evidence rises as δ → 0


# --- laplace-torch as the reference --------------------------------------------------------


@pytest.fixture(scope="module")
def laplace_torch():
    """laplace-torch, imported with torchvision hidden. laplace-torch requires torchvision,
    whose PyPI wheels link CUDA torch: beside the CPU torch build they fail to load, and
    torchmetrics (imported by laplace) imports torchvision whenever its distribution is
    installed. Nothing laplace-torch computes here needs torchvision."""
    if importlib.util.find_spec("laplace") is None:
        pytest.skip("laplace-torch is not installed (pip install laplace-torch)")
    if "laplace" in sys.modules:
        return sys.modules["laplace"]
    import lightning_utilities.core.imports as lu_imports

    real = lu_imports._version

    def version(name: str) -> str:
        if name == "torchvision":
            raise PackageNotFoundError(name)
        return real(name)

    hide = "torchvision" not in sys.modules
    if hide:
        sys.modules["torchvision"] = None  # type: ignore[assignment]
    lu_imports._version = version
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import laplace
    finally:
        lu_imports._version = real
        if hide and sys.modules.get("torchvision", 0) is None:
            del sys.modules["torchvision"]
    return laplace


@pytest.mark.parametrize("fisher", ["ggn", "ef"])
def test_matches_laplace_torch(laplace_torch, fisher):
    """A tanh MLP 3-5-4 at a random (non-MAP) point on 50 points: the Kronecker factors,
    the marglik prior precision and the posterior covariance of laplace-torch's
    ``Laplace(subset_of_weights="last_layer", hessian_structure="kron")`` on the same
    ``nn.Sequential``; the sampler's draws have that covariance."""
    from laplace.curvature import CurvlinopsEF, CurvlinopsGGN
    from torch.utils.data import DataLoader, TensorDataset

    arch = ArchSpec((3, 5, 4), "tanh")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 4, 50)
    post = LogPosterior.of(
        arch, validate("t", {"x_train": x, "y_train": y, "x_test": x, "y_test": y}), dtype=F64
    )
    theta = torch.randn(arch.n_params, dtype=F64, generator=torch.Generator().manual_seed(3))
    net = modules.build(arch).double()
    net.load_state_dict(arch.state_dict(theta))
    la = laplace_torch.Laplace(
        net.eval(),
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="kron",
        backend=CurvlinopsGGN if fisher == "ggn" else CurvlinopsEF,
    )
    la.fit(DataLoader(TensorDataset(post.x, post.y.long()), batch_size=50))
    (lib_g, lib_a), (lib_gb,) = la.H_facs.kfacs
    g, a = kron_factors(post, theta[None], fisher)
    torch.testing.assert_close(g[0], lib_g)
    torch.testing.assert_close(a[0], lib_a)
    torch.testing.assert_close(g[0], lib_gb)

    x_s, state = draws(post, theta, m=4, samples=2000, fisher=fisher)
    delta = 1 / state.prior_var[0].item()

    def neg(ld):
        prec = torch.tensor([math.exp(ld)], dtype=F64)
        return -la.log_marginal_likelihood(prior_precision=prec).item()

    best = math.exp(
        minimize_scalar(neg, bounds=(-15, 15), method="bounded", options={"xatol": 1e-10}).x
    )
    np.testing.assert_allclose(delta, best, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notice about link_approx
        la.optimize_prior_precision(method="marglik")  # 100 Adam steps on log δ
    np.testing.assert_allclose(delta, la.prior_precision.item(), rtol=0.03)

    la.prior_precision = torch.tensor([delta], dtype=F64)
    lib_cov = la.posterior_precision.to_matrix(exponent=-1).numpy()
    k = 5 * 4 + 4
    assert np.allclose(state.params[:, :-k], theta[:-k])  # the body is fixed
    assert (x_s[:, :, :-k] == theta[:-k].numpy()).all()
    np.testing.assert_allclose(
        build(SamplerConfig("laplace_ll"), post).summary(state)["std"][0, -k:].square(),
        np.diag(lib_cov),
        rtol=1e-8,
    )
    assert_gaussian(x_s[:, :, -k:], theta[-k:].numpy(), lib_cov)


def test_state_survives_save_and_load():
    """The engine saves the fitted state between segments; draws continue identically."""
    arch = ArchSpec((3, 4, 2), "relu")
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    post = LogPosterior.of(
        arch, validate("b", {"x_train": x, "y_train": y, "x_test": x, "y_test": y}), dtype=F64
    )
    sampler = build(SamplerConfig("laplace_ll", temperature=0.5), post)
    state = sampler.init(torch.randn(3, arch.n_params, dtype=F64), gens(3))
    restored = load_state(sampler.state_type, *save_state(state))
    for _ in range(3):
        assert torch.equal(sampler.draw(state), sampler.draw(restored))
    assert torch.equal(restored.prior_var, state.prior_var) and not state.diverged.any()


# --- digits nets: accuracy of the draws ------------------------------------------------------


def run(*args):
    return CliRunner().invoke(app, ["sample", *map(str, args)])


def test_digits_last_layer_kron_keeps_accuracy(store_copy, laplace_torch):
    """8 digits MLPs after 5 epochs of Adam (~90 % test accuracy, not MAPs), 10 draws
    each, default settings: the diagonal GGN Laplace (prior var 1) collapses, last-layer
    KFAC with the marglik prior stays within a few points of the checkpoints. The rows'
    ``prior_var`` is each chain's fitted 1/δ: laplace-torch's evidence maximum."""
    for method in ("laplace", "laplace_ll"):
        res = run(
            *("--method", method, "--from", "kind == 'train'", "--samples", 10),
            *("--store", store_copy, "--quiet"),
        )
        assert res.exit_code == 0, res.output
    store = Store.open(store_copy)
    df = store.manifest()
    map_acc = df.loc[df["kind"] == "train", "test_acc"].mean()
    acc = {m: df.loc[df["method"] == m, "test_acc"].mean() for m in ("laplace", "laplace_ll")}
    print(
        f"\ntest accuracy: MAP {map_acc:.3f}, diagonal {acc['laplace']:.3f}, "
        f"last-layer KFAC {acc['laplace_ll']:.3f}"
    )
    assert acc["laplace_ll"] > map_acc - 0.04
    assert acc["laplace"] < map_acc - 0.3
    # rows are whole parameter vectors: the body is the parent checkpoint's, bit for bit
    rows = df[df["method"] == "laplace_ll"]
    assert len(rows) == 80 and len(df[df["method"] == "laplace_ll-std"]) == 8
    one = rows[rows["chain"] == 0]
    parent = df[df["model_id"] == one["parent_id"].iloc[0]]
    body = ArchSpec((64, 32, 32, 10)).n_params - 32 * 10 - 10
    drawn, start = store.read_params(one), store.read_params(parent)[0]
    assert (drawn[:, :body] == start[:body]).all() and (drawn[:, body:] != start[body:]).all()

    fitted = df[df["method"].str.startswith("laplace_ll")].groupby("chain")["prior_var"]
    assert (fitted.nunique() == 1).all() and fitted.first().nunique() == 8  # one per model
    from torch.utils.data import DataLoader, TensorDataset

    arch = ArchSpec((64, 32, 32, 10))
    net = modules.build(arch)
    net.load_state_dict(arch.state_dict(torch.from_numpy(start)))
    data = store.load_data(parent["data"].iloc[0])
    x, y = torch.from_numpy(data.x_train).float(), torch.from_numpy(data.y_train).long()
    la = laplace_torch.Laplace(
        net.eval(), "classification", subset_of_weights="last_layer", hessian_structure="kron"
    )
    la.fit(DataLoader(TensorDataset(x, y), batch_size=len(x)))

    def neg(ld):
        prec = torch.tensor([math.exp(ld)])
        return -la.log_marginal_likelihood(prior_precision=prec).item()

    best = minimize_scalar(neg, bounds=(-15, 15), method="bounded", options={"xatol": 1e-8}).x
    np.testing.assert_allclose(fitted.first()[0], math.exp(-best), rtol=1e-3)
