"""The in-process canonicalize run that reads each source once, transforms blocks on
worker threads while one thread reads and commits, and gives the report the params it
made: checked against the serial path (``KEEP_BYTES = 0``: every block read again and
the report reading the store, as before), row for row and bit for bit, on success and on
every refusal; and the symmetry helpers it made faster, against plain references."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import bnnctl.engines.canonicalize as engine
from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.errors import CheckError, DataError, StoreError
from bnnctl.symmetry.action import take
from bnnctl.symmetry.modes import count_modes
from bnnctl.testing.stores import commit_imported

#: manifest columns of canonical rows that must not depend on the path (all but times)
SAME = [
    "model_id",
    "parent_id",
    "population",
    "array_prefix",
    "sha256",
    "max_logit_diff",
    "l2_mass_before",
    "l2_mass_after",
    "test_acc",
    "test_nll",
    "test_ece",
    "transform",
    "config_sha256",
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, digits):
    """Three populations (so three groups): trained 'a' and 'b', 9 and 5 models, and 6
    imported random models 'c' whose first two hidden units are copies, in and out (exact
    ties after scaling too: the report counts them as near-ties)."""
    path = tmp_path_factory.mktemp("pipe") / "zoo.zarr"
    st = Store.open(path, create=True)
    for name, widths, n in (("a", (64, 12, 10, 10), 9), ("b", (64, 8, 10), 5)):
        train(st, digits, TrainConfig(epochs=2), range(n), ArchSpec(widths), name, block_size=4)
    arch = ArchSpec((64, 10, 10))
    p = np.random.default_rng(0).normal(size=(6, arch.n_params)).astype(np.float32)
    w = arch.views(torch.from_numpy(p))
    w["0.weight"][:, 1] = w["0.weight"][:, 0]
    w["0.bias"][:, 1] = w["0.bias"][:, 0]
    w["2.weight"][:, :, 1] = w["2.weight"][:, :, 0]
    commit_imported(path, "c", p, arch)
    return path


def canonical_rows(path) -> pd.DataFrame:
    man = Store.open(path).manifest()
    rows = man[man["kind"] == "canonical"].copy()
    rows["array_prefix"] = rows["array"].str.rsplit(".", n=1).str[0]  # less the attempt id
    return rows.sort_values("model_id")[SAME].reset_index(drop=True)


def run_both(zoo, tmp_path, monkeypatch, steps):
    """Run ``steps`` (functions of a store path) on two copies of ``zoo``: the serial path
    and the kept path with two workers. Returns each copy's path and each step's outcome
    (the result's report and new ids, or the exception's type and message)."""
    out = {}
    for label, keep in (("serial", 0), ("kept", engine.KEEP_BYTES)):
        path = tmp_path / f"{label}.zarr"
        shutil.copytree(zoo, path)
        monkeypatch.setattr(engine, "KEEP_BYTES", keep)
        monkeypatch.setattr(engine, "WORKERS", 2)
        results = []
        for step in steps:
            try:
                res = step(path)
                results.append((res.report, sorted(res.rows["model_id"])))
            except Exception as e:
                results.append((type(e), str(e)))
        out[label] = path, results
    return out


def test_same_rows_and_report_as_the_serial_path(zoo, tmp_path, monkeypatch):
    ticks = []
    steps = [
        # some rows first (the report then mixes rows read back and rows made), in blocks
        # of 2 that do not divide the groups
        lambda p: engine.canonicalize(p, _first(p), block_size=2),
        lambda p: engine.canonicalize(p, block_size=2, progress=ticks.append),
        lambda p: engine.canonicalize(p),  # nothing new: the report reads everything
        lambda p: engine.canonicalize(p, symmetries=["perm"], key="pc", block_size=3),
    ]
    out = run_both(zoo, tmp_path, monkeypatch, steps)
    (serial, a), (kept, b) = out["serial"], out["kept"]
    assert a == b
    # seeds 1, 4, 7 of a; 1, 4 of b; c.1, c.4 first
    assert [r[0]["new"] for r in a] == [7, 20 - 7, 0, 20]
    assert all(r[0]["near_tie_units"] >= n for r, n in zip(a, (2, 6, 6, 6), strict=True))
    assert sum(ticks[: len(ticks) // 2]) == sum(ticks[len(ticks) // 2 :]) == 13
    pd.testing.assert_frame_equal(canonical_rows(serial), canonical_rows(kept))
    assert Store.open(kept).verify() == []


def _first(path) -> pd.DataFrame:
    man = Store.open(path).manifest()
    return man[(man["seed"] % 3 == 1) | man["model_id"].isin(["c.1", "c.4"])]


def test_kept_params_are_the_stored_ones(zoo, tmp_path, monkeypatch):
    """The report's in-memory params: a round trip through the store gives the same bits."""
    path = tmp_path / "z.zarr"
    shutil.copytree(zoo, path)
    monkeypatch.setattr(engine, "WORKERS", 2)
    seen = []
    real = engine.count_modes
    monkeypatch.setattr(engine, "count_modes", lambda p, r: seen.append(p.copy()) or real(p, r))
    res = engine.canonicalize(path)
    st = Store.open(path)
    for params, pop in zip(seen, ("a.canon", "b.canon", "c.canon"), strict=True):
        rows = res.canonical[res.canonical["population"] == pop]
        assert np.array_equal(params, st.read_params(rows))


def test_a_check_error_commits_the_blocks_before_it_as_before(zoo, tmp_path, monkeypatch):
    """Block 3 of population a (seeds 4, 5 in blocks of 2) changes its function; blocks run
    two at a time, so the broken one is found by its weights, not by call order."""
    real = engine.canon_form
    target = torch.from_numpy(Store.open(zoo).read_params(_rows(zoo, ["a.000004"])))[0]

    def broken(arch, flat, t):
        c = real(arch, flat, t)
        if any(torch.equal(row.float(), target) for row in flat):
            c.params[:, -1] += 1e-2
        return c

    monkeypatch.setattr(engine, "canon_form", broken)
    out = run_both(zoo, tmp_path, monkeypatch, [lambda p: engine.canonicalize(p, block_size=2)])
    (serial, a), (kept, b) = out["serial"], out["kept"]
    assert a == b and a[0][0] is CheckError and "a.000004.canon: outputs differ" in a[0][1]
    rows = canonical_rows(kept)
    assert list(rows["parent_id"]) == [f"a.00000{i}" for i in range(4)]  # blocks 1 and 2
    pd.testing.assert_frame_equal(canonical_rows(serial), rows)


def _rows(path, ids: list[str]) -> pd.DataFrame:
    man = Store.open(path).manifest()
    return man.set_index("model_id").loc[ids].reset_index()


def test_a_non_finite_source_anywhere_is_reported_first_and_nothing_is_written(
    zoo, tmp_path, monkeypatch
):
    """A NaN in the last block and a changed function in the first: the serial path checks
    every source before any transform, so DataError, and no row."""
    monkeypatch.setattr(engine, "canon_form", _broken(engine.canon_form))
    for label, keep in (("serial", 0), ("kept", engine.KEEP_BYTES)):
        path = tmp_path / f"{label}.zarr"
        shutil.copytree(zoo, path)
        _add_nan_population(path)
        monkeypatch.setattr(engine, "KEEP_BYTES", keep)
        monkeypatch.setattr(engine, "WORKERS", 2)
        with pytest.raises(DataError, match="zz.1 has NaN"):
            engine.canonicalize(path, block_size=2)
        assert len(canonical_rows(path)) == 0


def test_a_failed_commit_stops_the_run_as_before(zoo, tmp_path, monkeypatch):
    real = Store.commit_block
    calls = []

    def flaky(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise StoreError("disk full (test)")
        return real(self, *args)

    def step(p):
        calls.clear()
        return engine.canonicalize(p, block_size=2)

    monkeypatch.setattr(Store, "commit_block", flaky)
    out = run_both(zoo, tmp_path, monkeypatch, [step])
    (serial, a), (kept, b) = out["serial"], out["kept"]
    assert a == b and a[0] == (StoreError, "disk full (test)")
    pd.testing.assert_frame_equal(canonical_rows(serial), canonical_rows(kept))
    assert len(canonical_rows(kept)) == 2


def _broken(real):
    def broken(arch, flat, t):
        c = real(arch, flat, t)
        if "scale" in t.symmetries:
            c.params[:, -1] += 1e-2
        return c

    return broken


def _add_nan_population(path) -> None:
    """Population 'zz' (last in the plan's order): 2 models, the second NaN."""
    arch = ArchSpec((64, 6, 10))
    p = np.random.default_rng(0).normal(size=(2, arch.n_params)).astype(np.float32)
    p[1, 3] = np.nan
    commit_imported(path, "zz", p, arch)


# --- the helpers made faster ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 3, 7), (3, 2, 5, 4), (2, 6)])
def test_take_equals_a_gather(shape):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    for axis in range(len(shape) - 1):
        n = shape[axis + 1]
        idx = torch.stack([torch.randperm(n, generator=g) for _ in range(shape[0])])
        view = [shape[0]] + [1] * (len(shape) - 1)
        view[axis + 1] = n
        want = torch.gather(t, axis + 1, idx.view(view).expand_as(t))
        assert torch.equal(take(t, axis, idx), want)
        wide = torch.zeros(*shape, 2, dtype=t.dtype)  # a non-contiguous view of the same values
        wide[..., 1] = t
        assert torch.equal(take(wide[..., 1], axis, idx), want)


def brute_force_modes(x: np.ndarray, rtol: float) -> int:
    """Connected components of the link graph, from every pairwise distance (float64)."""
    from scipy.sparse.csgraph import connected_components

    x = x.astype(np.float64)
    sq = (x**2).sum(1)
    d2 = np.stack([((x - row) ** 2).sum(1) for row in x])
    return int(connected_components(d2 <= rtol**2 * (sq[:, None] + sq[None, :]) / 2)[0])


@pytest.mark.parametrize("seed", range(4))
def test_count_modes_equals_brute_force(seed):
    """Clusters of a few near-copies, far apart (the sparse path, with pairs to check),
    and a population with no two rows close (only self-pairs pass the screen)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 300))
    x = np.repeat(centres, rng.integers(1, 5, size=40), axis=0)
    x = x + rng.normal(size=x.shape) * rng.choice([1e-3, 0.3], size=(len(x), 1))
    x = x[rng.permutation(len(x))].astype(np.float32)
    for rtol in (0.01, 0.05, 0.2):
        assert count_modes(x, rtol, chunk=32) == brute_force_modes(x, rtol)
    far = rng.normal(size=(700, 50)).astype(np.float32)
    assert count_modes(far, 0.05) == brute_force_modes(far, 0.05) == 700


def test_read_units_follow_the_stored_arrays():
    todo = pd.DataFrame({"array": list("aaaabbbbbbcdde")})
    # runs a(4) b(6) c(1) d(2) e(1): short ones join the next until block_size rows
    assert engine._read_units(todo, 3) == [(0, 4), (4, 10), (10, 13), (13, 14)]
    assert engine._read_units(todo, 5) == [(0, 10), (10, 14)]
    assert engine._read_units(todo, 1) == [(0, 4), (4, 10), (10, 11), (11, 13), (13, 14)]
    assert engine._read_units(todo.iloc[0:0], 3) == []
