"""The device path (``--device``, :mod:`bnnctl.device`) on a machine without a GPU.

Device selection is checked with torch's view of the GPUs patched. That the arithmetic
runs where it is asked is checked on torch's ``meta`` device, which has shapes but no
values: the trainers and every sampler run their whole loop on it under
:class:`OneDevice`, which fails any op given tensors on two devices (other than a copy
from one to the other, or a 0-d CPU scalar, which CUDA accepts too). A tensor left on the
CPU in those loops fails here as it would fail, or crawl, on a GPU. Runs on a real GPU
are marked ``gpu`` and skipped without one.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import bnnctl.device as devmod
from bnnctl import ArchSpec, TrainConfig, load_dataset
from bnnctl.arch import parse_arch
from bnnctl.engines import train as trainmod
from bnnctl.errors import EnvironmentFault, UsageError
from bnnctl.evaluate import outputs
from bnnctl.evaluate.likelihood import for_task
from bnnctl.evaluate.metrics import evaluate
from bnnctl.samplers import METHODS, SamplerConfig, build, check_supported
from bnnctl.samplers.posterior import LogPosterior
from bnnctl.testing.images import synthetic_images

META = torch.device("meta")


class OneDevice(TorchDispatchMode):
    """Records every op whose tensor operands lie on more than one device."""

    TRANSFERS = ("aten::_to_copy", "aten::copy_", "aten::lift_fresh")

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors if t.dim() > 0 or t.device.type != "cpu"}
        if len(devices) > 1 and func.name() not in self.TRANSFERS:
            self.mixed.append(f"{func.name()} on {sorted(devices)}")
        return func(*args, **kwargs)


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_resolve_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devmod.resolve("auto") == torch.device("cpu")
    assert devmod.resolve(None) == torch.device("cpu")
    assert devmod.resolve(" CPU ") == torch.device("cpu")
    with pytest.raises(EnvironmentFault, match="torch sees no GPU"):
        devmod.resolve("cuda")
    with pytest.raises(EnvironmentFault, match="torch sees no GPU"):
        devmod.resolve("cuda:0")


def test_resolve_with_gpus(two_gpus):
    assert devmod.resolve("auto") == torch.device("cuda", 0)
    assert devmod.resolve("cuda") == torch.device("cuda", 0)
    assert devmod.resolve("cuda:1") == torch.device("cuda", 1)
    assert devmod.resolve("cpu") == torch.device("cpu")
    with pytest.raises(EnvironmentFault, match=r"sees 2 GPU\(s\): cuda:0..cuda:1"):
        devmod.resolve("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda:x", "mps", "cpu:0", "1"])
def test_bad_device_names(bad):
    with pytest.raises(UsageError, match="unknown `device`"):
        devmod.resolve(bad)
    with pytest.raises(UsageError, match="unknown `device`"):
        devmod.parse(bad)


def test_parse_leaves_cuda_to_the_worker(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devmod.parse("cuda:3") == "cuda:3"  # a Dask worker may have the GPU


def test_meta_device_refuses_mixed_devices():
    """The premise of the tests below: an op mixing meta and CPU tensors fails."""
    with pytest.raises(RuntimeError):
        torch.zeros(3, device=META) + torch.ones(3)


TRAIN_CASES = [
    ("moons", ArchSpec((2, 8, 2)), TrainConfig(epochs=2)),
    ("moons", ArchSpec((2, 8, 2), dropout=0.3), TrainConfig(epochs=1, optimizer="sgd")),
    ("digits28", parse_arch("optunet"), TrainConfig(epochs=1, batch_size=256)),
    (
        "digits28",
        parse_arch("cnn:1x28x28/c2k4nb-r-m3-d0.2-c10k5g2nb-r-gap-d0.3-l3-r-l10"),
        TrainConfig(epochs=1, batch_size=256),
    ),
]


@pytest.mark.parametrize(
    "ds, arch, cfg", TRAIN_CASES, ids=["mlp", "mlp-dropout", "optunet", "cnn-d"]
)
@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_training_runs_on_the_device(ds, arch, cfg, seeds):
    data = load_dataset(ds)
    pop = trainmod.make_population(data, cfg, arch)
    train = trainmod.train_conv_models if hasattr(arch, "layers") else trainmod.train_mlp_models
    with OneDevice() as guard:
        params, stopper = train(pop, arch, seeds, None, META)
    assert guard.mixed == []
    assert params.device == META and params.shape == (len(seeds), arch.n_params)
    assert stopper.loss.device == META
    x, y = (torch.from_numpy(a).to(META) for a in (data.x_test, data.y_test))
    metrics = evaluate(for_task(data.task), outputs(arch, params, x), y)
    assert {v.device for v in metrics.values()} == {META}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "arch", [ArchSpec((2, 6, 2), dropout=0.2), parse_arch("cnn:1x8x8/c2k3-r-gap-d0.2-l10")]
)
def test_samplers_run_on_the_device(method, arch):
    try:
        check_supported(method, arch)
    except UsageError:
        pytest.skip(f"{method} does not apply to {arch.name}")
    data = (
        load_dataset("moons") if isinstance(arch, ArchSpec) else synthetic_images((1, 8, 8), 40, 16)
    )
    cfg = SamplerConfig(method, step_size=1e-3, burn_in=2, batch_size=16, leapfrog=2, rank=2)
    post = LogPosterior.of(arch, data, device=META)
    sampler = build(cfg, post)
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    with OneDevice() as guard:
        state = sampler.init(torch.zeros(3, arch.n_params, device=META), gens)
        for _ in range(3):
            state = sampler.update(state)
        theta = state.params if sampler.draw is None else sampler.draw(state)
    assert guard.mixed == []
    assert theta.device == META and theta.shape == (3, arch.n_params)
    if sampler.summary is not None:
        assert {v.device for v in sampler.summary(state).values()} == {META}


@pytest.mark.gpu
@GPU
def test_train_on_gpu_matches_cpu(tmp_path):
    """On a real GPU: the same seeds train to nearly the same weights as on the CPU (the
    same draws; only the rounding of the arithmetic differs)."""
    data = load_dataset("digits")
    pop = trainmod.make_population(data, TrainConfig(epochs=2), ArchSpec((64, 16, 10)))
    cpu, _ = trainmod.train_models(pop, [0, 1, 2, 3], device="cpu")
    gpu, _ = trainmod.train_models(pop, [0, 1, 2, 3], device="cuda")
    assert gpu.device.type == "cpu"
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)


def test_gpu_out_of_memory_is_an_environment_error():
    """A CUDA out-of-memory error becomes one line with exit 3 at the CLI boundary."""
    from bnnctl.cli.common import as_known_error

    known = as_known_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB"))
    assert isinstance(known, EnvironmentFault) and known.exit_code == 3
    assert "out of GPU memory" in str(known) and "--block-size" in str(known)
    assert as_known_error(RuntimeError("a bug")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is the GPU there")
def test_cli_device_cpu_is_the_default_path_here(tmp_path):
    """Without a GPU, --device auto is the CPU: the same weights as --device cpu, and each
    row says where it ran."""
    from typer.testing import CliRunner

    from bnnctl import Store
    from bnnctl.cli import app

    tiny = ["train", "--dataset", "moons", "--arch", "mlp:2-4-2", "--epochs", "2", "--seeds", "3"]
    hashes = []
    for flag in ([], ["--device", "cpu"]):
        url = str(tmp_path / f"s{len(hashes)}.zarr")
        r = CliRunner().invoke(app, [*tiny, *flag, "--store", url, "--quiet"])
        assert r.exit_code == 0, r.output
        df = Store.open(url).manifest().sort_values("seed")
        assert (df["device"] == "cpu").all()
        hashes.append(list(df["sha256"]))
    assert hashes[0] == hashes[1]
