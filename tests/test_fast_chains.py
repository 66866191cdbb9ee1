"""SGLD/SGHMC over many chains at once (issue 11, "Faster chains"): each chain's draws
(minibatch, then noise) come from its own generator, split over threads; they have the
right distribution, and chain k is the same bit for bit alone, among 64 chains, on one
thread or several, and across a save and resume. SGLD still samples a known Gaussian
posterior (the helpers and bounds of tests/test_samplers.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_samplers import assert_gaussian_match, linreg, run_chains

from bnnctl.arch import ArchSpec
from bnnctl.data import validate
from bnnctl.samplers import SamplerConfig, build, sgmcmc
from bnnctl.samplers.base import load_state, save_state
from bnnctl.samplers.posterior import LogPosterior, minibatch, randn


@pytest.fixture
def threads():
    """Run with ``n`` torch threads (so that the draws are split over threads)."""
    before = torch.get_num_threads()

    def use(n: int) -> None:
        torch.set_num_threads(n)

    yield use
    torch.set_num_threads(before)


def gens(m: int, first: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(500 + k) for k in range(first, first + m)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_is_standard_normal_and_scaled(dtype, threads):
    threads(2)
    _, z = sgmcmc.draw(gens(64), 4001, dtype)
    assert z.dtype == dtype and z.shape == (64, 4001)
    x = z.double().numpy().ravel()
    n = x.size
    assert abs(x.mean()) < 4 / math.sqrt(n)
    assert abs(x.var() - 1) < 4 * math.sqrt(2 / n)
    assert stats.kstest(x[::13], "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(x)) < 4 * math.sqrt(24 / n)
    # rows are independent: chain to chain, and within a row from one entry to the next
    assert abs(np.corrcoef(z[:-1].double().ravel(), z[1:].double().ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01
    _, z3 = sgmcmc.draw(gens(64), 4001, dtype, scale=0.3)
    torch.testing.assert_close(z3, 0.3 * z)


def test_draws_are_the_chains_own_streams(threads):
    """The minibatch then the noise, as the one-generator-per-chain helpers draw them,
    on any number of threads."""
    g = gens(64)
    idx0, z0 = minibatch(g, 1437, 128), randn(g, 2999, torch.float32)
    for n in (1, 2, 3):
        threads(n)
        idx, z = sgmcmc.draw(gens(64), 2999, torch.float32, 1.0, 1437, 128)
        assert idx is not None
        assert torch.equal(idx, idx0) and torch.equal(z, z0)
    counts = np.bincount(idx0.numpy().ravel(), minlength=1437)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_a_chain_alone_equals_the_chain_among_64_bit_for_bit(threads):
    """Draws, and whole SGLD/SGHMC trajectories of a small MLP (minibatches of 32), on 2
    threads: chain k alone is chain k stacked with 63 others."""
    threads(2)
    for k in (0, 21, 63):
        idx, z = sgmcmc.draw(gens(64), 999, torch.float32, 0.1, 300, 32)
        idx_k, z_k = sgmcmc.draw(gens(1, k), 999, torch.float32, 0.1, 300, 32)
        assert idx is not None and idx_k is not None
        assert torch.equal(idx[k], idx_k[0]) and torch.equal(z[k], z_k[0])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 8)), rng.integers(0, 3, 300)
    ds = validate("t", {"x_train": x, "y_train": y, "x_test": x, "y_test": y})
    arch = ArchSpec((8, 16, 3))
    post = LogPosterior.of(arch, ds, prior_var=1.0, temperature=0.8)
    start = torch.randn(64, arch.n_params, generator=torch.Generator().manual_seed(1)) * 0.3
    for method in ("sgld", "sghmc"):
        sampler = build(SamplerConfig(method, step_size=1e-4, burn_in=0, batch_size=32), post)
        together = sampler.init(start, gens(64))
        for _ in range(10):
            together = sampler.update(together)
        for k in (0, 21, 63):
            alone = sampler.init(start[k : k + 1], gens(1, k))
            for _ in range(10):
                alone = sampler.update(alone)
            assert torch.equal(alone.params[0], together.params[k]), (method, k)


@pytest.mark.parametrize("method", ["sgld", "sghmc"])
def test_resume_on_threads_is_bit_identical(method, threads):
    """A state saved after 4 updates and restored continues exactly as the run that was
    never stopped (64 chains, draws on 2 threads)."""
    threads(2)
    post, mean, _, _ = linreg(n=40)
    sampler = build(SamplerConfig(method, step_size=1e-4, burn_in=0, batch_size=10), post)
    start = torch.from_numpy(mean) + 0.1 * torch.randn(
        64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    whole = sampler.init(start, gens(64))
    for _ in range(8):
        whole = sampler.update(whole)
    part = sampler.init(start, gens(64))
    for _ in range(4):
        part = sampler.update(part)
    part = load_state(sampler.state_type, *save_state(part))
    for _ in range(4):
        part = sampler.update(part)
    assert torch.equal(part.params, whole.params) and part.step == whole.step == 8
    assert torch.equal(part.momenta, whole.momenta)


def test_sgld_on_threads_samples_the_gaussian_posterior(threads):
    """Bayesian linear regression's closed-form posterior, within the bound of
    test_samplers.py (O(step) bias: whitened mean 0.15, second moment 0.25)."""
    threads(2)
    post, mean, cov, _ = linreg(noise=1.0, rho=0.3)
    cfg = SamplerConfig("sgld", step_size=3e-4, burn_in=300, batch_size=20)
    x, state = run_chains(post, cfg, m=64, samples=300)
    assert not state.diverged.any()
    assert_gaussian_match(x, mean, cov, mean_bias=0.15, cov_bias=0.25, max_se=0.1)


@pytest.mark.parametrize("method", ["sgld", "sghmc"])
def test_default_mlp_chain_is_the_same_alone_among_64_and_on_any_threads(method, threads):
    """On the default MLP's shapes (64-128-128-10, minibatches of 128) torch splits one
    chain's matrix products over threads when it has several; every op of a chain runs on
    one thread, so chain k alone (on one thread or two) is chain k among 64 on two."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 64)), rng.integers(0, 10, 400)
    ds = validate("t", {"x_train": x, "y_train": y, "x_test": x, "y_test": y})
    arch = ArchSpec((64, 128, 128, 10))
    post = LogPosterior.of(arch, ds, prior_var=0.2)
    sampler = build(SamplerConfig(method, step_size=1e-5, burn_in=0, batch_size=128), post)
    start = torch.randn(64, arch.n_params, generator=torch.Generator().manual_seed(4)) * 0.1

    def run(first: int, m: int):
        state = sampler.init(start[first : first + m], gens(m, first))
        for _ in range(3):
            state = sampler.update(state)
        return state

    threads(2)
    together = run(0, 64)
    for n in (2, 1):
        threads(n)
        for k in (0, 37):
            alone = run(k, 1)
            assert torch.equal(alone.params[0], together.params[k]), (n, k)
            assert torch.equal(alone.energy[0], together.energy[k]), (n, k)
