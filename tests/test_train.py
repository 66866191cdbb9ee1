"""The batched train engine against a plain nn.Module + torch.optim loop, and its
reproducibility, resume and population rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.engines.train import Population, train_models
from bnnctl.errors import ConflictError, UsageError
from bnnctl.testing.reference import train_reference

SMALL = ArchSpec((64, 16, 12, 10))


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="adam", lr=3e-3, epochs=3, batch_size=100, weight_decay=1e-3),
        TrainConfig(
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            nesterov=True,
            epochs=3,
            batch_size=64,
            schedule="cosine",
            weight_decay=1e-4,
        ),
        TrainConfig(
            optimizer="sgd", lr=0.1, momentum=0.0, epochs=4, batch_size=128, schedule="step"
        ),
    ],
    ids=["adam-wd", "sgd-nesterov-cosine", "sgd-step"],
)
def test_each_model_matches_plain_module_training(digits, cfg):
    pop = Population("p", SMALL, cfg, digits)
    seeds = [0, 5, 9]
    params, _ = train_models(pop, seeds)
    for i, seed in enumerate(seeds):
        ref = train_reference(pop, seed)
        assert (params[i] - ref).abs().max().item() < 1e-4


def test_same_seed_same_weights_whatever_the_block(digits):
    pop = Population("p", SMALL, TrainConfig(epochs=2), digits)
    together, _ = train_models(pop, [3, 4, 5, 6])
    alone, _ = train_models(pop, [5])
    pairs, _ = train_models(pop, [6, 5])
    assert (together[2] - alone[0]).abs().max() < 1e-5
    assert (together[2] - pairs[1]).abs().max() < 1e-5
    again, _ = train_models(pop, [3, 4, 5, 6])
    assert torch.equal(together, again)  # bit-identical re-run
    assert not torch.equal(together[0], together[1])  # seeds differ


def test_dropout_training_runs_and_differs_by_seed(digits):
    pop = Population("p", ArchSpec((64, 16, 10), dropout=0.3), TrainConfig(epochs=2), digits)
    a, _ = train_models(pop, [0, 1])
    b, _ = train_models(pop, [1])
    assert (a[1] - b[0]).abs().max() < 1e-5 and torch.isfinite(a).all()


def test_population_resume_extend_and_conflicts(tmp_path, digits):
    store = Store.open(tmp_path / "s.zarr", create=True)
    cfg = TrainConfig(epochs=1)
    r1 = train(store, digits, cfg, range(3), SMALL, block_size=2)
    assert len(r1.rows) == 3 and r1.skipped == 0
    r2 = train(store, digits, cfg, range(5), SMALL, block_size=2)
    assert r2.skipped == 3 and sorted(r2.rows["seed"]) == [3, 4]
    man = store.manifest()
    assert sorted(man["seed"]) == [0, 1, 2, 3, 4] and man["model_id"].is_unique
    with pytest.raises(ConflictError, match="mlp:64-16-12-10"):
        train(store, digits, cfg, range(2), ArchSpec((64, 8, 10)))
    with pytest.raises(ConflictError, match="lr"):
        train(store, digits, TrainConfig(epochs=1, lr=0.1), range(2), SMALL)
    r3 = train(store, digits, cfg, range(2), ArchSpec((64, 8, 10)), population="narrow")
    assert set(r3.rows["population"]) == {"narrow"}
    assert store.verify() == []


def test_float16_storage_and_parallel_jobs_agree(tmp_path, digits):
    cfg = TrainConfig(epochs=1)
    s1 = Store.open(tmp_path / "a.zarr", create=True)
    s2 = Store.open(tmp_path / "b.zarr", create=True)
    r1 = train(s1, digits, cfg, range(4), SMALL, block_size=2, dtype="float16")
    r2 = train(s2, digits, cfg, range(4), SMALL, block_size=2, dtype="float16", jobs=2)
    assert list(r1.rows["sha256"]) == list(r2.rows.sort_values("seed")["sha256"])
    p = s1.read_params(s1.manifest().sort_values("seed"))
    full, _ = train_models(Population("digits", SMALL, cfg, digits, "float32"), [0])
    assert s1.array(r1.rows["array"].iloc[0]).dtype == np.float16
    assert np.abs(p[0] - full[0].numpy()).max() < 5e-3  # float16 rounding only
    assert s2.verify() == []


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"seeds": [-1]}, "non-negative"),
        ({"arch": ArchSpec((10, 5, 10))}, "takes 10 inputs"),
        ({"arch": ArchSpec((64, 5, 3))}, "3 outputs"),
        ({"population": "bad name"}, "population name"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_train_requests(tmp_path, digits, kwargs, msg):
    store = Store.open(tmp_path / "s.zarr", create=True)
    with pytest.raises(UsageError, match=msg):
        train(store, digits, TrainConfig(epochs=1), **{"seeds": [0], **kwargs})
    assert store.manifest().empty


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"optimizer": "rmsprop"}, "unknown `optimizer`"),
        ({"schedule": "linear"}, "unknown `schedule`"),
        ({"lr": 0}, "`lr` must be positive"),
        ({"epochs": 0}, "epochs"),
        ({"nesterov": True}, "nesterov"),
    ],
)
def test_bad_train_config(kwargs, msg):
    with pytest.raises(UsageError, match=msg):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("every_s, commits", [(0.0, 8), (1e9, 1)])
def test_tiny_blocks_share_manifest_commits(tmp_path, monkeypatch, every_s, commits):
    """Blocks trained in this process are committed together once COMMIT_EVERY_S of
    training has passed (here: never, or after every block), with the same rows."""
    from deltalake import DeltaTable

    import bnnctl.engines.train as engine
    from bnnctl import load_dataset

    monkeypatch.setattr(engine, "COMMIT_EVERY_S", every_s)
    url = tmp_path / "s.zarr"
    Store.open(url, create=True)
    before = DeltaTable(str(url / "manifest")).version()
    res = train(url, load_dataset("moons"), TrainConfig(epochs=1), range(64), ArchSpec((2, 1)),
                block_size=8)  # fmt: skip
    assert DeltaTable(str(url / "manifest")).version() - before == commits
    st = Store.open(url)
    df = st.manifest().sort_values("seed")
    assert list(df["seed"]) == list(range(64)) and st.verify() == []
    assert df["array"].nunique() == 8  # a fresh array per block, batched or not
    # the weights do not depend on how blocks were committed
    expected = train_models(
        Population("moons", ArchSpec((2, 1)), TrainConfig(epochs=1), load_dataset("moons")),
        list(range(8, 16)),
    )[0].numpy()
    np.testing.assert_array_equal(st.read_params(df.iloc[8:16]), expected)
    assert len(res.rows) == 64


def test_each_epoch_order_is_the_models_own_randperm_whatever_the_threads():
    """The epoch's data orders, drawn in blocks on several threads, are each model's own
    ``torch.randperm`` from its generator, as if drawn one after another."""
    from bnnctl.engines.train import _start_epoch

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            gens = [torch.Generator().manual_seed(s) for s in range(7)]
            for epoch in range(2):
                got = _start_epoch(opt, TrainConfig(), epoch, gens, 1000, torch.device("cpu"))
                fresh = [torch.Generator().manual_seed(s) for s in range(7)]
                for k, g in enumerate(fresh):
                    for _ in range(epoch + 1):
                        want = torch.randperm(1000, generator=g)
                    assert torch.equal(got[k], want), (threads, epoch, k)
    finally:
        torch.set_num_threads(before)
