"""Temperature: every method targets the tempered posterior (p(D | θ) p(θ))^{1/T}.

For Bayesian linear regression with posterior N(μ, Λ⁻¹) the tempered posterior is
N(μ, T Λ⁻¹): the mean does not move with T, the precision is Λ / T. The prior weighs
much here (N = 20, σ_p² = 0.05), so tempering the likelihood alone, p(D | θ)^{1/T} p(θ),
would move the mean by several posterior sds at T = 0.25.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.data import validate
from bnnctl.engines.sample import sample
from bnnctl.samplers import SamplerConfig, build
from bnnctl.samplers.posterior import LogPosterior

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def linreg(n=20, prior_var=0.05, noise=0.5, seed=0):
    """Data, and the T = 1 posterior's mean and precision Λ = X̃ᵀX̃/σ² + I/σ_p²."""
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], n)
    y = x @ [1.0, -0.5] + 0.3 + noise * rng.normal(size=n)
    ds = validate(
        "linreg", {"x_train": x, "y_train": y[:, None], "x_test": x[:5], "y_test": y[:5, None]}
    )
    xt = np.c_[ds.x_train.astype(np.float64), np.ones(n)]
    lam = xt.T @ xt / noise**2 + np.eye(3) / prior_var
    mean = np.linalg.solve(lam, xt.T @ ds.y_train[:, 0].astype(np.float64) / noise**2)
    return ds, mean, lam


def gens(m):
    return [torch.Generator().manual_seed(1000 + k) for k in range(m)]


@pytest.mark.parametrize("temperature", [0.25, 1.0, 4.0])
def test_mfvi_fits_the_tempered_posterior(temperature):
    """Mean-field q of N(μ, T Λ⁻¹): mean μ, variances T / Λ_ii.

    Adam at a constant rate (3e-2) reaches the optimum within ~100 of the 1000 steps and
    then jitters around it; each of 16 chains averages its last 500 iterates. The spread
    of those averages over the chains puts their Monte Carlo error below 0.025 q-sds for
    the mean and 3 % for the variances (asserted, so the test keeps its power); the
    tolerances, 0.1 q-sds and 10 %, leave ≥ 4 of those errors. Tempering the likelihood
    alone misses by 1–5 q-sds (mean) and 20–50 % (variances) at T = 0.25 and 4.
    """
    ds, mean, lam = linreg()
    post = LogPosterior.of(ArchSpec((2, 1)), ds, 0.05, temperature, 0.5, F64)
    sampler = build(SamplerConfig("mfvi", step_size=3e-2, burn_in=1000, init_std=0.1), post)
    m, steps, tail = 16, 1000, 500
    state = sampler.init(torch.zeros(m, 3, dtype=F64), gens(m))
    mus, variances = [], []
    for i in range(steps):
        state = sampler.update(state)
        if i >= steps - tail:
            mus.append(state.params.numpy())
            variances.append(state.std.square().numpy())
    mu, var = np.mean(mus, 0), np.mean(variances, 0)  # per chain, [M, P]
    var_q = temperature / np.diag(lam)
    mu_err = (mu.mean(0) - mean) / np.sqrt(var_q)
    var_err = var.mean(0) / var_q - 1
    assert (mu.std(0, ddof=1) / np.sqrt(var_q) / math.sqrt(m)).max() < 0.025
    assert (var.std(0, ddof=1) / var_q / math.sqrt(m)).max() < 0.03
    assert np.abs(mu_err).max() < 0.1, mu_err
    assert np.abs(var_err).max() < 0.1, var_err


def test_swag_covariance_scales_with_temperature():
    """The same SGD run at every T; the draws' variances scale by T (SWAG at T = 0.25
    used to come out ~5x wider than at T = 1)."""
    ds, mean, _ = linreg(n=100, prior_var=1.0)
    post = LogPosterior.of(ArchSpec((2, 1)), ds, 1.0, 1.0, 0.5, F64)
    cfg = SamplerConfig("swag", step_size=0.02, burn_in=100, thin=5, rank=10, batch_size=20)
    start = torch.from_numpy(mean)[None].repeat(4, 1) + 0.3
    fits = {}
    for t in (0.25, 1.0):
        sampler = build(cfg, dataclasses.replace(post, temperature=t))
        state = sampler.init(start, gens(4))
        for _ in range(sampler.fit_steps):
            state = sampler.update(state)
        draws = torch.stack([sampler.draw(state) for _ in range(200)])
        fits[t] = state, draws.var(0), sampler.summary(state)["std"]
    (cold, cold_var, cold_std), (warm, warm_var, warm_std) = fits[0.25], fits[1.0]
    assert torch.equal(cold.mean, warm.mean) and torch.equal(cold.dev, warm.dev)
    torch.testing.assert_close(cold_var / warm_var, torch.full_like(warm_var, 0.25))
    torch.testing.assert_close(cold_std, 0.5 * warm_std)


def test_mc_dropout_rows_record_no_temperature_or_prior(tmp_path):
    """MC dropout's draws depend on neither, so its rows leave them null."""
    ds, _, _ = linreg(n=40)
    st = tmp_path / "d.zarr"
    train(
        Store.open(st, create=True),
        ds,
        TrainConfig(epochs=1),
        seeds=range(2),
        arch=ArchSpec((2, 8, 1), dropout=0.5),
    )
    cfg = SamplerConfig("mc_dropout", temperature=0.25, prior_var=0.5)
    rows = sample(st, cfg, samples=2, start="kind == 'train'").rows
    assert len(rows) == 4
    assert rows["temperature"].isna().all() and rows["prior_var"].isna().all()
    assert Store.open(st).verify() == []
