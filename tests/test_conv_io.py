"""Conv nets in and out: the paper's release format (float16 safetensors in .tgz archives)
imports with ``--arch optunet``, conv rows export in every format and load into
``ConvSpec.module()``, hostile archives are refused by member, and the CIFAR-10 binary
version reads as a dataset."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load, load_file, save
from typer.testing import CliRunner

from bnnctl import Store
from bnnctl.arch import ConvSpec, arch_from_json, parse_arch
from bnnctl.cli.common import app
from bnnctl.data import CIFAR_FILES, CIFAR_RECORD, load_dataset
from bnnctl.engines.importer import import_folder
from bnnctl.errors import DataError, UsageError
from bnnctl.export import export
from bnnctl.store import row_sha256

runner = CliRunner()
OPTUNET = ConvSpec.parse("optunet")


# --- helpers ------------------------------------------------------------------------------


def fp16_state_dict(seed: int, spec: ConvSpec = OPTUNET) -> dict[str, torch.Tensor]:
    """A freshly initialised ``spec.module()``'s weights in float16 (random per seed)."""
    torch.manual_seed(seed)
    net = spec.module()
    return {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}


def row_of(sd: dict[str, torch.Tensor], spec: ConvSpec = OPTUNET) -> np.ndarray:
    return np.concatenate([sd[t.name].numpy().reshape(-1) for t in spec.layout])


def member(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def make_tgz(path: Path, files: dict[str, bytes], extra=()) -> Path:
    """A gzipped tar of ``files`` (name -> bytes) and ``extra`` (name, TarInfo attrs)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            member(tar, name, data)
        for name, attrs in extra:
            member(tar, name, **attrs)
    return path


def release_archive(tmp_path: Path, n: int = 3) -> tuple[Path, list[np.ndarray]]:
    """``mnist-optunet-0-<n-1>.tgz`` as the paper publishes it: one float16 safetensors per
    model in a folder; model 1 saved through Lightning (``model.`` prefix)."""
    files, rows = {"mnist-optunet/README.txt": b"OptuNet checkpoints"}, []
    for k in range(n):
        sd = fp16_state_dict(k)
        rows.append(row_of(sd))
        named = {f"model.{name}": v for name, v in sd.items()} if k == 1 else sd
        files[f"mnist-optunet/{k}.safetensors"] = save(named)
    return make_tgz(tmp_path / f"mnist-optunet-0-{n - 1}.tgz", files), rows


def mnist_like(tmp_path: Path, n: int = 40) -> Path:
    """A small random 1x28x28, 10-class dataset (OptuNet's input and output)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mnistish.npz"
    np.savez(
        path,
        x_train=rng.random((n, 784), dtype=np.float32),
        y_train=np.arange(n) % 10,
        x_test=rng.random((n // 2, 784), dtype=np.float32),
        y_test=np.arange(n // 2) % 10,
    )
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- import of the release format ---------------------------------------------------------


def test_release_archive_imports_with_arch_optunet(tmp_path):
    archive, rows = release_archive(tmp_path)
    data, store = mnist_like(tmp_path), tmp_path / "s.zarr"
    r = runner.invoke(
        app,
        ["import", str(archive), "--arch", "optunet", "--data", str(data)]
        + ["--dtype", "float16", "--store", str(store)],
    )
    assert r.exit_code == 0, r.output
    assert "imported 3 models (optunet, float16)" in r.stderr
    st = Store.open(store)
    man = st.manifest().sort_values("model_id").reset_index(drop=True)
    assert list(man["model_id"]) == [f"mnist-optunet-0-2.{k}" for k in range(3)]
    assert (man["dtype"] == "float16").all() and (man["arch_name"] == "optunet").all()
    params = st.read_params(man)  # float16 rows, read as float32: exactly the same values
    np.testing.assert_array_equal(params, np.stack(rows).astype(np.float32))
    assert list(man["sha256"]) == [row_sha256(r) for r in rows]
    assert man["test_acc"].between(0, 1).all()
    # each row names the archive member it was read from
    assert [src.split(":")[0] for src in man["source"]] == [archive.name] * 3
    assert [src.rsplit("/", 1)[-1] for src in man["source"]] == [
        f"{k}.safetensors" for k in range(3)
    ]
    assert st.verify() == []
    # re-running skips them; float32 on request, equal to the float16 values
    r = runner.invoke(
        app,
        ["import", str(archive), "--arch", "optunet", "--data", str(data)]
        + ["--dtype", "float16", "--store", str(store)],
    )
    assert r.exit_code == 0 and "3 already in the store, skipped" in r.stderr
    res = import_folder(st, archive, load_dataset(None, data), population="wide", dtype="float32")
    assert res.dtype == "float32" and isinstance(res.arch, ConvSpec)  # inferred from names
    wide = st.read_params(res.rows.sort_values("model_id"))
    np.testing.assert_array_equal(wide, np.stack(rows).astype(np.float32))
    assert st.verify() == []


def test_folder_of_archives_and_default_dtype(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    a = {f"{k}.safetensors": save(fp16_state_dict(k)) for k in range(2)}
    b = {f"{k}.safetensors": save(fp16_state_dict(k)) for k in range(2, 4)}
    make_tgz(folder / "mnist-optunet-0-1.tgz", a)
    make_tgz(folder / "mnist-optunet-2-3.tar.gz", b)
    res = import_folder(
        tmp_path / "s.zarr", folder, load_dataset(None, mnist_like(tmp_path)), parse_arch("optunet")
    )
    assert res.dtype == "float16" and len(res.rows) == 4  # all float16: stored as float16
    assert sorted(res.rows["model_id"]) == [f"release.{k}" for k in range(4)]
    assert sorted(res.rows["source"]) == [
        "mnist-optunet-0-1.tgz:0.safetensors",
        "mnist-optunet-0-1.tgz:1.safetensors",
        "mnist-optunet-2-3.tar.gz:2.safetensors",
        "mnist-optunet-2-3.tar.gz:3.safetensors",
    ]
    make_tgz(folder / "again.tgz", {"0.safetensors": save(fp16_state_dict(9))})
    with pytest.raises(DataError, match="make the same model id '0'"):
        import_folder(tmp_path / "t.zarr", folder, load_dataset(None, mnist_like(tmp_path)))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: {**sd, "fc1.weight": torch.zeros(4, 10, dtype=torch.float16)},
            "bad.safetensors: tensor fc1.weight has shape (4, 10), expected (3, 10)",
        ),
        (lambda sd: {k: v for k, v in sd.items() if k != "fc2.bias"}, "missing ['fc2.bias']"),
        (lambda sd: {**sd, "fc3.weight": torch.zeros(2)}, "unexpected ['fc3.weight']"),
        (
            lambda sd: {**sd, "conv1.weight": torch.full((2, 1, 4, 4), float("nan")).half()},
            "bad.safetensors: non-finite weights (NaN or Inf) in conv1.weight",
        ),
    ],
)
def test_bad_tensors_are_refused_naming_file_and_tensor(tmp_path, edit, message):
    files = {
        "0.safetensors": save(fp16_state_dict(0)),
        "bad.safetensors": save(edit(fp16_state_dict(1))),
    }
    archive = make_tgz(tmp_path / "a.tgz", files)
    store = tmp_path / "s.zarr"
    r = runner.invoke(
        app,
        ["import", str(archive), "--arch", "optunet", "--data", str(mnist_like(tmp_path))]
        + ["--store", str(store)],
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.stderr
    assert message in lines[0] and "a.tgz:bad.safetensors" in lines[0]
    assert not store.exists()


HOSTILE = {
    "dotdot": ([("../evil.safetensors", {"data": b"x"})], "'../evil.safetensors' has a '..'"),
    "nested-dotdot": ([("ok/../../evil.safetensors", {"data": b"x"})], "has a '..'"),
    "absolute": ([("/tmp/evil.safetensors", {"data": b"x"})], "has an absolute path"),
    "symlink": (
        [("link.safetensors", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})],
        "'link.safetensors' is a link (to '/etc/passwd')",
    ),
    "hardlink": (
        [("hard.safetensors", {"type": tarfile.LNKTYPE, "linkname": "0.safetensors"})],
        "'hard.safetensors' is a link",
    ),
    "device": ([("dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})], "device"),
    "fifo": ([("pipe", {"type": tarfile.FIFOTYPE})], "'pipe' is a device or FIFO"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_refused_and_write_nothing(tmp_path, case):
    members, message = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    path = work / "evil.tgz"
    with tarfile.open(path, "w:gz") as tar:
        member(tar, "0.safetensors", save(fp16_state_dict(0)))
        for name, attrs in members:
            data = attrs.pop("data", b"")
            member(tar, name, data, **attrs)
    before = tree(tmp_path)
    store = work / "s.zarr"
    r = runner.invoke(
        app,
        ["import", str(path), "--arch", "optunet", "--data", str(mnist_like(work))]
        + ["--store", str(store)],
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.stderr
    assert "evil.tgz: member" in lines[0] and message in lines[0] and "refused" in lines[0]
    assert not store.exists()
    assert tree(tmp_path) - before == {"work/mnistish.npz"}
    assert not (tmp_path / "evil.safetensors").exists()
    assert not Path("/tmp/evil.safetensors").exists()


def test_damaged_and_empty_archives(tmp_path):
    archive, _ = release_archive(tmp_path)
    ds = load_dataset(None, mnist_like(tmp_path))
    whole = archive.read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    # cut in the members, cut in the gzip trailer only (members whole: the CRC tells), flipped
    for damaged in (whole[:-200], whole[:-4], bytes(flipped)):
        bad = tmp_path / "bad.tgz"
        bad.write_bytes(damaged)
        with pytest.raises(DataError, match=r"^bad.tgz(: not a readable .tgz archive|:)"):
            import_folder(tmp_path / "s.zarr", bad, ds, OPTUNET)
    empty = make_tgz(tmp_path / "empty.tgz", {"README": b"hi"})
    with pytest.raises(UsageError, match="holds no"):
        import_folder(tmp_path / "s.zarr", empty, ds, OPTUNET)
    bad_id = make_tgz(tmp_path / "bad_id.tgz", {"-x.safetensors": save(fp16_state_dict(0))})
    with pytest.raises(DataError, match="valid model id"):
        import_folder(tmp_path / "s.zarr", bad_id, ds, OPTUNET)
    assert not (tmp_path / "s.zarr").exists()


def test_dtype_casts_and_overflow(tmp_path):
    folder = tmp_path / "f32"
    folder.mkdir()
    sd = {k: v.float() for k, v in fp16_state_dict(0).items()}
    (folder / "a.safetensors").write_bytes(save(sd))
    ds = load_dataset(None, mnist_like(tmp_path))
    res = import_folder(tmp_path / "s.zarr", folder, ds, OPTUNET, dtype="float16")
    assert res.dtype == "float16" and list(res.rows["sha256"]) == [
        row_sha256(row_of(sd).astype(np.float16))
    ]
    sd["fc2.bias"][0] = 1e6  # finite in float32, Inf in float16
    (folder / "b.safetensors").write_bytes(save(sd))
    with pytest.raises(DataError, match="b.safetensors: non-finite .* in fc2.bias as float16"):
        import_folder(tmp_path / "s.zarr", folder, ds, OPTUNET, dtype="float16")
    with pytest.raises(UsageError, match="dtype"):
        import_folder(tmp_path / "s.zarr", folder, ds, OPTUNET, dtype="int8")


def test_conv_activation_flags_are_refused(tmp_path):
    archive, _ = release_archive(tmp_path)
    r = runner.invoke(
        app,
        ["import", str(archive), "--arch", "optunet", "--activation", "tanh"]
        + ["--data", str(mnist_like(tmp_path)), "--store", str(tmp_path / "s.zarr")],
    )
    assert r.exit_code == 2 and "--activation" in r.stderr


# --- export of conv nets ------------------------------------------------------------------


@pytest.fixture
def conv_store(tmp_path):
    archive, _ = release_archive(tmp_path)
    store = tmp_path / "s.zarr"
    ds = load_dataset(None, mnist_like(tmp_path))
    import_folder(store, archive, ds, OPTUNET, population="opt", dtype="float32")
    return Store.open(store)


def test_conv_exports_load_into_the_module(conv_store, tmp_path):
    st = conv_store
    man = st.manifest()
    params = st.read_params(man)
    x = torch.randn(7, 1, 28, 28)
    want = OPTUNET.forward(torch.from_numpy(params), x)
    for fmt in ("safetensors", "torch"):
        out = tmp_path / fmt
        export(st, man, fmt, out)
        card = (out / "README.md").read_text()
        assert "arch_from_json(arch_json).module()" in card and "ArchSpec.from_json" not in card
        meta = pd.read_parquet(out / "metadata.parquet")
        for k, rec in enumerate(man.itertuples()):
            spec = arch_from_json(meta.loc[meta["model_id"] == rec.model_id, "arch"].iloc[0])
            assert spec == OPTUNET
            f = out / (rec.model_id + (".safetensors" if fmt == "safetensors" else ".pt"))
            sd = load_file(f) if fmt == "safetensors" else torch.load(f, weights_only=True)
            assert sorted(sd) == sorted(t.name for t in OPTUNET.layout)
            net = spec.module().eval()
            net.load_state_dict(sd)
            with torch.no_grad():
                torch.testing.assert_close(net(x), want[k])
        # and back: the same rows (arch from the safetensors header, or inferred)
        back = import_folder(
            st, out, load_dataset(None, mnist_like(tmp_path)), population=f"back_{fmt}"
        )
        assert sorted(back.rows["sha256"]) == sorted(man["sha256"])
    export(st, man, "npz", tmp_path / "npz")
    with np.load(tmp_path / "npz" / "models.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["params"], params)
        assert arch_from_json(str(z["arch"])) == OPTUNET
        assert json.loads(str(z["layout"]))[0]["name"] == "conv1.weight"
    export(st, man, "safetensors", tmp_path / "half", dtype="float16")
    sd = load_file(tmp_path / "half" / f"{man['model_id'].iloc[0]}.safetensors")
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert st.verify() == []


def test_mixed_mlp_and_conv_card(conv_store, trained_store, tmp_path):
    from bnnctl.export import model_card

    mlp = Store.open(trained_store).manifest().head(1)
    meta = pd.concat([conv_store.manifest().head(1), mlp], ignore_index=True)
    card = model_card(meta.assign(export_dtype="float32"), "safetensors")
    assert 'spec.module() if spec.kind == "cnn" else build(spec)' in card


# --- CIFAR-10, binary version -------------------------------------------------------------


def cifar_folder(root: Path, n: int = 3, damage: str | None = None) -> tuple[Path, dict]:
    """The six CIFAR-10 binary batches with ``n`` random records each; ``raw`` by file."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    raw = {}
    for i, name in enumerate(CIFAR_FILES):
        rec = rng.integers(0, 256, size=(n, CIFAR_RECORD), dtype=np.uint8)
        rec[:, 0] = (np.arange(n) + 3 * i) % 10
        data = rec.tobytes()
        if name == damage:
            data = data[:-5]
        (root / name).write_bytes(data)
        raw[name] = rec
    return root, raw


def test_cifar10_binary_reads_flat_channel_major(tmp_path):
    folder, raw = cifar_folder(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset(None, folder)
    assert ds.name == "cifar10" and ds.x_train.shape == (15, 3072) and ds.x_test.shape == (3, 3072)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    first = raw["data_batch_1.bin"]
    np.testing.assert_array_equal(ds.y_train[:3], first[:, 0].astype(np.int64))
    img = ds.x_train[1].reshape(3, 32, 32)  # C, H, W
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31)]:
        assert img[c, h, w] == np.float32(first[1, 1 + c * 1024 + h * 32 + w]) / np.float32(255)
    np.testing.assert_array_equal(ds.x_test, raw["test_batch.bin"][:, 1:] / np.float32(255))
    # the parent folder (as the archive extracts) and --dataset cifar10 name it the same
    assert load_dataset("cifar10", tmp_path).sha256 == ds.sha256
    # a cifar_small population imports and evaluates on it
    spec = parse_arch("cifar_small")
    ck = tmp_path / "ck"
    ck.mkdir()
    for k in range(2):
        (ck / f"m{k}.safetensors").write_bytes(save(fp16_state_dict(k, spec)))
    res = import_folder(tmp_path / "s.zarr", ck, ds, spec)
    assert len(res.rows) == 2 and res.rows["test_acc"].between(0, 1).all()


def test_cifar10_bad_inputs(tmp_path):
    folder, _ = cifar_folder(tmp_path / "cut", damage="data_batch_3.bin")
    with pytest.raises(DataError, match=r"data_batch_3.bin: 9214 bytes is not a whole number"):
        load_dataset(None, folder)
    missing, _ = cifar_folder(tmp_path / "missing")
    (missing / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match="no data_batch_5.bin"):
        load_dataset(None, missing)
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"\x80\x04pickle")
    for path in (py, py / "data_batch_1", tmp_path):
        with pytest.raises(DataError, match="never unpickles"):
            load_dataset(None, path)
    with pytest.raises(DataError, match="pass the folder"):
        load_dataset(None, missing / "test_batch.bin")
    with pytest.raises(UsageError, match="--data FOLDER"):
        load_dataset("cifar10")
    r = runner.invoke(
        app,
        ["train", "--data", str(folder), "--arch", "cifar_small", "--seeds", "1"]
        + ["--store", str(tmp_path / "s.zarr")],
    )
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "data_batch_3.bin" in lines[0]


# --- export as a release archive ------------------------------------------------------------


def export_cli(store: Path, *args: str):
    return runner.invoke(
        app, ["export", "--where", "population == 'opt'", "--store", str(store)] + list(args)
    )


def one_line_usage_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, (r.exit_code, r.stderr)
    return lines[0]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_archive_export_imports_back_with_the_same_sha256(conv_store, tmp_path, dtype):
    st = conv_store
    man = st.manifest().sort_values("model_id").reset_index(drop=True)
    path = tmp_path / "s.zarr"  # conv_store's
    out = tmp_path / "zoo.tgz"
    r = export_cli(path, "--dtype", dtype, "--archive", str(out))
    assert r.exit_code == 0, r.output
    assert f"to {out} (1 archive)" in r.stderr
    names = sorted(f"{m}.safetensors" for m in man["model_id"])
    with tarfile.open(out, "r:gz") as tar:
        infos = tar.getmembers()
        assert [m.name for m in infos] == sorted([*names, "metadata.parquet", "README.md"])
        assert all(m.isfile() and m.mtime == 0 and m.uid == m.gid == 0 for m in infos)
        assert all(m.uname == m.gname == "" and m.mode == 0o644 for m in infos)
        members = {m.name: tar.extractfile(m).read() for m in infos}  # type: ignore[union-attr]
    meta = pd.read_parquet(io.BytesIO(members["metadata.parquet"]))
    assert sorted(meta["file"]) == names and (meta["export_dtype"] == dtype).all()
    assert members["README.md"].decode().startswith("---\nlibrary_name: bnnctl")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # the same rows again: byte-identical (and --force replaces it with the same bytes)
    again = tmp_path / "again.tar.gz"
    assert export_cli(path, "--dtype", dtype, "--archive", str(again)).exit_code == 0
    assert again.read_bytes() == out.read_bytes()
    before = out.read_bytes()
    r = export_cli(path, "--dtype", dtype, "--archive", str(out), "--force")
    assert r.exit_code == 0 and out.read_bytes() == before
    # import into another store: the same sha256 per model, in the exported dtype
    other = tmp_path / "other.zarr"
    r = runner.invoke(
        app, ["import", str(out), "--data", str(mnist_like(tmp_path)), "--store", str(other)]
    )
    assert r.exit_code == 0, r.output
    back = Store.open(other).manifest().set_index("model_id")
    want = st.read_params(man).astype(dtype)
    assert sorted(back.index) == [f"zoo.{m}" for m in man["model_id"]]
    for k, m in enumerate(man["model_id"]):
        assert back.loc[f"zoo.{m}", "sha256"] == row_sha256(want[k])
        assert back.loc[f"zoo.{m}", "dtype"] == dtype
        if dtype == "float32":
            assert back.loc[f"zoo.{m}", "sha256"] == man.loc[k, "sha256"]
    # the imported rows compute what the plain nn.Module loaded from the member computes
    ost = Store.open(other)
    rows = ost.manifest().sort_values("model_id").reset_index(drop=True)
    params = torch.from_numpy(ost.read_params(rows))
    x = torch.randn(5, 1, 28, 28)
    got = OPTUNET.forward(params, x)
    for k, m in enumerate(man["model_id"]):
        sd = load(members[f"{m}.safetensors"])
        assert all(v.dtype == getattr(torch, dtype) for v in sd.values())
        net = OPTUNET.module().eval()
        net.load_state_dict({name: v.float() for name, v in sd.items()})
        with torch.no_grad():
            torch.testing.assert_close(got[k], net(x))
    assert ost.verify() == []


def test_archive_export_refusals_are_one_line(conv_store, tmp_path):
    path = tmp_path / "s.zarr"  # conv_store's
    existing = tmp_path / "have.tgz"
    existing.write_bytes(b"mine")
    before = tree(tmp_path)
    cases = [
        (["--archive", str(existing)], "exists; pass --force"),
        (["--to", "npz", "--archive", str(tmp_path / "n.tgz")], "not --to npz"),
        (["--to", "torch", "--archive", str(tmp_path / "t.tgz")], "not --to torch"),
        ([str(tmp_path / "folder"), "--archive", str(tmp_path / "f.tgz")], "not both"),
        ([], "missing destination"),
        (["--archive", str(tmp_path / "zoo.zip")], "must be named *.tgz or *.tar.gz"),
        (["--archive", str(tmp_path)], "is a folder"),
    ]
    for args, message in cases:
        line = one_line_usage_error(export_cli(path, *args))
        assert message in line, (args, line)
    assert tree(tmp_path) == before and existing.read_bytes() == b"mine"
    # the library refuses the same way
    with pytest.raises(UsageError, match="not `fmt` 'npz'"):
        export(conv_store, None, "npz", tmp_path / "x.tgz", where="kind == 'import'", archive=True)


def test_archive_export_crash_leaves_nothing(conv_store, tmp_path, monkeypatch):
    import bnnctl.export as ex

    def boom(path, files, level=6):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "write_tgz", boom)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export(conv_store, conv_store.manifest(), "safetensors", work / "a.tgz", archive=True)
    assert list(work.iterdir()) == []


def test_deterministic_safetensors_writer_is_read_back_by_the_safetensors_library(tmp_path):
    """bnnctl writes safetensors itself (the library orders metadata by hash, so files
    differ run to run); the library must read them back exactly."""
    from safetensors import safe_open
    from safetensors.numpy import load

    from bnnctl.export import safetensors_bytes

    rng = np.random.default_rng(0)
    tensors = {
        "conv1.weight": rng.normal(size=(2, 1, 4, 4)).astype(np.float16),
        "fc1.bias": rng.normal(size=(3,)).astype(np.float32),
        "fc2.weight": rng.normal(size=(10, 3)).astype(np.float32),
    }
    meta = {"model_id": "m.000001", "sha256": "ab" * 32, "arch": '{"kind": "cnn"}'}
    data = safetensors_bytes(tensors, meta)
    assert data == safetensors_bytes(tensors, dict(reversed(list(meta.items()))))
    back = load(data)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    (tmp_path / "m.safetensors").write_bytes(data)
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.metadata() == meta
