"""`bnnctl canonicalize` on real trained checkpoints: function preserved (checked with
torch.nn), rows and lineage, resumable and idempotent, every bad input refused with
the store untouched; and the benchmark's --quick mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import bnnctl.engines.canonicalize as engine
from bnnctl import ArchSpec, Store, TrainConfig, train
from bnnctl.cli.common import app
from bnnctl.engines.canonicalize import canonicalize
from bnnctl.errors import CheckError
from bnnctl.symmetry.modes import count_modes
from bnnctl.testing.reference import outputs as nn_outputs
from bnnctl.testing.stores import commit_imported

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(store, *args):
    return runner.invoke(app, ["canonicalize", "--store", str(store), *args])


def snapshot(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, digits):
    """Trained digits nets of every supported activation (3 each, 2 epochs)."""
    path = tmp_path_factory.mktemp("zoo") / "zoo.zarr"
    st = Store.open(path, create=True)
    for act in ("relu", "leaky_relu", "tanh", "gelu"):
        train(
            st,
            digits,
            TrainConfig(epochs=2),
            seeds=range(3),
            arch=ArchSpec((64, 12, 10, 10), act),
            population=act,
            block_size=3,
        )
    return path


def test_function_is_preserved_for_every_activation(zoo, tmp_path):
    import shutil

    path = tmp_path / "z.zarr"
    shutil.copytree(zoo, path)
    st = Store.open(path)
    res = canonicalize(st)
    assert len(res.rows) == 12 and set(res.rows["kind"]) == {"canonical"}
    man = st.manifest()
    x = torch.from_numpy(st.load_data(man["data"].iloc[0]).x_test)
    for act in ("relu", "leaky_relu", "tanh", "gelu"):
        new = res.rows[res.rows["population"] == f"{act}.canon"].sort_values("parent_id")
        src = man.set_index("model_id").loc[new["parent_id"]].reset_index()
        arch = ArchSpec.from_json(new["arch"].iloc[0])
        a = nn_outputs(arch, torch.from_numpy(st.read_params(new)), x)
        b = nn_outputs(arch, torch.from_numpy(st.read_params(src)), x)
        diff = (a - b).abs().amax((1, 2))
        assert (diff <= 1e-5 * b.abs().amax((1, 2))).all()
        assert np.allclose(new["max_logit_diff"], diff.numpy(), atol=1e-6)
        t = json.loads(new["transform"].iloc[0])
        assert t["symmetries"] == list(arch.symmetries) and t["key"] == "mean"
        assert (
            t["mass_counted"] == ["0.weight", "2.weight", "4.weight"]
            and not t["output_layer_permuted"]
        )
        assert np.allclose(
            new["test_acc"].to_numpy(float), src["test_acc"].to_numpy(float), atol=1 / len(x)
        )
    assert st.verify() == []


def test_rows_lineage_and_scaling_mass(store_copy):
    st = Store.open(store_copy)
    res = canonicalize(st)
    rows = res.rows.sort_values("parent_id")
    assert list(rows["model_id"]) == [f"digits.{i:06d}.canon" for i in range(8)]
    assert list(rows["parent_id"]) == [f"digits.{i:06d}" for i in range(8)]
    assert set(rows["population"]) == {"digits.canon"} and set(rows["method"]) == {"canonical"}
    assert all(a.startswith("params/digits.canon/") for a in rows["array"])
    # independent mass: sum of squared weights from the stored rows
    arch = ArchSpec.from_json(rows["arch"].iloc[0])
    w = [t for t in arch.layout if t.name.endswith("weight")]
    mass = sum((st.read_params(rows)[:, t.offset : t.offset + t.size] ** 2).sum(1) for t in w)
    assert np.allclose(rows["l2_mass_after"], mass, rtol=1e-5)
    assert (rows["l2_mass_after"] < rows["l2_mass_before"]).all()
    assert res.report["excess_mass_pct_median"] > 0 and res.report["modes"] == 8
    # the function, by torch.nn on the stored weights of source and canonical rows
    man = st.manifest()
    src = man.set_index("model_id").loc[rows["parent_id"]].reset_index()
    x = torch.from_numpy(st.load_data(src["data"].iloc[0]).x_test)
    a = nn_outputs(arch, torch.from_numpy(st.read_params(rows)), x)
    b = nn_outputs(arch, torch.from_numpy(st.read_params(src)), x)
    assert ((a - b).abs().amax((1, 2)) <= 1e-5 * b.abs().amax((1, 2))).all()
    assert not np.array_equal(st.read_params(rows), st.read_params(src))
    assert res.report["max_logit_diff"] <= 1e-5 * 10


def test_running_twice_adds_nothing_and_resumes_after_a_crash(store_copy):
    st = Store.open(store_copy)
    first = canonicalize(st, st.manifest().query("seed < 3"), block_size=2)
    assert len(first.rows) == 3
    # a crashed run left an orphan array (data written, no manifest file): it is rewritten
    man = st.manifest()
    todo = man[(man["kind"] == "train") & (man["seed"] >= 3)].iloc[:2]
    g = engine.plan(st, todo, None, "pc", "l2", None)[0][0]
    orphan = f"params/{g.out_population}/{engine._block_name(g, todo)}"
    st.group.create_array(orphan, shape=(2, 3), dtype="float32")
    second = canonicalize(st, block_size=2)
    assert len(second.rows) == 5 and second.skipped == 3
    third = canonicalize(st)
    assert len(third.rows) == 0 and third.skipped == 8 and len(st.manifest()) == 16
    assert Store.open(store_copy).verify() == []
    assert third.report["models"] == 8


def test_align_to_a_reference(store_copy):
    st = Store.open(store_copy)
    res = canonicalize(st, align_to="digits.000000")
    assert set(res.rows["method"]) == {"align"} and set(res.rows["kind"]) == {"canonical"}
    assert set(res.rows["population"]) == {"digits.align-digits.000000"}
    aligned = res.rows.set_index("parent_id")
    assert aligned.loc["digits.000000", "model_id"] == "digits.000000.align-digits.000000"
    assert json.loads(aligned["transform"].iloc[0])["reference"] == "digits.000000"
    # the reference aligned to itself is not permuted: it equals its scale-only form
    scale_only = canonicalize(st, st.manifest().query("model_id == 'digits.000000'"), ["scale"])
    man = st.manifest()
    a = st.read_params(man[man["model_id"] == "digits.000000.align-digits.000000"])
    b = st.read_params(man[man["model_id"] == scale_only.rows["model_id"].iloc[0]])
    assert np.array_equal(a, b)
    # alignment and canonical form are distinct rows of the same source
    canon = canonicalize(st, man[man["model_id"] == "digits.000003"])
    assert canon.rows["model_id"].iloc[0] == "digits.000003.canon"
    assert (res.rows["max_logit_diff"] <= 1e-5 * 20).all()


def test_a_changed_function_is_an_error_and_nothing_is_committed(store_copy, monkeypatch):
    st = Store.open(store_copy)
    real = engine.canon_form

    def broken(arch, flat, t):
        c = real(arch, flat, t)
        c.params[:, -1] += 1e-2  # the last output bias
        return c

    monkeypatch.setattr(engine, "canon_form", broken)
    before = snapshot(store_copy / "manifest")
    with pytest.raises(CheckError, match="outputs differ"):
        canonicalize(st)
    assert snapshot(store_copy / "manifest") == before


def test_cli_report_and_formats(store_copy):
    r = invoke(store_copy, "--format", "json", "--quiet")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["new"] == 8 and rep["models"] == 8 and rep["symmetries"] == ["perm,scale"]
    r = invoke(store_copy, "--where", "seed < 2")
    assert r.exit_code == 0 and "excess_mass_pct_median" in r.stdout and "0 new rows" in r.stderr
    r = invoke(store_copy, "--symmetries", "perm", "--key", "weight0", "-q", "-f", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["excess_mass_pct_max"] == pytest.approx(
        0, abs=1e-4
    )
    ls = runner.invoke(
        app, ["ls", "--store", str(store_copy), "--where", "kind == 'canonical'", "-f", "ids"]
    )
    assert len(ls.stdout.split()) == 16
    assert "Example: bnnctl canonicalize" in runner.invoke(app, ["canonicalize", "--help"]).stdout


@pytest.mark.parametrize(
    ("setup", "args", "code", "msg"),
    [
        (None, ["--symmetries", "perm,rotate"], 2, "unknown --symmetries rotate"),
        (None, ["--key", "first"], 2, "'first' is not one of"),
        (None, ["--scale-mode", "l1"], 2, "'l1' is not one of"),
        (None, ["--where", "seed > 99"], 2, "selection is empty"),
        (None, ["--where", "seed >"], 2, "--where: syntax error"),
        (None, ["--align-to", "nope.000001"], 2, "no model 'nope.000001'"),
        (
            "tanh",
            ["--symmetries", "perm,scale", "--where", "population == 'tanhpop'"],
            2,
            "no scale symmetry",
        ),
        ("nan", [], 1, "has NaN or Inf weights"),
        (
            "other",
            ["--align-to", "other.0", "--where", "population == 'digits'"],
            2,
            "reference other.0 is mlp:64-16-10",
        ),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_store_untouched(store_copy, setup, args, code, msg):
    rng = np.random.default_rng(0)
    if setup == "tanh":
        arch = ArchSpec((64, 8, 10), "tanh")
        commit_imported(
            store_copy, "tanhpop", rng.normal(size=(2, arch.n_params)).astype(np.float32), arch
        )
    elif setup == "nan":
        arch = ArchSpec((64, 32, 32, 10))
        p = rng.normal(size=(2, arch.n_params)).astype(np.float32)
        p[1, 5] = np.nan
        commit_imported(store_copy, "nanpop", p, arch)
    elif setup == "other":
        arch = ArchSpec((64, 16, 10))
        commit_imported(
            store_copy, "other", rng.normal(size=(1, arch.n_params)).astype(np.float32), arch
        )
    before = snapshot(store_copy)
    r = invoke(store_copy, *args)
    assert r.exit_code == code, r.output
    assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert snapshot(store_copy) == before


def test_only_canonical_rows_selected_is_an_error(store_copy):
    assert invoke(store_copy, "-q").exit_code == 0
    before = snapshot(store_copy)
    r = invoke(store_copy, "--where", "kind == 'canonical'")
    assert r.exit_code == 2 and "only canonical rows" in r.stderr
    assert snapshot(store_copy) == before


def test_count_modes_single_linkage():
    base = np.zeros((5, 4))
    base[:, 0] = [0.0, 0.001, 10.0, 10.001, 30.0]
    base[:, 1] = 10.0  # norms 10 .. 31.6: rtol 1e-3 links pairs 0.001 apart, not 10 apart
    assert count_modes(base, 1e-3) == 3
    assert count_modes(base, 1e-6) == 5
    assert count_modes(base, 1.0) == 1
    # chains link: 0 ~ 1 ~ 2 although 0 and 2 are farther apart than the radius
    chain = np.array([[10.0, 0.0], [10.0, 0.9], [10.0, 1.8]])
    assert count_modes(chain, 0.1) == 1


def test_bench_quick_runs():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_canonicalize.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "models/s" in out.stdout


def test_manifest_rows_keep_schema_columns(store_copy):
    rows = canonicalize(Store.open(store_copy)).rows
    assert isinstance(rows, pd.DataFrame)
    assert rows["transform"].map(json.loads).map(lambda t: t["method"]).eq("canonical").all()
    assert rows["seed"].tolist() == sorted(rows["seed"].tolist())
