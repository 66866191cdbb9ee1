"""Samplers against known posteriors and independent references.

Bayesian linear regression (mlp:D-1, Gaussian likelihood) has the closed-form posterior
N(μ, Λ⁻¹), Λ = X̃ᵀX̃/σ² + I/σ_p², μ = Λ⁻¹X̃ᵀy/σ² (X̃ = [X, 1]); a 2-D Bayesian logistic
regression is checked against grid quadrature; gradients and curvatures against torch
autograd. All in float64, small, with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnnctl.arch import ArchSpec
from bnnctl.data import validate
from bnnctl.samplers import METHODS, SamplerConfig, build
from bnnctl.samplers.base import load_state, save_state
from bnnctl.samplers.laplace import diag_curvature
from bnnctl.samplers.mc_dropout import apply_masks, masks
from bnnctl.samplers.posterior import LogPosterior, prior_var_from_weight_decay
from bnnctl.samplers.registry import REGISTRY

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# --- fixtures: problems with known answers -------------------------------------------


def linreg(n=100, rho=0.8, noise=0.5, prior_var=1.0, seed=0, orthogonal=False):
    """Data, posterior mean, covariance and precision of Bayesian linear regression."""
    rng = np.random.default_rng(seed)
    if orthogonal:  # columns orthogonal to each other and to 1: X̃ᵀX̃ = n I
        q, _ = np.linalg.qr(np.c_[np.ones(n), rng.normal(size=(n, 2))])
        x = q[:, 1:] * math.sqrt(n)
    else:
        x = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], n)
    y = x @ [1.0, -0.5] + 0.3 + noise * rng.normal(size=n)
    ds = validate(
        "linreg", {"x_train": x, "y_train": y[:, None], "x_test": x[:10], "y_test": y[:10, None]}
    )
    xt = np.c_[ds.x_train.astype(np.float64), np.ones(n)]
    lam = xt.T @ xt / noise**2 + np.eye(3) / prior_var
    cov = np.linalg.inv(lam)
    mean = cov @ xt.T @ ds.y_train[:, 0].astype(np.float64) / noise**2
    post = LogPosterior.of(ArchSpec((2, 1)), ds, prior_var, 1.0, noise, F64)
    return post, mean, cov, lam


def gens(m, offset=0):
    return [torch.Generator().manual_seed(1000 + offset + k) for k in range(m)]


def prior_starts(m, p, scale=1.0):
    g = torch.Generator().manual_seed(7)
    return torch.randn(m, p, generator=g, dtype=F64) * scale


def run_chains(post, cfg, m, samples, start=None):
    """Kept samples ``[samples, M, P]`` (MCMC after burn-in; approximations: draws)."""
    sampler = build(cfg, post)
    p = post.arch.n_params
    state = sampler.init(prior_starts(m, p) if start is None else start, gens(m))
    if sampler.approximate:
        for _ in range(sampler.fit_steps):
            state = sampler.update(state)
        return torch.stack([sampler.draw(state) for _ in range(samples)]).numpy(), state
    for _ in range(cfg.burn_in):
        state = sampler.update(state)
    kept = []
    for _ in range(samples):
        for _ in range(cfg.thin):
            state = sampler.update(state)
        kept.append(state.params)
    return torch.stack(kept).numpy(), state


def assert_gaussian_match(x, mean, cov, k=4.5, mean_bias=0.0, cov_bias=0.0, max_se=0.08):
    """Samples ``x [S, M, P]`` of M independent chains against N(mean, cov).

    Whitened by the true covariance, the target is N(0, I). The Monte Carlo error of each
    statistic (mean, second moment) is estimated from its spread over the independent
    chains; each must lie within ``k`` standard errors of the truth, plus an allowed
    bias (0 for exact samplers; the stated bound for biased ones). ``max_se`` makes sure
    the run is long enough for the test to have power.
    """
    w = np.linalg.inv(np.linalg.cholesky(cov))
    z = (x - mean) @ w.T
    per_chain_mean = z.mean(0)
    per_chain_second = np.einsum("smi,smj->mij", z, z) / z.shape[0]
    m = x.shape[1]
    for stat, truth, bias in (
        (per_chain_mean, 0.0, mean_bias),
        (per_chain_second, np.eye(len(mean)), cov_bias),
    ):
        est, se = stat.mean(0), stat.std(0, ddof=1) / math.sqrt(m)
        assert se.max() < max_se, f"Monte Carlo error {se.max():.3f} too large for a useful test"
        assert (np.abs(est - truth) < k * se + bias).all(), (est, se)


# --- the log posterior ----------------------------------------------------------------


def torch_reference(arch, flat, x, y, regression, noise=1.0):
    """Summed NLL of one model with torch.nn modules and autograd."""
    layers = []
    for i, (w, b) in enumerate(arch.unflatten(flat[None])):
        lin = torch.nn.Linear(w.shape[2], w.shape[1], dtype=F64)
        lin.weight.data, lin.bias.data = w[0].clone(), b[0].clone()
        layers += [lin] + ([torch.nn.Tanh()] if i < arch.n_layers - 1 else [])
    net = torch.nn.Sequential(*layers)
    out = net(x)
    if regression:
        nll = (0.5 * ((out - y) / noise) ** 2 + math.log(noise) + 0.5 * math.log(2 * math.pi)).sum()
    else:
        nll = torch.nn.functional.cross_entropy(out, y, reduction="sum")
    nll.backward()
    return nll.item(), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize("regression, pieces", [(False, False), (True, False), (False, True)])
def test_energy_and_grad_match_autograd(regression, pieces, monkeypatch):
    """Against torch.nn + autograd; ``pieces``: data in chunks of 7 points and chains in
    groups (the paths large datasets take) give the same result."""
    if pieces:
        monkeypatch.setattr("bnnctl.samplers.posterior.CHUNK", 7)
        monkeypatch.setattr("bnnctl.samplers.posterior.CHAIN_POINTS", 50)
    arch = ArchSpec((3, 5, 4, 2 if regression else 3), "tanh")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = rng.normal(size=(40, 2)) if regression else rng.integers(0, 3, 40)
    ds = validate("t", {"x_train": x, "y_train": y, "x_test": x, "y_test": y})
    post = LogPosterior.of(arch, ds, prior_var=0.5, temperature=0.7, noise_std=0.3, dtype=F64)
    params = torch.randn(3, arch.n_params, dtype=F64, generator=torch.Generator().manual_seed(0))
    energy, grad = post.energy_and_grad(params)
    torch.testing.assert_close(post.log_posterior(params), -energy)
    for m in range(3):
        nll, g = torch_reference(
            arch,
            params[m],
            torch.from_numpy(ds.x_train).double(),
            torch.from_numpy(ds.y_train).double() if regression else torch.from_numpy(ds.y_train),
            regression,
            0.3,
        )
        expect_e = (nll + 0.5 * params[m].square().sum().item() / 0.5) / 0.7
        expect_g = (g + params[m] / 0.5) / 0.7
        assert energy[m].item() == pytest.approx(expect_e, rel=1e-10)
        torch.testing.assert_close(grad[m], expect_g)
    # a minibatch estimate is the (N/B)-scaled sum over the batch
    idx = torch.tensor([[0, 5, 7, 9]] * 3)
    e_mb, _ = post.energy_and_grad(params, idx, prior=False)
    nll_b = post.likelihood.nll_and_grad(
        arch.forward(params, post.x[idx]), post.y[idx].to(F64) if regression else post.y[idx]
    )[0]
    torch.testing.assert_close(e_mb, nll_b * 10.0)


def test_weight_decay_is_a_prior():
    """torch weight decay λ on the mean loss = prior precision N·λ on the summed loss:
    the gradient of U/N equals the gradient of mean-NLL + (λ/2)|θ|² (autograd)."""
    post, _, _, _ = linreg(n=50)
    wd = 0.01
    prior_var = prior_var_from_weight_decay(wd, post.n)
    post = LogPosterior(post.arch, post.likelihood, post.x, post.y, prior_var)
    theta = torch.tensor([[0.2, -0.1, 0.4]], dtype=F64, requires_grad=True)
    out = post.arch.forward(theta, post.x.double())
    loss = (
        (out - post.y.double()) ** 2
    ).mean() * 0.5 / post.likelihood.noise_std**2 + 0.5 * wd * theta.square().sum()
    (g,) = torch.autograd.grad(loss, theta)
    _, grad = post.energy_and_grad(theta.detach())
    torch.testing.assert_close(grad / post.n, g)


# --- linear regression: closed form ------------------------------------------------------


def test_hmc_matches_closed_form_linear_regression():
    post, mean, cov, _ = linreg(noise=1.0, rho=0.5)
    cfg = SamplerConfig("hmc", step_size=0.01, burn_in=100, leapfrog=10)
    x, state = run_chains(post, cfg, m=32, samples=150)
    assert 0.6 < float(state.accept_rate.mean()) < 0.99
    assert int(state.divergences.sum()) == 0
    assert_gaussian_match(x, mean, cov)


def test_metropolis_step_is_what_makes_hmc_exact():
    """A fixed, too-large step: with the accept/reject HMC is still exact, without it the
    leapfrog's energy error inflates the variance (so this test fails if Metropolis is
    skipped)."""
    post, mean, cov, lam = linreg(noise=1.0, rho=0.3)
    eps = 1.6 / math.sqrt(np.linalg.eigvalsh(lam).max())  # stable but inaccurate
    cfg = SamplerConfig("hmc", step_size=eps, burn_in=30, leapfrog=5, adapt=False)
    x, state = run_chains(post, cfg, m=32, samples=150)
    assert float(state.accept_rate.mean()) < 0.9
    assert_gaussian_match(x, mean, cov)
    biased, _ = run_chains(
        post,
        SamplerConfig("hmc", step_size=eps, burn_in=30, leapfrog=5, adapt=False, metropolis=False),
        m=32,
        samples=150,
    )
    ratio = np.diag(np.cov(biased.reshape(-1, 3).T)) / np.diag(cov)
    assert ratio.max() > 1.5, ratio


@pytest.mark.parametrize("method, step, friction", [("sgld", 3e-4, 0.05), ("sghmc", 3e-5, 0.1)])
def test_sgmcmc_matches_closed_form_within_looser_bound(method, step, friction):
    """Minibatch SG-MCMC has O(step) bias. Stated bound: whitened mean within 0.15 (posterior
    sds) and whitened second moment within 0.25 of the identity, beyond Monte Carlo error."""
    post, mean, cov, _ = linreg(noise=1.0, rho=0.3)
    cfg = SamplerConfig(method, step_size=step, burn_in=300, batch_size=20, friction=friction)
    x, _ = run_chains(post, cfg, m=64, samples=300)
    assert_gaussian_match(x, mean, cov, mean_bias=0.15, cov_bias=0.25, max_se=0.1)


def test_mfvi_matches_mean_and_underestimates_variances():
    """Mean-field q of a Gaussian posterior: mean μ, variances 1/Λ_ii < (Λ⁻¹)_ii."""
    post, mean, cov, lam = linreg()
    cfg = SamplerConfig("mfvi", step_size=3e-2, burn_in=1000, init_std=0.1)
    x, state = run_chains(post, cfg, m=32, samples=50)
    mu = state.params.numpy().mean(0)  # (Adam with a constant rate leaves some jitter)
    assert np.abs(mu - mean).max() < 0.25 * np.sqrt(np.diag(cov)).min()
    var_q = state.std.square().numpy().mean(0)
    np.testing.assert_allclose(var_q, 1 / np.diag(lam), rtol=0.12)
    assert (var_q[:2] < 0.6 * np.diag(cov)[:2]).all()  # correlated weights: underestimated
    assert (np.diag(np.cov(x.reshape(-1, 3).T))[:2] < 0.6 * np.diag(cov)[:2]).all()


def test_laplace_is_exact_on_linear_regression():
    """At the mode, the diagonal GGN precision is Λ_ii exactly; with an orthogonal design
    Λ is diagonal and the Laplace draws match the posterior."""
    post, mean, cov, lam = linreg()
    sampler = build(SamplerConfig("laplace"), post)
    state = sampler.init(torch.from_numpy(mean)[None], gens(1))
    np.testing.assert_allclose(state.std.square().numpy()[0], 1 / np.diag(lam), rtol=1e-10)
    post, mean, cov, lam = linreg(orthogonal=True)
    assert np.abs(lam - np.diag(np.diag(lam))).max() < 1e-4  # (up to float32 data rounding)
    x, _ = run_chains(
        post,
        SamplerConfig("laplace"),
        m=4,
        samples=1000,
        start=torch.from_numpy(mean)[None].repeat(4, 1),
    )
    assert_gaussian_match(x, mean, cov)


def test_empirical_fisher_diagonal():
    """EF = Σ_n g_n², g_n = r_n x̃_n / σ² with residual r_n (closed form)."""
    post, mean, _, _ = linreg(noise=0.5)
    theta = torch.from_numpy(mean + 0.1)[None]
    ef = diag_curvature(post, theta, "ef").numpy()[0]
    xt = np.c_[post.x.numpy(), np.ones(post.n)]
    r = xt @ theta.numpy()[0] - post.y.numpy()[:, 0]
    np.testing.assert_allclose(ef, ((r[:, None] * xt / 0.25) ** 2).sum(0), rtol=1e-10)


@pytest.mark.parametrize("classes", [3, 2])
def test_ggn_diagonal_matches_autograd_jacobians(classes):
    """Diagonal GGN of a small MLP vs Σ_n J_nᵀ H_n J_n from torch.func Jacobians."""
    out = 1 if classes == 2 else classes
    arch = ArchSpec((3, 4, out), "tanh")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(15, 3)), rng.integers(0, classes, 15)
    post = LogPosterior.of(
        arch, validate("t", {"x_train": x, "y_train": y, "x_test": x, "y_test": y}), dtype=F64
    )
    theta = torch.randn(arch.n_params, dtype=F64, generator=torch.Generator().manual_seed(3))
    jac = torch.func.jacrev(lambda t: arch.forward(t[None], post.x)[0])(theta)  # [N, out, P]
    f = arch.forward(theta[None], post.x)[0]
    if out == 1:
        p = torch.sigmoid(f)
        h = (p * (1 - p))[:, :, None]
    else:
        p = torch.softmax(f, -1)
        h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    expect = torch.einsum("nkp,nkl,nlp->p", jac, h, jac)
    torch.testing.assert_close(diag_curvature(post, theta[None])[0], expect)


# --- logistic regression vs quadrature -------------------------------------------------


def test_hmc_matches_quadrature_on_logistic_regression():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 2))
    y = (rng.random(30) < 1 / (1 + np.exp(-(x @ [1.5, -1.0] + 0.5)))).astype(np.int64)
    ds = validate("logit", {"x_train": x, "y_train": y, "x_test": x, "y_test": y})
    post = LogPosterior.of(ArchSpec((2, 1)), ds, prior_var=1.0, dtype=F64)
    # reference: the posterior on a 3-D grid (midpoint rule), independent of the sampler
    xt, yy = np.c_[ds.x_train.astype(np.float64), np.ones(30)], ds.y_train
    axes = [np.linspace(-4, 5, 61)] * 3
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    z = grid @ xt.T
    logp = (yy * z - np.logaddexp(0, z)).sum(1) - 0.5 * (grid**2).sum(1)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = w @ grid
    cov = (grid - mean).T @ ((grid - mean) * w[:, None])
    assert w.reshape(61, 61, 61)[[0, -1]].sum() < 1e-6  # the grid covers the mass
    cfg = SamplerConfig("hmc", step_size=0.1, burn_in=100, leapfrog=8)
    x_s, state = run_chains(post, cfg, m=32, samples=150)
    assert_gaussian_match(x_s, mean, cov)


# --- SWAG and MC dropout -------------------------------------------------------------------


def test_swag_centres_on_the_sgd_average():
    """SGD iterates around the mode of a Gaussian posterior: SWAG's mean is the mode
    (= posterior mean) and its draws use K deviation columns."""
    post, mean, cov, _ = linreg(noise=1.0, rho=0.3)
    cfg = SamplerConfig("swag", step_size=0.02, burn_in=200, thin=5, rank=10, batch_size=20)
    x, state = run_chains(
        post, cfg, m=8, samples=20, start=torch.from_numpy(mean)[None].repeat(8, 1) + 0.3
    )
    assert state.collected == 10
    assert np.abs(state.mean.numpy().mean(0) - mean).max() < 0.5 * np.sqrt(np.diag(cov)).min()
    assert x.shape == (20, 8, 3) and np.isfinite(x).all()
    assert (state.diag_var > 0).all()


def test_mc_dropout_draw_is_the_masked_network():
    arch = ArchSpec((3, 6, 5, 2), "relu", dropout=0.5)
    theta = torch.randn(2, arch.n_params, dtype=F64, generator=torch.Generator().manual_seed(0))
    ms = masks(arch, gens(2), F64)
    x = torch.randn(7, 3, dtype=F64)
    expect = arch.forward(theta, x, dropout_masks=[m[:, None, :].expand(2, 7, -1) for m in ms])
    torch.testing.assert_close(arch.forward(apply_masks(arch, theta, ms), x), expect)
    assert all(set(m.unique().tolist()) <= {0.0, 2.0} for m in ms)


# --- the face: batching, resuming ------------------------------------------------------------


#: Methods that take update steps (Laplace and MC dropout have a step size of 0: no steps).
STEPPING = [m for m, mod in REGISTRY.items() if mod.DEFAULTS[m]["step_size"] > 0]


def test_registry_holds_every_method_with_the_same_face():
    assert tuple(REGISTRY) == METHODS
    for method, module in REGISTRY.items():
        assert callable(module.build) and set(module.DEFAULTS[method]) == {"step_size", "burn_in"}
        cfg = SamplerConfig(method)
        assert (cfg.step_size, cfg.burn_in) == tuple(module.DEFAULTS[method].values())


@pytest.mark.parametrize("method", STEPPING)
def test_chains_together_equal_chains_alone_and_resume(method):
    """M chains at once give each chain's own trajectory; a state saved and restored
    mid-run continues exactly as the uninterrupted run."""
    post, mean, _, _ = linreg(n=40)
    cfg = SamplerConfig(
        method,
        step_size={"hmc": 0.02, "mfvi": 1e-2, "swag": 0.02}.get(method, 1e-4),
        burn_in=3,
        batch_size=10,
        leapfrog=3,
        rank=2,
    )
    sampler = build(cfg, post)
    start = prior_starts(3, 3, 0.1) + torch.from_numpy(mean)
    together = sampler.init(start, gens(3))
    for _ in range(6):
        together = sampler.update(together)
    for k in range(3):
        alone = sampler.init(start[k : k + 1], [torch.Generator().manual_seed(1000 + k)])
        for _ in range(6):
            alone = sampler.update(alone)
        torch.testing.assert_close(alone.params[0], together.params[k])
    state = sampler.init(start, gens(3))
    for _ in range(3):
        state = sampler.update(state)
    restored = load_state(sampler.state_type, *save_state(state))
    for _ in range(3):
        restored = sampler.update(restored)
    assert torch.equal(restored.params, together.params)
