"""bnnctl.arch.modules against PyTorch itself: the built module's state_dict names are the
layout, its forward is the batched forward, rows round-trip through state_dicts and
plain .pt files that load with weights_only=True."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from bnnctl.arch import ArchSpec
from bnnctl.arch import modules as models
from bnnctl.errors import DataError
from bnnctl.testing.strategies import archs


@settings(max_examples=30, deadline=None)
@given(arch=archs, seed=st.integers(0, 2**31 - 1))
def test_module_matches_layout_and_forward(arch, seed):
    g = torch.Generator().manual_seed(seed)
    row = torch.randn(arch.n_params, generator=g)
    net = models.load(arch, row.numpy())
    assert [k for k in net.state_dict()] == [t.name for t in arch.layout]
    assert [tuple(v.shape) for v in net.state_dict().values()] == [t.shape for t in arch.layout]
    x = torch.randn(5, arch.widths[0], generator=g)
    with torch.no_grad():
        expect = arch.forward(row[None], x)[0]
        got = net(x)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(arch=archs)
def test_row_state_dict_round_trip(arch):
    row = np.random.default_rng(0).standard_normal(arch.n_params).astype(np.float32)
    sd = models.state_dict(arch, row)
    assert np.array_equal(models.to_row(arch, sd), row)
    # a plain dict of numpy arrays works too
    assert np.array_equal(models.to_row(arch, {k: v.numpy() for k, v in sd.items()}), row)


def test_plain_sequential_loads_saved_file(tmp_path):
    arch = ArchSpec((4, 3, 2), "tanh")
    row = np.arange(arch.n_params, dtype=np.float32) / 10
    models.save(arch, row, tmp_path / "m.pt")
    sd = torch.load(tmp_path / "m.pt", weights_only=True)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    plain.load_state_dict(sd)
    assert torch.equal(plain[0].weight, torch.from_numpy(row[:12].reshape(3, 4)))
    assert torch.equal(plain[2].bias, torch.from_numpy(row[-2:]))


def test_float16_rows_stay_exact():
    arch = ArchSpec((3, 2, 2))
    row = np.random.default_rng(1).standard_normal(arch.n_params).astype(np.float16)
    sd = models.state_dict(arch, row)
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert np.array_equal(models.to_row(arch, sd, np.float16), row)


def test_bad_state_dicts_are_refused():
    arch = ArchSpec((3, 2, 2))
    sd = models.state_dict(arch, np.zeros(arch.n_params, np.float32))
    with pytest.raises(DataError, match=r"f\.pt: tensor 0.weight has shape \(3, 3\)"):
        models.check_state_dict(arch, {**sd, "0.weight": torch.zeros(3, 3)}, "f.pt")
    with pytest.raises(DataError, match="missing"):
        models.check_state_dict(arch, {k: v for k, v in sd.items() if k != "2.bias"})
    with pytest.raises(DataError, match="unexpected"):
        models.check_state_dict(arch, {**sd, "extra": torch.zeros(1)})
    with pytest.raises(DataError, match="numbers"):
        models.state_dict(arch, np.zeros(arch.n_params + 1, np.float32))
