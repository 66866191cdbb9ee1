"""Training conv nets (ConvSpec): the batched trainer against plain nn.Module +
torch.optim training of each seed, bit-identical seeds whatever the block, the
forward's input forms, the step schedule with milestones, and the CLI end to end on a
tiny MNIST-format folder."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnnctl import TrainConfig
from bnnctl.arch import ConvSpec
from bnnctl.cli import app
from bnnctl.data import Dataset
from bnnctl.engines import population as popmod
from bnnctl.engines.train import Population, block_memory, train_models
from bnnctl.errors import UsageError
from bnnctl.testing.images import idx_folder, synthetic_images
from bnnctl.testing.reference import train_reference

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL = ConvSpec.parse("cnn:1x8x8/c4k3-r-m2-c8k3g2-r-gap-l10")
OPTUNET = ConvSpec.parse("optunet")
#: OptuNet's recipe (SGD 0.04, wd 2e-4, x0.5 at epochs 15 and 30), shortened.
OPTUNET_LIKE = TrainConfig(
    optimizer="sgd",
    lr=0.04,
    weight_decay=2e-4,
    epochs=3,
    batch_size=64,
    schedule="step",
    lr_milestones=(1, 2),
    lr_gamma=0.5,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> Dataset:
    return synthetic_images()


# Float32 rounding only: the trainer's loss gradient is the hand-written softmax of
# ``Categorical.nll_and_grad`` (F.cross_entropy's kernel rounds differently), its convs are
# grouped (other summation orders) and MultiStepLR multiplies the rate step by step where
# ``lr_at`` takes a power; a few dozen steps amplify 1e-7 differences to ~1e-6.
TOL = 2e-5


@pytest.mark.parametrize(
    "arch_name, cfg",
    [
        ("small", OPTUNET_LIKE),
        (
            "small",
            TrainConfig(optimizer="adam", lr=3e-3, epochs=2, batch_size=100, weight_decay=1e-3),
        ),
        ("optunet", OPTUNET_LIKE),
        ("optunet", TrainConfig(optimizer="adam", lr=1e-2, epochs=2, batch_size=50)),
    ],
    ids=["small-sgd-milestones", "small-adam-wd", "optunet-recipe", "optunet-adam"],
)
def test_each_conv_model_matches_plain_module_training(digits, images, arch_name, cfg):
    arch, ds = (SMALL, digits) if arch_name == "small" else (OPTUNET, images)
    pop = Population("p", arch, cfg, ds)
    seeds = [0, 5, 9]
    params, loss = train_models(pop, seeds)
    assert params.shape == (3, arch.n_params) and np.isfinite(loss).all()
    for i, seed in enumerate(seeds):
        ref = train_reference(pop, seed)
        assert (params[i] - ref).abs().max().item() < TOL


@pytest.mark.parametrize("arch", [SMALL, OPTUNET], ids=["small", "optunet"])
def test_same_seed_same_weights_whatever_the_block(digits, images, arch):
    """Bit-identical: blocks of 4, of 3 + 1 and of 1 (a lone model trains as two copies,
    see ``train_conv_models``)."""
    ds = digits if arch is SMALL else images
    pop = Population("p", arch, TrainConfig(epochs=2, batch_size=64), ds)
    together, loss4 = train_models(pop, [3, 4, 5, 6])
    alone = torch.cat([train_models(pop, [s])[0] for s in [3, 4, 5, 6]])
    split = torch.cat([train_models(pop, [3, 4, 5])[0], train_models(pop, [6])[0]])
    assert torch.equal(together, alone) and torch.equal(together, split)
    assert loss4.shape == (4,)


def test_forward_input_forms_agree_with_modules():
    g = torch.Generator().manual_seed(1)
    for arch in (SMALL, OPTUNET):
        m, b = 3, 5
        params = torch.stack([arch.init(g) for _ in range(m)])
        nets = []
        for k in range(m):
            net = arch.module().eval()
            net.load_state_dict(arch.state_dict(params[k]))
            nets.append(net)
        shared = torch.rand(b, *arch.input, generator=g)
        own = torch.rand(m, b, *arch.input, generator=g)
        want_shared = torch.stack([net(shared) for net in nets])
        want_own = torch.stack([net(own[k]) for k, net in enumerate(nets)])
        with torch.no_grad():
            for x, want in [
                (shared, want_shared),
                (shared.reshape(b, -1), want_shared),
                (own, want_own),
                (own.reshape(m, b, -1), want_own),
            ]:
                assert torch.allclose(arch.forward(params, x), want, atol=1e-5), x.shape
                assert torch.allclose(arch.forward_vmap(params, x), want, atol=1e-5), x.shape
        with pytest.raises(UsageError, match="takes"):
            arch.forward(params, torch.rand(b, arch.n_inputs + 1))


def test_minibatch_maps_give_each_model_its_own_images():
    """The trainer's pixel-major gather feeds each model exactly the images x[idx[k]]: the
    outputs equal each plain module's on its own minibatch, and equal bit for bit
    ``forward`` on the gathered ``[M, B, n_inputs]``."""
    g = torch.Generator().manual_seed(2)
    m, b, n = 4, 6, 30
    params = torch.stack([OPTUNET.init(g) for _ in range(m)])
    data = torch.rand(n, OPTUNET.n_inputs, generator=g)
    idx = torch.randint(0, n, (m, b), generator=g)
    maps = OPTUNET.minibatch_maps(data.t().contiguous(), idx)
    with torch.no_grad():
        got = OPTUNET.forward(params, maps, maps=True)
        assert torch.equal(got, OPTUNET.forward(params, data[idx]))
        for k in range(m):
            net = OPTUNET.module().eval()
            net.load_state_dict(OPTUNET.state_dict(params[k]))
            want = net(data[idx[k]].view(b, *OPTUNET.input))
            assert torch.allclose(got[k], want, atol=1e-5)
    with pytest.raises(ValueError, match="maps=True takes"):
        OPTUNET.forward(params, data[idx], maps=True)
    with pytest.raises(ValueError, match="one-channel"):
        rgb = ConvSpec.parse("cnn:3x8x8/c4k3-r-gap-l10")
        rgb.minibatch_maps(torch.rand(rgb.n_inputs, n), idx)


def test_block_memory_counts_conv_feature_maps(images):
    pop = Population("p", OPTUNET, TrainConfig(batch_size=64), images)
    one, many = block_memory(pop, 1), block_memory(pop, 256)
    # at least the feature maps of one minibatch per model (float32)
    maps = sum(OPTUNET.feature_sizes()[1:]) * 64 * 4
    assert maps <= one < many and many >= 256 * maps
    assert OPTUNET.feature_sizes()[:3] == [784, 2 * 25 * 25, 2 * 25 * 25]


# --- the step schedule with milestones, and config hashes ---------------------------


def test_milestones_follow_multisteplr():
    cfg = TrainConfig(
        optimizer="sgd",
        lr=0.04,
        epochs=60,
        schedule="step",
        lr_milestones=(15, 30),
        lr_gamma=0.5,
    )
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.04)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [15, 30], 0.5)
    for epoch in range(60):
        assert cfg.lr_at(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert cfg.lr_at(14) == 0.04 and cfg.lr_at(15) == 0.02 and cfg.lr_at(59) == 0.01


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"lr_milestones": (30, 15)}, "increasing"),
        ({"lr_milestones": (15, 15)}, "increasing"),
        ({"lr_milestones": (0,)}, "increasing"),
        ({"lr_milestones": (60,)}, "increasing"),
        ({"lr_milestones": [15]}, "tuple"),
        ({"lr_gamma": 0.0}, "lr_gamma"),
        ({"lr_gamma": 1.5}, "lr_gamma"),
        ({"lr_milestones": (15,), "schedule": "cosine"}, "step schedule"),
        ({"lr_gamma": 0.5, "schedule": "constant"}, "step schedule"),
    ],
)
def test_milestones_are_validated(kw, match):
    base = {"optimizer": "sgd", "epochs": 60, "schedule": "step"}
    with pytest.raises(UsageError, match=match):
        TrainConfig(**{**base, **kw})


def test_config_hash_unchanged_unless_milestones_are_set(digits):
    """Populations trained before milestones existed keep their config_sha256: their
    description is the eight fields there were."""
    from bnnctl.arch import ArchSpec

    arch = ArchSpec((64, 16, 10))
    old_fields = ["optimizer", "lr", "momentum", "nesterov", "weight_decay", "epochs"]
    old_fields += ["batch_size", "schedule"]
    for cfg in (TrainConfig(), TrainConfig(optimizer="sgd", schedule="step", epochs=8)):
        pop = Population("p", arch, cfg, digits)
        old = {k: v for k, v in asdict(cfg).items() if k in old_fields}
        want = popmod.digest(
            {"arch": arch.to_json(), "config": old, "data": digits.sha256, "dtype": "float32"}
        )
        assert pop.sha256 == want
        assert set(cfg.columns()) == set(old_fields) and cfg.columns()["schedule"] == cfg.schedule
    stepped = TrainConfig(optimizer="sgd", schedule="step", epochs=8, lr_milestones=(2, 5))
    assert Population("p", arch, stepped, digits).sha256 != pop.sha256
    assert stepped.columns()["schedule"] == "step@2,5x0.1"
    gamma = TrainConfig(optimizer="sgd", schedule="step", epochs=8, lr_gamma=0.5)
    assert gamma.columns()["schedule"] == "step@50%,75%x0.5"
    assert len({Population("p", arch, c, digits).sha256 for c in (stepped, gamma)}) == 2


# --- the CLI end to end ---------------------------------------------------------------


def test_cli_trains_optunet_on_an_idx_folder_and_verifies(tmp_path):
    data = idx_folder(tmp_path / "mnist", 192, 64, seed=3)
    s = str(tmp_path / "s.zarr")
    args = ["train", "--arch", "optunet", "--data", str(data), "--seeds", "3"]
    args += ["--optimizer", "sgd", "--lr", "0.04", "--weight-decay", "2e-4", "--epochs", "3"]
    args += ["--batch-size", "64", "--lr-milestones", "1,2", "--lr-gamma", "0.5"]
    args += ["--block-size", "2", "--store", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "trained 3 models" in r.output and "test accuracy median" in r.output
    r = runner.invoke(app, ["ls", "--store", s, "--format", "json", "--columns", "all"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["seed"] for row in rows] == [0, 1, 2]
    assert {row["arch_name"] for row in rows} == {"optunet"}
    assert {row["schedule"] for row in rows} == {"step@1,2x0.5"}
    assert all(0 <= row["test_acc"] <= 1 and row["n_params"] == 355 for row in rows)
    r = runner.invoke(app, ["verify", "--store", s])
    assert r.exit_code == 0 and "ok: 3 checkpoints" in r.output, r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "3 already in the store" in r.output, r.output


def test_cli_optunet_on_digits_is_a_one_line_usage_error(tmp_path):
    r = runner.invoke(app, ["train", "--arch", "optunet", "--store", str(tmp_path / "s.zarr")])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "optunet" in lines[0] and "64" in lines[0], r.output


def test_cli_milestones_are_checked(tmp_path):
    s = str(tmp_path / "s.zarr")
    for extra, needle in (
        (["--lr-milestones", "15,x"], "--lr-milestones"),
        (["--lr-milestones", "15,30", "--epochs", "20"], "--lr-milestones"),
        (["--lr-milestones", "5", "--schedule", "cosine", "--epochs", "20"], "step schedule"),
        (["--lr-gamma", "2"], "--lr-gamma"),
    ):
        r = runner.invoke(app, ["train", "--arch", "mlp:64-8-10", "--store", s, *extra])
        assert r.exit_code == 2 and needle in r.output, (extra, r.output)


def test_bench_train_quick_conv():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--quick"]
        + ["--arch", "optunet", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["arch"] == "optunet"
    assert out["bnnctl_models_per_s"] > 0 and out["plain_models_per_s"] > 0 and out["ratio"] > 0
