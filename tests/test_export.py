"""Export and import: files load into plain PyTorch modules, round trips keep sha256, and
every bad input of the issue is refused cleanly with nothing half-written."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bnnctl import ArchSpec, Store
from bnnctl.arch import modules as models
from bnnctl.cli.common import app
from bnnctl.engines.importer import import_folder, infer_arch
from bnnctl.errors import ConflictError, DataError, UsageError
from bnnctl.export import export
from bnnctl.store import row_sha256

runner = CliRunner()
ARCH = ArchSpec((64, 32, 32, 10))


def plain_net() -> torch.nn.Sequential:
    """The trained_store's architecture, written by hand without bnnctl."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )


def test_safetensors_export_loads_into_plain_modules(trained_store, tmp_path, digits):
    st = Store.open(trained_store)
    man = st.manifest()
    files = export(st, man, "safetensors", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{m}.safetensors" for m in man["model_id"]] + ["metadata.parquet", "README.md"]
    )
    assert set(files) == set(out.iterdir())
    meta = pd.read_parquet(out / "metadata.parquet")
    assert (
        list(meta["model_id"]) == list(man["model_id"])
        and (meta["file"] == meta["model_id"] + ".safetensors").all()
    )
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: bnnctl") and "mlp:64-32-32-10" in card
    params = st.read_params(man)
    x = torch.from_numpy(digits.x_test)
    for k, mid in enumerate(man["model_id"]):
        sd = load_file(out / f"{mid}.safetensors")
        for net in (plain_net(), models.build(ARCH)):
            net.load_state_dict(sd)
            with torch.no_grad():
                torch.testing.assert_close(
                    net(x), ARCH.forward(torch.from_numpy(params[k])[None], x)[0]
                )


def test_round_trips_keep_sha256(store_copy, tmp_path):
    st = Store.open(store_copy)
    man = st.manifest()
    for fmt in ("safetensors", "torch"):
        export(st, man, fmt, tmp_path / fmt)
        res = import_folder(st, tmp_path / fmt, _digits(), population=f"back_{fmt}")
        assert (
            len(res.rows) == 8 and res.skipped == 0 and res.dtype == "float32" and res.arch == ARCH
        )
        assert sorted(res.rows["sha256"]) == sorted(man["sha256"])
        back = res.rows.set_index("model_id")
        for r in man.itertuples():
            b = back.loc[f"back_{fmt}.{r.model_id}"]
            assert b["sha256"] == r.sha256 and b["kind"] == "import"
            assert b["test_acc"] == pytest.approx(r.test_acc) and b["test_nll"] == pytest.approx(
                r.test_nll, rel=1e-5
            )
    again = import_folder(st, tmp_path / "torch", _digits(), population="back_torch")
    assert again.skipped == 8 and again.rows.empty
    assert st.verify() == []


def _digits():
    from bnnctl import load_dataset

    return load_dataset("digits")


def test_torch_files_load_with_weights_only(trained_store, tmp_path):
    st = Store.open(trained_store)
    man = st.manifest().head(2)
    export(st, man, "torch", tmp_path / "pt")
    sd = torch.load(tmp_path / "pt" / f"{man['model_id'].iloc[0]}.pt", weights_only=True)
    net = plain_net()
    net.load_state_dict(sd)
    np.testing.assert_array_equal(models.to_row(ARCH, net.state_dict()), st.read_params(man)[0])


def test_npz_export(trained_store, tmp_path):
    st = Store.open(trained_store)
    man = st.manifest()
    export(st, man, "npz", tmp_path / "npz")
    with np.load(tmp_path / "npz" / "models.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["params"], st.read_params(man))
        assert list(z["model_id"]) == list(man["model_id"]) and list(z["sha256"]) == list(
            man["sha256"]
        )
        assert ArchSpec.from_json(str(z["arch"])) == ARCH
        assert json.loads(str(z["layout"]))[0] == {
            "name": "0.weight",
            "shape": [32, 64],
            "offset": 0,
        }
        assert [row_sha256(r) for r in z["params"]] == list(man["sha256"])


def test_float16_export_and_import(store_copy, tmp_path):
    st = Store.open(store_copy)
    man = st.manifest().head(3)
    export(st, man, "safetensors", tmp_path / "h", dtype="float16")
    sd = load_file(tmp_path / "h" / f"{man['model_id'].iloc[0]}.safetensors")
    assert all(v.dtype == torch.float16 for v in sd.values())
    want = st.read_params(man).astype(np.float16)
    assert np.array_equal(models.to_row(ARCH, sd, np.float16), want[0])
    res = import_folder(st, tmp_path / "h", _digits(), population="half")
    assert res.dtype == "float16" and (res.rows["dtype"] == "float16").all()
    assert sorted(res.rows["sha256"]) == sorted(row_sha256(r) for r in want)


def test_export_refuses_non_empty_destination_without_force(trained_store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(
        app, ["export", "--where", "seed < 2", "--store", str(trained_store), str(out)]
    )
    assert r.exit_code == 2 and "not empty; pass --force" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    r = runner.invoke(
        app, ["export", "--where", "seed < 2", "--force", "--store", str(trained_store), str(out)]
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "digits.000000.safetensors",
        "digits.000001.safetensors",
        "metadata.parquet",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folders left


def test_export_ids_from_stdin_and_bad_selections(trained_store, tmp_path):
    s = str(trained_store)
    r = runner.invoke(
        app,
        ["export", "--ids", "-", "--to", "npz", "--store", s, str(tmp_path / "a")],
        input="digits.000003\ndigits.000001\n",
    )
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "a" / "models.npz") as z:
        assert list(z["model_id"]) == ["digits.000003", "digits.000001"]
    r = runner.invoke(
        app, ["export", "--ids", "-", "--store", s, str(tmp_path / "b")], input="nope\n"
    )
    assert r.exit_code == 2 and "unknown model id" in r.stderr
    r = runner.invoke(app, ["export", "--where", "seed > 99", "--store", s, str(tmp_path / "c")])
    assert r.exit_code == 2 and "selects no rows" in r.stderr
    r = runner.invoke(app, ["export", "--store", s, str(tmp_path / "d")])
    assert r.exit_code == 2 and "exactly one of --where" in r.stderr
    with pytest.raises(UsageError, match="dtype"):
        export(
            Store.open(trained_store),
            Store.open(trained_store).manifest(),
            "npz",
            tmp_path / "e",
            dtype="int8",
        )
    assert not any(p.name in ("b", "c", "d", "e") for p in tmp_path.iterdir())


def test_crash_during_export_leaves_nothing(trained_store, tmp_path, monkeypatch):
    calls = []

    def failing_save(arch, row, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        torch.save(models.state_dict(arch, row), path)

    monkeypatch.setattr(models, "save", failing_save)
    st = Store.open(trained_store)
    with pytest.raises(KeyboardInterrupt):
        export(st, st.manifest(), "torch", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def write_pt(folder, name, sd):
    folder.mkdir(exist_ok=True)
    torch.save(sd, folder / name)


def test_import_infers_arch_from_plain_modules(store_copy, tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "ckpts"
    nets = [plain_net() for _ in range(3)]
    for k, n in enumerate(nets):
        write_pt(folder, f"net{k}.pt", n.state_dict())
    r = runner.invoke(
        app, ["import", str(folder), "--dataset", "digits", "--store", str(store_copy)]
    )
    assert r.exit_code == 0, r.output
    assert "imported 3 models (mlp:64-32-32-10, float32)" in r.stderr
    man = Store.open(store_copy).manifest()
    imp = man[man["kind"] == "import"].sort_values("model_id")
    assert list(imp["model_id"]) == ["ckpts.net0", "ckpts.net1", "ckpts.net2"]
    assert list(imp["sha256"]) == [row_sha256(models.to_row(ARCH, n.state_dict())) for n in nets]
    assert imp["test_acc"].between(0, 1).all() and imp["seed"].isna().all()


def test_infer_arch_with_dropout_indices():
    sd = models.build(ArchSpec((4, 3, 2), dropout=0.5)).state_dict()
    with pytest.raises(UsageError, match="--dropout"):
        infer_arch(sd, "f.pt")
    assert infer_arch(sd, "f.pt", dropout=0.5) == ArchSpec((4, 3, 2), dropout=0.5)
    with pytest.raises(DataError, match="cannot infer an MLP"):
        infer_arch({"fc1.weight": torch.zeros(2, 2)}, "f.pt")


def manifest_files(path):
    return sorted(p.name for p in (path / "manifest").iterdir())


def test_import_mixed_shapes_names_the_file_and_writes_nothing(store_copy, tmp_path):
    folder = tmp_path / "mixed"
    write_pt(folder, "a.pt", plain_net().state_dict())
    small = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    write_pt(folder, "b.pt", small.state_dict())
    before = manifest_files(store_copy)
    r = runner.invoke(app, ["import", str(folder), "--store", str(store_copy)])
    assert r.exit_code == 1 and "b.pt" in r.stderr and "names do not match" in r.stderr
    r = runner.invoke(
        app, ["import", str(folder), "--arch", "mlp:64-16-16-10", "--store", str(store_copy)]
    )
    assert (
        r.exit_code == 1
        and "a.pt: tensor 0.weight has shape (32, 64), expected (16, 64)" in r.stderr
    )
    assert manifest_files(store_copy) == before


def test_import_refuses_truncated_safetensors(trained_store, store_copy, tmp_path):
    st = Store.open(trained_store)
    export(st, st.manifest().head(2), "safetensors", tmp_path / "st")
    victim = tmp_path / "st" / "digits.000001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-100])
    before = manifest_files(store_copy)
    r = runner.invoke(app, ["import", str(tmp_path / "st"), "--store", str(store_copy)])
    assert (
        r.exit_code == 1
        and "digits.000001.safetensors: not a readable safetensors file" in r.stderr
    )
    assert manifest_files(store_copy) == before


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_import_never_unpickles_objects(store_copy, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    with open(folder / "x.pt", "wb") as f:
        pickle.dump({"0.weight": Evil(str(marker))}, f)
    r = runner.invoke(app, ["import", str(folder), "--store", str(store_copy)])
    assert r.exit_code == 1 and "x.pt: not a plain PyTorch state_dict file" in r.stderr
    assert not marker.exists()
    nested = tmp_path / "nested"
    write_pt(nested, "y.pt", {"state_dict": plain_net().state_dict(), "epoch": 3})
    r = runner.invoke(app, ["import", str(nested), "--store", str(store_copy)])
    assert r.exit_code == 1 and "y.pt: not a plain state_dict" in r.stderr


def test_import_bad_folders_and_conflicts(store_copy, tmp_path):
    r = runner.invoke(app, ["import", str(tmp_path / "none"), "--store", str(store_copy)])
    assert r.exit_code == 2 and "not a folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["import", str(tmp_path / "empty"), "--store", str(store_copy)])
    assert r.exit_code == 2 and "holds no" in r.stderr
    folder = tmp_path / "ok"
    write_pt(folder, "a.pt", plain_net().state_dict())
    with pytest.raises(ConflictError, match="population 'digits' already holds train rows"):
        import_folder(Store.open(store_copy), folder, _digits(), population="digits")
    r = runner.invoke(
        app, ["import", str(folder), "--dataset", "moons", "--store", str(store_copy)]
    )
    assert r.exit_code == 2 and "takes 64 inputs but moons has 2" in r.stderr
    new_store = tmp_path / "new.zarr"
    r = runner.invoke(app, ["import", str(tmp_path / "empty"), "--store", str(new_store)])
    assert r.exit_code == 2 and not new_store.exists()  # bad input creates no store


def test_cli_formats_are_the_library_formats():
    from bnnctl.cli.export import ExportFormat
    from bnnctl.export import FORMATS

    assert [f.value for f in ExportFormat] == list(FORMATS)
