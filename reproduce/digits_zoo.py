"""The digits populations R3-R5 build, each in its finding's own store: trained
checkpoints (deep ensembles and the starts of the samplers) and single- or multi-mode
samples of each method. One architecture for all of them, ``mlp:64-32-10`` trained with
dropout 0.1 (MC dropout needs dropout-trained checkpoints, and ``stats compare`` compares
one architecture), Adam 1e-3, weight decay 1e-3: the samplers' prior is the matching
Gaussian, variance 1 / (N * wd)."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
else:
    from reproduce import common

WIDTHS = (64, 32, 10)
DROPOUT = 0.1
WEIGHT_DECAY = 1e-3
METHODS = ("mfvi", "laplace", "swag", "mc_dropout", "sghmc")
GT_SEED = 1000  # ground-truth / deep-ensemble seeds start here, apart from the starts


def arch():
    from bnnctl import ArchSpec

    return ArchSpec(WIDTHS, dropout=DROPOUT)


def dataset():
    from bnnctl import load_dataset

    return load_dataset("digits")


def prior_var(n_train: int) -> float:
    return 1.0 / (n_train * WEIGHT_DECAY)


def train_pop(ctx: common.Ctx, store, name: str, seeds: range) -> pd.DataFrame:
    from bnnctl import TrainConfig, train

    epochs = ctx.pick(3, 40)
    ctx.log(f"training {len(seeds)} {name} checkpoints ({epochs} epochs)")
    cfg = TrainConfig(epochs=epochs, weight_decay=WEIGHT_DECAY)
    return train(store, dataset(), cfg, seeds=seeds, arch=arch(), population=name).rows


def sampler_config(ctx: common.Ctx, method: str, n_train: int):
    from bnnctl.samplers import SamplerConfig

    pv = prior_var(n_train)
    if method == "sghmc":
        return SamplerConfig(
            "sghmc", step_size=1e-5, burn_in=ctx.pick(10, 200), thin=ctx.pick(2, 20), prior_var=pv
        )
    if method == "mfvi":
        return SamplerConfig("mfvi", burn_in=ctx.pick(10, 300), prior_var=pv)
    if method == "swag":
        return SamplerConfig("swag", burn_in=ctx.pick(5, 100), rank=ctx.pick(2, 20), prior_var=pv)
    return SamplerConfig(method, prior_var=pv)


def sample_pop(
    ctx: common.Ctx,
    store,
    method: str,
    mode: str,
    n_starts: int,
    chains: int,
    samples: int,
    starts: str = "starts",
) -> str:
    """Sample ``method`` from the first checkpoint of ``starts`` (``mode='single'``: all
    chains there) or from its first ``n_starts`` (``'multi'``: one chain each); returns
    the population name."""
    from bnnctl.engines.sample import sample

    k = 1 if mode == "single" else n_starts
    where = f"population == '{starts}' and seed < {k}"
    name = f"{method}-{mode}"
    n_train = len(dataset().y_train)
    ctx.log(f"{name}: {chains} chains x {samples} samples from {k} checkpoint(s)")
    sample(
        store,
        sampler_config(ctx, method, n_train),
        samples=samples,
        chains=chains,
        start=where,
        population=name,
        seed=1,
    )
    return name


def draws(name: str, method: str) -> str:
    """The ``--where`` of a population's posterior draws (not q's mean/std rows)."""
    return f"population == '{name}' and method == '{method}'"
