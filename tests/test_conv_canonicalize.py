"""`bnnctl canonicalize` on a conv-net population: the canonical rows compute the same
function as their sources (checked with plain ``nn.Module``s, not bnnctl's forward), a
re-run adds nothing, and the store stays sound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnnctl import Store, TrainConfig, load_dataset, parse_arch, train
from bnnctl.cli import app

#: Grouped conv (whole groups move), tanh-free ReLU net: perm + scale apply.
ARCH = "cnn:1x8x8/c6k3nb-r-c6k3g3-r-gap-l12-r-l10"


pytestmark = pytest.mark.usefixtures("one_thread")


def module_outputs(arch, row: np.ndarray, x: np.ndarray) -> np.ndarray:
    net = arch.module().eval()
    net.load_state_dict(arch.state_dict(torch.from_numpy(row)))
    with torch.no_grad():
        return net(torch.from_numpy(x).view(-1, *arch.input)).numpy()


def test_canonical_conv_rows_keep_each_sources_function(tmp_path):
    arch, ds, path = parse_arch(ARCH), load_dataset("digits"), tmp_path / "c.zarr"
    train(path, ds, TrainConfig(epochs=1), range(6), arch, block_size=3)
    r = CliRunner().invoke(app, ["canonicalize", "--store", str(path), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    store = Store.open(path)
    man = store.manifest()
    canon = man[man["method"] == "canonical"].sort_values("parent_id")
    src = man.set_index("model_id").loc[canon["parent_id"]]
    assert len(canon) == 6 and (canon["arch"] == arch.to_json()).all()
    new, old = store.read_params(canon), store.read_params(src.reset_index())
    assert not np.array_equal(new, old)  # something moved
    x = ds.x_test[:64]
    for a, b in zip(new, old, strict=True):
        ya, yb = module_outputs(arch, a, x), module_outputs(arch, b, x)
        np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-5 * np.abs(yb).max())
    assert (canon["l2_mass_after"] <= canon["l2_mass_before"] * (1 + 1e-6)).all()
    again = CliRunner().invoke(app, ["canonicalize", "--store", str(path)])
    assert again.exit_code == 0 and len(Store.open(path).manifest()) == 12
    assert Store.open(path).verify() == []


def test_optunet_on_digits_is_a_one_line_usage_error(tmp_path):
    r = CliRunner().invoke(
        app, ["train", "--arch", "optunet", "--seeds", "2", "--store", str(tmp_path / "s.zarr")]
    )
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "1x28x28" in r.stderr and "64 features" in r.stderr


def test_digits28_is_digits_upsampled_into_an_mnist_frame():
    from scipy.ndimage import zoom

    d8, d28 = load_dataset("digits"), load_dataset("digits28")
    assert d28.x_train.shape == (len(d8.x_train), 784) and d28.n_classes == 10
    np.testing.assert_array_equal(d28.y_test, d8.y_test)
    img = d28.x_test.reshape(-1, 28, 28)
    assert img.min() >= 0.0 and img.max() <= 1.0
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert (img[:, border] == 0).all()  # MNIST-like: the digit sits in the central 20x20
    back = zoom(img[:, 4:24, 4:24], (1, 0.4, 0.4), order=1).reshape(len(img), -1)
    assert np.abs(back - d8.x_test).mean() < 0.1  # the same digits, resampled


def test_optunet_trains_on_digits28_out_of_the_box(tmp_path):
    path = str(tmp_path / "o.zarr")
    args = ["train", "--arch", "optunet", "--dataset", "digits28", "--seeds", "2"]
    r = CliRunner().invoke(app, [*args, "--epochs", "1", "--store", path, "--quiet"])
    assert r.exit_code == 0, r.stderr
    man = Store.open(path).manifest()
    assert list(man["arch_name"]) == ["optunet", "optunet"] and (man["dataset"] == "digits28").all()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_dead_channels(arch, seed: int, edit) -> torch.Tensor:
    """A random model of ``arch`` (float64 [1, P]) with ``edit(views, generator)`` applied."""
    g = torch.Generator().manual_seed(seed)
    flat = arch.init(g).double().reshape(1, -1).contiguous()
    edit(arch.views(flat), torch.Generator().manual_seed(100 + seed))
    return flat


@pytest.mark.parametrize(
    "spec, edit, dead_at_least",
    [
        # OptuNet (no conv bias): conv1's channel 0 silent; what it feeds (conv2's group 0,
        # then fc1's columns 0-4) is noise that must not matter
        (
            "optunet",
            lambda v, g: (
                v["conv1.weight"][:, 0].zero_(),
                v["conv2.weight"][:, :5].normal_(generator=g),
            ),
            6,
        ),
        # with biases: conv2's channel 1 unused (fc1 never reads it); its kernel and bias
        # are noise
        (
            "cnn:1x8x8/c4k3-r-m2-c3k3p1-r-gap-l3-r-l10",
            lambda v, g: (
                v["fc1.weight"][:, :, 1].zero_(),
                v["conv2.weight"][:, 1].normal_(generator=g),
                v["conv2.bias"][:, 1].normal_(generator=g),
            ),
            1,
        ),
    ],
    ids=["optunet-silent", "cnn-unused"],
)
def test_dead_conv_channels_have_one_canonical_form(spec, edit, dead_at_least):
    """Copies that differ only in weights a dead channel makes irrelevant compute the same
    function and get the same canonical form (before: each kept its own), and the
    canonical form computes the source's function."""
    from bnnctl.symmetry.canonical import canonicalize as canon_form
    from bnnctl.symmetry.transform import make_transform

    arch = parse_arch(spec)
    t = make_transform(arch, ["perm", "scale"])
    a, b = (_with_dead_channels(arch, 0, lambda v, g, s=s: edit(v, _gen(s))) for s in (1, 2))
    x = torch.rand(
        16, arch.n_inputs, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    out = {k: arch.forward(p.float(), x.float()) for k, p in (("a", a), ("b", b))}
    torch.testing.assert_close(out["a"], out["b"], rtol=1e-5, atol=1e-6)  # same function
    assert not torch.equal(a, b)  # different weights
    ca, cb = canon_form(arch, a, t), canon_form(arch, b, t)
    assert int(ca.dead[0]) >= dead_at_least
    torch.testing.assert_close(ca.params, cb.params, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(arch.forward(ca.params.float(), x.float()), out["a"],
                               rtol=1e-4, atol=1e-5)  # fmt: skip
