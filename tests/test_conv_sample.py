"""`bnnctl sample` and `bnnctl stats` on conv nets (ConvSpec): the energy and gradient
against a plain nn.Module with torch autograd, chains reproducible bit for bit alone and
among others, SGHMC/HMC populations committed and sound, `--from` conv checkpoints, the
methods that refuse conv nets, and the stats report on a conv population."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import bnnctl.cli  # noqa: F401  (registers the commands)
from bnnctl import Store, TrainConfig, train
from bnnctl.arch import ConvSpec, arch_from_json, parse_arch
from bnnctl.cli.common import app
from bnnctl.engines.sample import sample
from bnnctl.errors import UsageError
from bnnctl.samplers import SamplerConfig, build
from bnnctl.samplers.posterior import LogPosterior, chain_groups

TINY = "cnn:1x8x8/c4k3-r-m2-c8k3-r-gap-l10"  # 426 params, digits' 64 flat features
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def stacked(arch: ConvSpec, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([arch.init(g) for _ in range(m)])


def module_energy_and_grad(arch, row, x, y, n, prior_var, temperature):
    """U_T and ∇U_T of one model by torch autograd through ``arch.module()``."""
    net = arch.module().double()
    net.load_state_dict(arch.state_dict(row.double()))
    logits = net(x.double().view(len(x), *arch.input))
    nll = F.cross_entropy(logits, y, reduction="sum") * (n / len(x))
    theta = torch.cat([p.flatten() for p in net.parameters()])
    energy = (nll + theta.square().sum() / (2 * prior_var)) / temperature
    energy.backward()
    grad = torch.cat([p.grad.flatten() for p in net.parameters()])
    return energy.detach(), grad


@pytest.mark.parametrize("spec", [TINY, "cnn:1x8x8/c4k3p1nb-t-a2-c6k3g2-lr-f-l12-gelu-l10"])
def test_energy_and_grad_match_the_module_with_autograd(digits, spec):
    arch = parse_arch(spec)
    post = LogPosterior.of(arch, digits, prior_var=0.7, temperature=0.6, dtype=torch.float64)
    params = stacked(arch, 5).double() * 1.5
    idx = torch.randint(post.n, (5, 40), generator=torch.Generator().manual_seed(3))
    y = torch.from_numpy(digits.y_train).long()
    for batch in (idx, None):
        energy, grad = post.energy_and_grad(params, batch)
        assert energy.dtype == torch.float64 and grad.shape == params.shape
        for k in range(5):
            rows = slice(None) if batch is None else batch[k]
            e, g = module_energy_and_grad(arch, params[k], post.x[rows], y[rows], post.n, 0.7, 0.6)
            torch.testing.assert_close(energy[k], e, rtol=1e-10, atol=1e-8)
            torch.testing.assert_close(grad[k], g, rtol=1e-9, atol=1e-9)
    # the bare NLL (VI, curvature): no prior, no temperature
    nll, gnll = post.energy_and_grad(params, idx, prior=False)
    e, g = module_energy_and_grad(arch, params[0], post.x[idx[0]], y[idx[0]], post.n, 1e300, 1)
    torch.testing.assert_close(nll[0], e)
    torch.testing.assert_close(gnll[0], g)
    torch.testing.assert_close(
        post.log_likelihood(params), -post.energy_and_grad(params, prior=False)[0]
    )


def gens(m: int, first: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(900 + k) for k in range(first, first + m)]


@pytest.mark.parametrize(
    "method, alone_threads, together_threads",
    [
        ("sghmc", 1, 1),
        ("sgld", 1, 2),
        ("hmc", 1, 1),
        ("mfvi", 2, 1),
        ("swag", 1, 2),
        ("sghmc", 2, 1),
        ("hmc", 1, 2),
        ("hmc", 2, 2),
    ],
)
def test_a_conv_chain_alone_equals_the_chain_among_others_bit_for_bit(
    digits, method, alone_threads, together_threads
):
    """Chain k alone is chain k among 6, whatever the thread count of either run (the
    chains run stacked, in blocks on one thread each: :func:`.posterior.conv_outputs`).
    TINY's second conv has several input channels per group, whose stacked kernel splits
    its sums by thread when given two."""
    chain_alone_and_among_others(digits, method, alone_threads, together_threads)


def chain_alone_and_among_others(digits, method: str, alone_threads: int, together_threads: int):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(together_threads)
        together = run_chains(digits, method, range(6))
        torch.set_num_threads(alone_threads)
        for k in (0, 4):
            alone = run_chains(digits, method, range(k, k + 1))
            assert torch.equal(alone.params[0], together.params[k]), (method, k)
    finally:
        torch.set_num_threads(before)


def run_chains(digits, method: str, chains: range):
    """Three updates of ``chains`` (each started and seeded by its index)."""
    arch = parse_arch(TINY)
    post = LogPosterior.of(arch, digits, prior_var=1.0, temperature=0.5)
    start = stacked(arch, 6, 1)
    kw = {"step_size": 1e-4, "burn_in": 0, "batch_size": 32}
    if method == "hmc":
        kw = {"step_size": 2e-4, "burn_in": 0, "leapfrog": 3}
    sampler = build(SamplerConfig(method, **kw), post)
    state = sampler.init(start[chains.start : chains.stop], gens(len(chains), chains.start))
    for _ in range(3):
        state = sampler.update(state)
    return state


@given(st.integers(0, 40), st.integers(1, 40), st.integers(1, 70))
def test_chain_groups_cover_the_chains_in_groups_of_two_or_more(lo, n, size):
    groups = chain_groups(lo, lo + n, size)
    assert [i for g in groups for i in range(g.start, g.stop)] == list(range(lo, lo + n))
    assert all(g.stop - g.start >= 2 for g in groups) or n == 1
    assert all(g.stop - g.start <= max(2, size) + 1 for g in groups)


def test_sghmc_and_hmc_commit_sound_conv_rows(tmp_path, digits):
    arch = parse_arch(TINY)
    st = tmp_path / "s.zarr"
    for method, kw in (
        ("sghmc", {"step_size": 1e-5, "burn_in": 3, "batch_size": 64}),
        ("hmc", {"step_size": 1e-4, "burn_in": 2, "leapfrog": 3}),
    ):
        res = sample(
            str(st), SamplerConfig(method, **kw), samples=3, chains=2, dataset=digits, arch=arch
        )
        assert len(res.rows) == 6
    df = Store.open(st).manifest()
    assert len(df) == 12 and set(df["method"]) == {"sghmc", "hmc"}
    assert set(df["arch"]) == {arch.to_json()}
    assert arch_from_json(df["arch"].iloc[0]) == arch
    assert df["test_acc"].between(0, 1).all() and df["train_nll"].notna().all()
    assert Store.open(st).verify() == []
    # rerunning resumes nothing new, and the stats report runs on the population
    r = runner.invoke(app, ["stats", "--store", str(st), "--where", "method == 'hmc'"])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def conv_store(tmp_path_factory, digits):
    """Four conv checkpoints trained on digits (2 epochs)."""
    st = tmp_path_factory.mktemp("conv") / "c.zarr"
    train(
        Store.open(st, create=True),
        digits,
        TrainConfig(epochs=2),
        seeds=range(4),
        arch=parse_arch(TINY),
        population="convs",
    )
    return st


def test_sample_from_conv_checkpoints(conv_store, tmp_path):
    import shutil

    st = tmp_path / "c.zarr"
    shutil.copytree(conv_store, st)
    args = ["sample", "--store", str(st), "--from", "kind == 'train'", "--quiet"]
    res = runner.invoke(app, [*args, "--method", "sghmc", "--samples", "2", "--burn-in", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--method", "swag", "--samples", "2", "--burn-in", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--method", "laplace_ll", "--samples", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--method", "mfvi", "--samples", "2", "--burn-in", "3"])
    assert res.exit_code == 0, res.output
    df = Store.open(st).manifest().query("kind == 'sample'")
    trained = Store.open(st).manifest().query("kind == 'train'")
    assert {"sghmc", "swag", "laplace_ll", "mfvi"} <= set(df["method"])
    assert set(df["parent_id"].dropna()) <= set(trained["model_id"])
    assert set(df["arch"]) == set(trained["arch"])
    assert Store.open(st).verify() == []


def test_laplace_ll_factors_of_a_conv_net_match_the_module(digits):
    """A = Σ φφᵀ/N from the body's features (the module up to its last linear layer) and
    the outputs, for each chain; a conv net not ending in a linear layer with bias is
    refused."""
    from bnnctl.samplers.laplace_ll import kron_factors

    arch = parse_arch(TINY)
    post = LogPosterior.of(arch, digits, dtype=torch.float64)
    params = stacked(arch, 3).double()
    g, a = kron_factors(post, params)
    for k in range(3):
        net = arch.module().double()
        net.load_state_dict(arch.state_dict(params[k]))
        with torch.no_grad():
            phi = net[:-1](post.x.view(-1, *arch.input))
            p = torch.softmax(net[-1](phi), -1)
        torch.testing.assert_close(a[k], phi.T @ phi / post.n)
        torch.testing.assert_close(g[k], torch.diag(p.sum(0)) - p.T @ p)
    for spec in ("cnn:1x8x8/c4k3-r-gap-l10-r", "cnn:1x8x8/c4k3-r-gap-l10nb", "cnn:1x8x8/c10k8-f"):
        with pytest.raises(UsageError, match="ends in a linear layer"):
            build(SamplerConfig("laplace_ll"), LogPosterior.of(parse_arch(spec), digits))


@pytest.mark.parametrize("method", ["laplace"])
def test_mlp_only_methods_refuse_conv_nets(conv_store, tmp_path, method, digits):
    import shutil

    st = tmp_path / "c.zarr"
    shutil.copytree(conv_store, st)
    before = sorted(p.relative_to(st) for p in st.rglob("*"))
    res = runner.invoke(
        app, ["sample", "--store", str(st), "--from", "kind == 'train'", "--method", method]
    )
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and method in line and "conv nets" in line
    assert sorted(p.relative_to(st) for p in st.rglob("*")) == before
    with pytest.raises(UsageError, match="conv nets"):
        build(SamplerConfig(method), LogPosterior.of(parse_arch(TINY), digits))


def test_stats_ensemble_and_plots_on_a_conv_population(conv_store, tmp_path):
    out = tmp_path / "figs"
    args = ["stats", "--store", str(conv_store), "--ensemble", "--ood", "builtin"]
    r = runner.invoke(app, [*args, "--plot", str(out), "--format", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert {"ensemble", "ood", "plots"} <= set(rep), sorted(rep)
    assert rep["ensemble"]["diversity"]["n_pairs"] >= 1
    assert all(p.endswith(".png") for p in rep["plots"]) and len(rep["plots"]) >= 3
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in rep["plots"])
    assert max(rep["evaluation"]["max_abs_diff_vs_manifest"].values()) < 1e-4
    r = runner.invoke(app, [*args])
    assert r.exit_code == 0 and "BMA vs number of members" in r.stdout and "auroc" in r.stdout
    r = runner.invoke(
        app,
        [
            "stats",
            "--store",
            str(conv_store),
            "--compare",
            "seed < 2",
            "seed >= 2",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "mmd" in json.dumps(json.loads(r.stdout)).lower()
