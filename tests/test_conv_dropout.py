"""Dropout in conv nets (training with per-model element-wise masks, MC dropout draws
folded into weights) and the early-stop rule (``stop_below_acc`` after
``stop_after_epoch``), each against independent truth: a plain ``nn.Module`` in train
mode fed the same masks and trained with ``torch.optim`` (``train_reference``), the
module evaluated with a draw's mask, and runs without the rule or with fewer epochs."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.arch import ConvSpec
from bnnctl.cli import app
from bnnctl.data import validate
from bnnctl.engines.train import (
    Population,
    accuracy_alone,
    make_population,
    train_models,
    train_models_epochs,
)
from bnnctl.errors import UsageError
from bnnctl.samplers import SamplerConfig
from bnnctl.samplers import mc_dropout as mcd
from bnnctl.samplers.posterior import LogPosterior
from bnnctl.testing.images import synthetic_images
from bnnctl.testing.reference import feed_dropout_masks, train_reference

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

#: Dropout on a feature map before a max pool, and on gap features.
MAP_DROP = "cnn:1x8x8/c4k3-r-d0.3-m2-c8k3g2-r-gap-d0.5-l10"
#: Dropout on the input image, on a flattened map and between linear layers.
FLAT_DROP = "cnn:1x8x8/d0.2-c4k3-r-f-d0.4-l16-r-d0.1-l10"
TOL = 2e-5  # float32 rounding, as in tests/test_conv_train.py


@pytest.fixture(scope="module")
def small():
    """Random 1x8x8 images, 10 classes: 200 train, 50 test points."""
    return synthetic_images((1, 8, 8), n_train=200, n_test=50)


# --- 1. training conv nets with dropout --------------------------------------------------


@pytest.mark.parametrize("spec", [MAP_DROP, FLAT_DROP], ids=["map", "flat"])
@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="sgd", lr=0.05, weight_decay=1e-3, epochs=2, batch_size=64),
        TrainConfig(optimizer="adam", lr=5e-3, epochs=2, batch_size=50),
    ],
    ids=["sgd-momentum-wd", "adam"],
)
def test_conv_dropout_training_matches_the_module_fed_the_same_masks(digits, spec, cfg):
    arch = ConvSpec.parse(spec)
    pop = Population("p", arch, cfg, digits)
    seeds = [0, 7]
    params, loss = train_models(pop, seeds)
    assert np.isfinite(loss).all()
    for i, seed in enumerate(seeds):
        ref = train_reference(pop, seed)  # nn.Module in train mode + torch.optim
        assert (params[i] - ref).abs().max().item() < TOL
    # the masks matter: without them (the same net, no dropout) the weights differ
    plain = ConvSpec(tuple(ly for ly in arch.layers if ly.op != "dropout"), arch.input)
    no_drop = train_models(Population("p", plain, cfg, digits), seeds)[0]
    assert (params - no_drop).abs().max().item() > 1e-3


def test_mlp_dropout_training_matches_the_module_fed_the_same_masks(digits):
    """The reference trainer's masks serve MLPs too (``dropout_masks``, one per hidden
    layer, from the same stream)."""
    cfg = TrainConfig(epochs=2, batch_size=100, lr=1e-2)
    pop = Population("p", ArchSpec((64, 16, 16, 10), dropout=0.3), cfg, digits)
    params = train_models(pop, [0, 1])[0]
    for i, seed in enumerate([0, 1]):
        assert (params[i] - train_reference(pop, seed)).abs().max().item() < TOL


@pytest.mark.parametrize("spec", [MAP_DROP, FLAT_DROP], ids=["map", "flat"])
def test_conv_dropout_seed_is_bit_identical_whatever_its_block(small, spec):
    pop = Population("p", ConvSpec.parse(spec), TrainConfig(epochs=2, batch_size=64), small)
    together = train_models(pop, [3, 4, 5])[0]
    alone = torch.cat([train_models(pop, [s])[0] for s in [3, 4, 5]])
    split = torch.cat([train_models(pop, [3])[0], train_models(pop, [4, 5])[0]])
    assert torch.equal(together, alone) and torch.equal(together, split)


@pytest.mark.parametrize("spec", [MAP_DROP, FLAT_DROP], ids=["map", "flat"])
def test_forward_masks_match_module_dropout(spec):
    """``ConvSpec.forward`` with masks, on shared and per-model inputs, against each
    model's ``nn.Module`` in train mode whose dropout layers return the same masks."""
    arch = ConvSpec.parse(spec)
    g = torch.Generator().manual_seed(3)
    m, b = 3, 4
    params = torch.stack([arch.init(g) for _ in range(m)])
    shapes = [s for _, s in arch.dropout_shapes()]
    masks = [
        (torch.rand(m, b, *s, generator=g) < 0.6).float() / 0.6 for s in shapes
    ]  # every dropout layer here has rate > 0
    shared = torch.rand(b, *arch.input, generator=g)
    own = torch.rand(m, b, *arch.input, generator=g)
    for x, per_model in [(shared, False), (own, True), (own.reshape(m, b, -1), True)]:
        want = []
        for k in range(m):
            net = arch.module().train()
            net.load_state_dict(arch.state_dict(params[k]))
            fed = iter([mk[k] for mk in masks])
            feed_dropout_masks(net, lambda h, p, fed=fed: next(fed))
            xk = own[k] if per_model else shared
            want.append(net(xk))
        with torch.no_grad():
            got = arch.forward(params, x, masks)
        torch.testing.assert_close(got, torch.stack(want).detach(), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, arch.forward(params, x).detach(), atol=1e-3)


# --- 2. MC dropout on conv nets ----------------------------------------------------------


def _clone(gens: list[torch.Generator]) -> list[torch.Generator]:
    out = []
    for g in gens:
        c = torch.Generator()
        c.set_state(g.get_state())
        out.append(c)
    return out


@pytest.mark.parametrize(
    "spec",
    [
        "cnn:1x8x8/c4k3-r-m2-c8k3-r-gap-d0.5-l10",  # on gap features
        "cnn:1x8x8/c4k3-r-d0.3-f-r-l16-r-d0.2-l10",  # on a flattened map, then a relu
        "cnn:1x8x8/c2k3-r-d0.4-d0.2-f-l10",  # two dropouts folded into one layer
    ],
)
def test_mc_dropout_draw_equals_module_with_the_same_mask(digits, spec):
    """Each draw's folded weights, run in eval mode, give the outputs of the checkpoint's
    ``nn.Module`` in train mode whose dropout layers multiply by that draw's mask (one
    mask per draw, shared by all inputs, element-wise as ``nn.Dropout``)."""
    arch = ConvSpec.parse(spec)
    g = torch.Generator().manual_seed(0)
    params = torch.stack([arch.init(g) for _ in range(3)])
    sampler = mcd.build(SamplerConfig("mc_dropout"), LogPosterior.of(arch, digits))
    gens = [torch.Generator().manual_seed(10 + k) for k in range(3)]
    state = sampler.init(params, gens)
    x = torch.from_numpy(digits.x_test[:20])
    shapes = dict(arch.dropout_shapes())
    for _ in range(3):
        mirror = _clone(state.gens)  # the same stream the draw uses, read independently
        assert sampler.draw is not None
        drawn = sampler.draw(state)
        state = sampler.update(state)
        for k in range(3):
            net = arch.module().train()
            net.load_state_dict(arch.state_dict(params[k]))

            def mask(h: torch.Tensor, p: float, g: torch.Generator = mirror[k]) -> torch.Tensor:
                per_example = torch.bernoulli(torch.full(h.shape[1:], 1 - p), generator=g)
                return per_example.div_(1 - p).expand_as(h)

            feed_dropout_masks(net, mask)
            want = net(x.view(-1, *arch.input)).detach()
            with torch.no_grad():
                got = arch.forward(drawn[k : k + 1], x)[0]
                mean = arch.forward(params[k : k + 1], x)[0]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(got, mean, atol=1e-4)  # the draw is not the mean net
        assert len(shapes) >= 1


@pytest.mark.parametrize(
    "spec, layer",
    [
        ("cnn:1x8x8/c4k3-r-d0.5-gap-l10", "layer 3 (d0.5)"),
        ("cnn:1x8x8/c4k3-d0.5-r-m2-f-l10", "layer 2 (d0.5)"),
        ("cnn:1x8x8/d0.2-c4k3-r-gap-l10", "layer 1 (d0.2)"),
        ("cnn:1x8x8/c4k3-r-f-d0.5-t-l10", "layer 4 (d0.5)"),
    ],
)
def test_mc_dropout_refuses_element_wise_masks_it_cannot_fold(digits, spec, layer):
    with pytest.raises(UsageError, match=re.escape(f"cannot fold dropout {layer}")):
        mcd.build(SamplerConfig("mc_dropout"), LogPosterior.of(ConvSpec.parse(spec), digits))


def test_cli_mc_dropout_on_a_conv_checkpoint(tmp_path):
    """End to end: train a conv net with dropout, then MC dropout draws from it."""
    st = tmp_path / "s.zarr"
    ok = "cnn:1x8x8/c4k3-r-m2-gap-d0.5-l10"
    res = runner.invoke(
        app, ["train", "--store", str(st), "--arch", ok, "--epochs", "1", "--seeds", "2"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        ["sample", "--store", str(st), "--from", "kind == 'train'", "--method", "mc_dropout"]
        + ["--samples", "3"],
    )
    assert res.exit_code == 0, res.output
    store = Store.open(st)
    man = store.manifest()
    rows = man[man["kind"] == "sample"]
    assert len(rows) == 6 and set(rows["method"]) == {"mc_dropout"}
    parents = man.set_index("model_id").loc[rows["parent_id"]].reset_index()
    draws, start = store.read_params(rows), store.read_params(parents)
    # a draw differs from its checkpoint only in fc1's input columns, by factors 0 or 2
    arch = ConvSpec.parse(ok)
    ratio = (
        arch.views(torch.from_numpy(draws))["fc1.weight"]
        / arch.views(torch.from_numpy(start))["fc1.weight"]
    )
    assert set(np.unique(ratio.numpy().round(5))) <= {0.0, 2.0}
    same = {k: v for k, v in arch.views(torch.from_numpy(draws)).items() if k != "fc1.weight"}
    for k, v in same.items():
        assert torch.equal(v, arch.views(torch.from_numpy(start))[k])
    # an element-wise mask on a conv map is refused in one line, before anything is written
    bad = tmp_path / "b.zarr"
    res = runner.invoke(
        app,
        ["train", "--store", str(bad), "--arch", "cnn:1x8x8/c4k3-r-d0.5-gap-l10"]
        + ["--epochs", "1", "--seeds", "1"],
    )
    assert res.exit_code == 0, res.output
    before = sorted(p.relative_to(bad) for p in bad.rglob("*"))
    res = runner.invoke(
        app, ["sample", "--store", str(bad), "--from", "seed == 0", "--method", "mc_dropout"]
    )
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "layer 3 (d0.5)" in line
    assert sorted(p.relative_to(bad) for p in bad.rglob("*")) == before


# --- 3. early stop -----------------------------------------------------------------------

ARCHS = {
    "mlp": ArchSpec((64, 16, 10)),
    "conv": ConvSpec.parse("cnn:1x8x8/c4k3-r-m2-c8k3g2-r-gap-d0.3-l10"),
}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-3, **kw})


def _first_epochs(pop: Population, epochs: int) -> Population:
    """``pop`` without the rule and with fewer epochs, on the same random streams: what
    its models were after ``epochs`` epochs (the schedule here is constant)."""
    cfg = dataclasses.replace(pop.config, epochs=epochs, stop_below_acc=None, stop_after_epoch=None)
    short = Population(pop.name, pop.arch, cfg, pop.dataset)
    object.__setattr__(short, "generator", pop.generator)  # shadows the method
    return short


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_models_under_the_threshold_stop_bit_for_bit(small, kind):
    """Threshold between the models' accuracies after epoch 1: the stopped models have the
    weights (and last loss) they had after epoch 1, the others those of the population
    without the rule, bit for bit, whatever the block."""
    arch = ARCHS[kind]
    seeds = [0, 1, 2, 3, 4, 5]
    free = Population("p", arch, _cfg(epochs=3), small)
    full, full_loss = train_models(free, seeds)
    short, short_loss = train_models(_first_epochs(free, 1), seeds)
    acc = accuracy_alone(arch, short, small)
    threshold = float(np.median(acc))
    stop = acc < threshold
    assert 0 < stop.sum() < len(seeds), acc  # the threshold splits them
    pop = Population("p", arch, _cfg(epochs=3, stop_below_acc=threshold, stop_after_epoch=1), small)
    assert pop.sha256 != free.sha256
    params, loss, epochs = train_models_epochs(pop, seeds)
    want = torch.where(torch.from_numpy(stop)[:, None], short, full)
    assert torch.equal(params, want)
    assert np.array_equal(loss, np.where(stop, short_loss, full_loss))
    assert epochs.tolist() == [1 if s else 3 for s in stop]
    alone = torch.cat([train_models(pop, [s])[0] for s in seeds])
    split = torch.cat([train_models(pop, seeds[:4])[0], train_models(pop, seeds[4:])[0]])
    assert torch.equal(alone, params) and torch.equal(split, params)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_early_stop_rows_and_hash(tmp_path, small, kind):
    """Through ``train``: threshold 1 stops every model (none is perfect here) with the
    weights they had after 2 epochs and ``epochs`` 2 in the manifest; threshold 0 stops
    none: the weights of the run without the rule. Each rule is another population."""
    arch = ARCHS[kind]
    store = Store.open(tmp_path / "s.zarr", create=True)

    def run(name: str, **kw) -> tuple[np.ndarray, pd.DataFrame, str]:
        res = train(store, small, _cfg(**kw), seeds=range(3), arch=arch, population=name)
        rows = res.rows.sort_values("seed")
        return store.read_params(rows), rows, rows["config_sha256"].iloc[0]

    p4, r4, h4 = run("four", epochs=4)
    pall, rall, hall = run("all", epochs=4, stop_below_acc=1.0, stop_after_epoch=2)
    pnone, rnone, hnone = run("none", epochs=4, stop_below_acc=0.0, stop_after_epoch=2)
    pop = Population("all", arch, _cfg(epochs=4, stop_below_acc=1.0, stop_after_epoch=2), small)
    p2, loss2 = train_models(_first_epochs(pop, 2), [0, 1, 2])
    assert (accuracy_alone(arch, p2, small) < 1).all()
    assert np.array_equal(pall, p2.numpy()) and rall["epochs"].tolist() == [2, 2, 2]
    assert np.array_equal(rall["train_loss"].to_numpy(), loss2)
    assert not np.array_equal(pall, p4)
    assert np.array_equal(pnone, p4) and rnone["epochs"].tolist() == [4, 4, 4]
    assert len({h4, hall, hnone}) == 3
    assert list(rall.columns) == list(r4.columns)  # no new manifest columns


def test_rule_is_hashed_only_when_set():
    assert "stop_below_acc" not in TrainConfig().identity()
    ident = TrainConfig(epochs=5, stop_below_acc=0.15, stop_after_epoch=3).identity()
    assert ident["stop_below_acc"] == 0.15 and ident["stop_after_epoch"] == 3
    assert "stop_below_acc" not in TrainConfig(stop_below_acc=0.1, stop_after_epoch=1).columns()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"stop_below_acc": 0.1}, "`stop_below_acc` needs `stop_after_epoch`"),
        ({"stop_after_epoch": 2}, "`stop_after_epoch` needs `stop_below_acc`"),
        ({"stop_below_acc": -0.1, "stop_after_epoch": 2}, r"in \[0, 1\]"),
        ({"stop_below_acc": 0.1, "stop_after_epoch": 0}, r"in 1\.\.4"),
        ({"stop_below_acc": 0.1, "stop_after_epoch": 5}, r"in 1\.\.4"),
    ],
)
def test_rule_is_validated(kw, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(epochs=5, **kw)


def test_rule_refuses_regression_data():
    rng = np.random.default_rng(0)
    ds = validate(
        "reg",
        {
            "x_train": rng.random((20, 3), dtype=np.float32),
            "y_train": rng.random((20, 1), dtype=np.float32),
            "x_test": rng.random((5, 3), dtype=np.float32),
            "y_test": rng.random((5, 1), dtype=np.float32),
        },
    )
    cfg = TrainConfig(epochs=3, stop_below_acc=0.5, stop_after_epoch=1)
    with pytest.raises(UsageError, match="stops on test accuracy"):
        make_population(ds, cfg, ArchSpec((3, 4, 1)))


def test_cli_reports_models_stopped_early(tmp_path):
    res = runner.invoke(
        app,
        ["train", "--store", str(tmp_path / "s.zarr"), "--arch", "mlp:64-8-10"]
        + ["--epochs", "2", "--seeds", "3", "--stop-below-acc", "1", "--stop-after-epoch", "1"],
    )
    assert res.exit_code == 0, res.output
    assert "3 stopped early (test accuracy < 1 after epoch 1)" in res.output
    rows = Store.open(tmp_path / "s.zarr").manifest()
    assert rows["epochs"].tolist() == [1, 1, 1]
