"""The bad-input corpus: every command, fed what a careful but hostile user might give it.

Each case asserts the error boundary's promise (README, "Bad input"): exactly one line on
stderr, the documented exit code (2 usage, 1 data or store, 3 environment), the store's
bytes unchanged, and no marker file from any attempt to inject code.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from deltalake import DeltaTable, write_deltalake
from safetensors.numpy import save_file
from typer.testing import CliRunner

from bnnctl.cli import app

runner = CliRunner()
MARKER = "PWNED"
INJECT = f"__import__('os').system('touch {MARKER}')"

# --- store and file setups ----------------------------------------------------------------


def _table(store: Path) -> DeltaTable:
    return DeltaTable(str(store / "manifest"))


def _rewrite(store: Path, edit: Callable) -> None:
    """Replace the manifest's rows by ``edit(df)`` in one Delta commit (as a foreign tool
    could)."""
    import pyarrow as pa

    df = edit(_table(store).to_pandas())
    write_deltalake(
        str(store / "manifest"),
        pa.Table.from_pandas(df, preserve_index=False),
        mode="overwrite",
        schema_mode="overwrite",
    )


def drop_column(name: str) -> Callable[[Path, Path], None]:
    return lambda store, tmp: _rewrite(store, lambda df: df.drop(columns=[name]))


def set_cell(column: str, value) -> Callable[[Path, Path], None]:
    def edit(df):
        df[column] = df[column].astype(object)
        df.loc[df.index[0], column] = value
        return df

    return lambda store, tmp: _rewrite(store, edit)


def duplicate_rows(store: Path, tmp: Path) -> None:
    import pyarrow as pa

    df = _table(store).to_pandas().head(2)
    write_deltalake(str(store / "manifest"), pa.Table.from_pandas(df), mode="append")


def _first_array(store: Path) -> Path:
    row = _table(store).to_pandas().sort_values("model_id").iloc[0]
    return store / row["array"]


def delete_chunk(store: Path, tmp: Path) -> None:
    shutil.rmtree(_first_array(store) / "c")


def truncate_chunk(store: Path, tmp: Path) -> None:
    shard = next(p for p in (_first_array(store) / "c").rglob("*") if p.is_file())
    shard.write_bytes(shard.read_bytes()[:100])


def reshape_array(store: Path, tmp: Path) -> None:
    path = _first_array(store)
    shutil.rmtree(path)
    zarr.create_array(str(path), shape=(4, 7), dtype="float32", chunks=(1, 7))[:] = 1.0


def header(value) -> Callable[[Path, Path], None]:
    def edit(store: Path, tmp: Path) -> None:
        meta = json.loads((store / "zarr.json").read_text())
        meta["attributes"]["bnnctl"]["format_version"] = value
        (store / "zarr.json").write_text(json.dumps(meta))

    return edit


def garbage_header(store: Path, tmp: Path) -> None:
    (store / "zarr.json").write_text("{not json")


def npz(name: str, **over) -> Callable[[Path, Path], None]:
    def make(store: Path, tmp: Path) -> None:
        arrays = dict(
            x_train=np.zeros((8, 2), np.float32),
            y_train=np.arange(8) % 2,
            x_test=np.zeros((4, 2), np.float32),
            y_test=np.arange(4) % 2,
        )
        np.savez(tmp / name, **{**arrays, **over})

    return make


def write(name: str, data: bytes) -> Callable[[Path, Path], None]:
    def make(store: Path, tmp: Path) -> None:
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return make


def checkpoints(name: str, *, nan: bool = False, torch_file: bool = False, keys=None):
    """A folder ``name`` holding one mlp:2-3-2 checkpoint."""

    def make(store: Path, tmp: Path) -> None:
        rng = np.random.default_rng(0)
        sd = {
            "0.weight": rng.normal(size=(3, 2)).astype(np.float32),
            "0.bias": np.zeros(3, np.float32),
            "2.weight": rng.normal(size=(2, 3)).astype(np.float32),
            "2.bias": np.zeros(2, np.float32),
        }
        if keys:
            sd = {k: sd[k] for k in keys}
        if nan:
            sd["0.weight"][0, 0] = np.nan
        folder = tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        if torch_file:
            torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, folder / "a\nb.pt")
        else:
            save_file(sd, str(folder / "m0.safetensors"))

    return make


class Evil:
    """A pickle that would run code when loaded without ``weights_only``."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


def pickle_bomb(store: Path, tmp: Path) -> None:
    (tmp / "evil").mkdir()
    torch.save({"0.weight": Evil()}, tmp / "evil" / "m.pt")


def tgz(name: str, member: str, **attrs) -> Callable[[Path, Path], None]:
    """An archive ``name`` holding one good mlp:2-3-2 checkpoint and a hostile ``member``
    (an absolute or ``..`` path, or a link: TarInfo ``attrs``)."""

    def make(store: Path, tmp: Path) -> None:
        checkpoints("ok")(store, tmp)
        good = (tmp / "ok" / "m0.safetensors").read_bytes()
        with tarfile.open(tmp / name, "w:gz") as tar:
            for mname, data, extra in (("m0.safetensors", good, {}), (member, good, attrs)):
                info = tarfile.TarInfo(mname)
                info.size = 0 if extra else len(data)
                for k, v in extra.items():
                    setattr(info, k, v)
                tar.addfile(info, None if extra else io.BytesIO(data))

    return make


def cifar(name: str, cut: str) -> Callable[[Path, Path], None]:
    """A CIFAR-10 binary folder (2 records per batch) whose file ``cut`` lost 7 bytes."""

    def make(store: Path, tmp: Path) -> None:
        from bnnctl.data import CIFAR_FILES, CIFAR_RECORD

        for f in CIFAR_FILES:
            data = bytes([3]) + bytes(CIFAR_RECORD - 1)
            data = (data * 2)[: -7 if f == cut else None]
            write(f"{name}/{f}", data)(store, tmp)

    return make


def make_file(name: str) -> Callable[[Path, Path], None]:
    return write(name, b"not a folder")


def non_empty_dir(name: str) -> Callable[[Path, Path], None]:
    return write(f"{name}/other.txt", b"x")


# --- the corpus ---------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    msg: str
    setup: Callable[[Path, Path], None] | None = None
    input: str | None = None
    store_arg: bool = True  # append --store {store}


MLP = ["--arch", "mlp:64-8-10", "--epochs", "1"]
CASES = [
    # train: numeric ranges, names, architectures, data
    Case("train-seeds-0", ["train", "--seeds", "0"], 2, "--seeds must be at least 1"),
    Case("train-seed-start-neg", ["train", "--seed-start", "-1"], 2, "--seed-start"),
    Case("train-seed-huge", ["train", "--seed-start", "99999999999999999999"], 2, "at most 2**62"),
    Case("train-seed-int64", ["train", "--seed-start", str(2**62)], 2, "at most 2**62"),
    Case("train-lr-inf", ["train", "--lr", "inf"], 2, "--lr must be positive and finite"),
    Case("train-lr-nan", ["train", "--lr", "nan"], 2, "--lr must be positive and finite"),
    Case("train-lr-neg", ["train", "--lr", "-1"], 2, "--lr"),
    Case("train-epochs-0", ["train", "--epochs", "0"], 2, "--epochs"),
    Case("train-batch-0", ["train", "--batch-size", "0"], 2, "--batch-size"),
    Case("train-momentum", ["train", "--momentum", "1.5"], 2, "--momentum"),
    Case("train-wd-neg", ["train", "--weight-decay", "-1"], 2, "--weight-decay"),
    Case("train-wd-nan", ["train", "--weight-decay", "nan"], 2, "--weight-decay"),
    Case("train-dropout-1", ["train", "--dropout", "1"], 2, "--dropout"),
    Case("train-dropout-neg", ["train", "--dropout", "-0.1"], 2, "--dropout"),
    Case("train-stop-acc-alone", ["train", "--stop-below-acc", "0.15"], 2, "--stop-after-epoch"),
    Case("train-stop-epoch-alone", ["train", "--stop-after-epoch", "3"], 2, "--stop-below-acc"),
    Case(
        "train-stop-acc-range",
        ["train", "--stop-below-acc", "1.5", "--stop-after-epoch", "3"],
        2,
        "--stop-below-acc must be in [0, 1]",
    ),
    Case(
        "train-stop-epoch-range",
        ["train", "--stop-below-acc", "0.1", "--stop-after-epoch", "5", "--epochs", "5"],
        2,
        "--stop-after-epoch must be in 1..4",
    ),
    Case("train-block-0", ["train", "--block-size", "0"], 2, "--block-size"),
    Case("train-block-huge", ["train", "--block-size", "70000"], 2, "--block-size"),
    Case("train-jobs-0", ["train", "--jobs", "0"], 2, "--jobs"),
    Case("train-scheduler-0", ["train", "--scheduler", "local:0"], 2, "--scheduler local:N"),
    Case("train-scheduler-word", ["train", "--scheduler", "foo"], 2, "--scheduler must be"),
    Case("train-device-word", ["train", "--device", "gpu"], 2, "unknown --device 'gpu'"),
    Case("train-device-absent", ["train", "--device", "cuda:99"], 3, "--device cuda:99 asked"),
    Case("sample-device-absent", ["sample", "--device", "cuda:99"], 3, "--device cuda:99 asked"),
    Case("sample-device-word", ["sample", "--device", "cuda:x"], 2, "unknown --device"),
    Case("stats-device-word", ["stats", "--device", "tpu"], 2, "unknown --device 'tpu'"),
    Case("canonicalize-device-word", ["canonicalize", "--device", "gpu0"], 2, "unknown --device"),
    Case("import-device-word", ["import", "{tmp}", "--device", "xla"], 2, "unknown --device"),
    Case("train-arch-oom", ["train", "--arch", "mlp:64-100000000-10", "-p", "big"], 2, "GB"),
    Case("train-arch-outputs", ["train", "--arch", "mlp:64-8-3"], 2, "3 outputs"),
    Case("train-arch-name", ["train", "--arch", "resnet18"], 2, "cannot parse architecture"),
    Case("train-arch-zero", ["train", "--arch", "mlp:64-0-10"], 2, "positive widths"),
    Case("train-dataset", ["train", "--dataset", "imagenet"], 2, "unknown dataset"),
    Case("train-population-space", ["train", "-p", "a b"], 2, "population name"),
    Case("train-population-dots", ["train", "-p", "../x"], 2, "population name"),
    Case("train-population-inject", ["train", "-p", f"$({INJECT})"], 2, "population name"),
    Case("train-population-newline", ["train", "-p", "a\nb"], 2, "population name"),
    Case(
        "train-conflict",
        ["train", "--seeds", "2", "--seed-start", "8", "--lr", "0.5"],
        2,
        "population 'digits' was trained with",
    ),
    Case("train-data-missing", ["train", "--data", "{tmp}/none.npz"], 1, "none.npz"),
    Case(
        "train-data-garbage",
        ["train", "--data", "{tmp}/g.npz"],
        1,
        "cannot read",
        write("g.npz", b"garbage"),
    ),
    Case(
        "train-data-nan",
        ["train", "--data", "{tmp}/n.npz"],
        1,
        "NaN",
        npz("n.npz", x_train=np.full((8, 2), np.nan)),
    ),
    Case(
        "train-data-labels",
        ["train", "--data", "{tmp}/l.npz"],
        1,
        "label",
        npz("l.npz", y_train=np.full(8, -3)),
    ),
    Case(
        "train-data-shapes",
        ["train", "--data", "{tmp}/s.npz"],
        1,
        "x_test",
        npz("s.npz", x_test=np.zeros((4, 5), np.float32)),
    ),
    Case(
        "train-idx-cut",
        ["train", "--data", "{tmp}/idx"],
        1,
        "train-images-idx3-ubyte",
        write("idx/train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00"),
    ),
    Case(
        "train-idx-fake-gz",
        ["train", "--data", "{tmp}/gz"],
        1,
        "train-images-idx3-ubyte.gz",
        write("gz/train-images-idx3-ubyte.gz", b"not gzip at all"),
    ),
    Case(
        "train-store-proto",
        ["train", *MLP, "--store", "nosuchproto://x"],
        2,
        "nosuchproto",
        store_arg=False,
    ),
    Case(
        "train-store-gs", ["train", *MLP, "--store", "gs://bucket/x"], 3, "gcsfs", store_arg=False
    ),
    Case(
        "train-store-file",
        ["train", *MLP, "--store", "{tmp}/f"],
        1,
        "regular file",
        make_file("f"),
        store_arg=False,
    ),
    Case(
        "train-store-foreign",
        ["train", *MLP, "--store", "{tmp}/d"],
        1,
        "not empty",
        non_empty_dir("d"),
        store_arg=False,
    ),
    # sample
    Case("sample-chains-0", ["sample", "--chains", "0"], 2, "--chains"),
    Case("sample-samples-0", ["sample", "--samples", "0"], 2, "--samples"),
    Case("sample-temp-0", ["sample", "--temperature", "0"], 2, "--temperature"),
    Case("sample-temp-nan", ["sample", "--temperature", "nan"], 2, "--temperature"),
    Case("sample-step-neg", ["sample", "--step-size", "-1"], 2, "--step-size"),
    Case("sample-prior-0", ["sample", "--prior-var", "0"], 2, "--prior-var"),
    Case("sample-friction", ["sample", "--method", "sghmc", "--friction", "2"], 2, "--friction"),
    Case("sample-thin-0", ["sample", "--thin", "0"], 2, "--thin"),
    Case("sample-burn-neg", ["sample", "--burn-in", "-1"], 2, "--burn-in"),
    Case("sample-leapfrog-0", ["sample", "--method", "hmc", "--leapfrog", "0"], 2, "--leapfrog"),
    Case("sample-rank-0", ["sample", "--method", "swag", "--rank", "0"], 2, "--rank"),
    Case("sample-noise-0", ["sample", "--noise-std", "0"], 2, "--noise-std"),
    Case("sample-seed-neg", ["sample", "--seed", "-1"], 2, "--seed"),
    Case(
        "sample-chains-oom",
        ["sample", "--chains", "100000000", "--population", "big"],
        2,
        "--chains",
    ),
    Case("sample-segment-0", ["sample", "--segment", "0"], 2, "--segment"),
    Case("sample-batch-0", ["sample", "--batch-size", "0"], 2, "--batch-size"),
    Case("sample-dropout", ["sample", "--dropout", "2"], 2, "--dropout"),
    Case("sample-step-nan", ["sample", "--step-size", "nan"], 2, "--step-size"),
    Case("sample-prior-inf", ["sample", "--prior-var", "inf"], 2, "--prior-var"),
    Case(
        "sample-friction-nan", ["sample", "--method", "sghmc", "--friction", "nan"], 2, "--friction"
    ),
    Case("sample-method", ["sample", "--method", "nuts"], 2, "'nuts' is not one of"),
    Case("sample-from-column", ["sample", "--from", "nope > 1"], 2, "unknown column 'nope'"),
    Case("sample-from-inject", ["sample", "--from", INJECT], 2, "--from"),
    Case("sample-from-empty", ["sample", "--from", "seed > 999"], 2, "selects no"),
    Case("sample-from-corrupt", ["sample", "--from", "seed < 2"], 1, "sha256", delete_chunk),
    # canonicalize
    Case("canon-mode-tol-neg", ["canonicalize", "--mode-tol", "-1"], 2, "--mode-tol"),
    Case("canon-mode-tol-nan", ["canonicalize", "--mode-tol", "nan"], 2, "--mode-tol"),
    Case("canon-symmetries", ["canonicalize", "--symmetries", "rot"], 2, "--symmetries"),
    Case("canon-key", ["canonicalize", "--key", "rank"], 2, "'rank' is not one of"),
    Case("canon-align", ["canonicalize", "--align-to", "no.such"], 2, "no.such"),
    Case("canon-where-syntax", ["canonicalize", "--where", "seed >"], 2, "--where"),
    Case("canon-no-sha", ["canonicalize"], 1, "sha256", drop_column("sha256")),
    Case("canon-no-id", ["canonicalize"], 1, "model_id", drop_column("model_id")),
    Case("canon-bad-arch", ["canonicalize"], 1, "arch", set_cell("arch", "{not json")),
    Case("canon-duplicates", ["canonicalize"], 1, "duplicate", duplicate_rows),
    Case("canon-reshaped", ["canonicalize"], 1, "params/digits", reshape_array),
    Case("canon-truncated", ["canonicalize"], 1, "params/digits", truncate_chunk),
    Case("canon-deleted", ["canonicalize"], 1, "sha256", delete_chunk),
    # ls
    Case("ls-inject", ["ls", "--where", INJECT], 2, "--where"),
    Case("ls-dunder", ["ls", "--where", "seed.__class__ == 1"], 2, "--where"),
    Case("ls-at", ["ls", "--where", "@os == 1"], 2, "--where"),
    Case("ls-limit-neg", ["ls", "--limit", "-1"], 2, "--limit"),
    Case("ls-columns", ["ls", "--columns", "nope"], 2, "unknown column"),
    Case("ls-sort", ["ls", "--sort", "nope"], 2, "unknown column"),
    Case("ls-as-of-future", ["ls", "--as-of", "999"], 2, "--as-of"),
    Case("ls-as-of-text", ["ls", "--as-of", "yesterday"], 2, "--as-of"),
    Case("ls-header-bool", ["ls"], 1, "format version True", header(True)),
    Case("ls-header-99", ["ls"], 1, "format version 99", header(99)),
    Case("ls-header-garbage", ["ls"], 1, "Zarr", garbage_header),
    Case("ls-no-store", ["ls", "--store", "{tmp}/absent"], 1, "no bnnctl store", store_arg=False),
    Case("ls-format", ["ls", "--format", "xml"], 2, "'xml' is not one of"),
    # verify (problems go to stdout, one summary line to stderr)
    Case("verify-deleted", ["verify"], 1, "problem", delete_chunk),
    Case("verify-no-sha", ["verify"], 1, "problem", drop_column("sha256")),
    Case("verify-bad-arch", ["verify"], 1, "problem", set_cell("arch", "{not json")),
    Case("verify-duplicates", ["verify"], 1, "problem", duplicate_rows),
    Case("verify-reshaped", ["verify"], 1, "problem", reshape_array),
    # stats
    Case("stats-seed-neg", ["stats", "--seed", "-1"], 2, "--seed"),
    Case("stats-empty", ["stats", "--where", "seed > 999"], 2, "no rows"),
    Case("stats-pairs-0", ["stats", "--ensemble", "--pairs", "0"], 2, "--pairs"),
    Case("stats-ood-missing", ["stats", "--ensemble", "--ood", "{tmp}/none.npz"], 1, "none.npz"),
    Case("stats-corrupt", ["stats", "--ensemble"], 1, "sha256", delete_chunk),
    Case("stats-compare-bad", ["stats", "--compare", "seed <", "seed > 1"], 2, "--compare"),
    # export
    Case("export-proc", ["export", "/proc/x", "--where", "seed < 2"], 3, "/proc/x"),
    Case("export-ids", ["export", "{tmp}/o", "--ids", "no.such"], 2, "no.such"),
    Case("export-ids-empty", ["export", "{tmp}/o", "--ids", "-"], 2, "no model ids", input=""),
    Case("export-to", ["export", "{tmp}/o", "--to", "onnx", "--where", "seed<1"], 2, "'onnx'"),
    Case(
        "export-not-empty",
        ["export", "{tmp}/o", "--where", "seed < 1"],
        2,
        "--force",
        non_empty_dir("o"),
    ),
    Case("export-corrupt", ["export", "{tmp}/o", "--where", "seed < 8"], 1, "sha256", delete_chunk),
    Case(
        "export-row-past-end",
        ["export", "{tmp}/o", "--where", "seed < 8"],
        1,
        "row",
        set_cell("row", 99),
    ),
    # import
    Case("import-missing", ["import", "{tmp}/none"], 2, "none"),
    Case("import-empty", ["import", "{tmp}/empty"], 2, "holds no", non_empty_dir("empty")),
    Case(
        "import-newline-name",
        ["import", "{tmp}/ck", "--dataset", "moons"],
        1,
        "model id",
        checkpoints("ck", torch_file=True),
    ),
    Case(
        "import-nan",
        ["import", "{tmp}/ck", "--dataset", "moons"],
        1,
        "non-finite",
        checkpoints("ck", nan=True),
    ),
    Case(
        "import-keys",
        ["import", "{tmp}/ck", "--dataset", "moons"],
        1,
        "m0.safetensors",
        checkpoints("ck", keys=["0.weight", "2.bias"]),
    ),
    Case(
        "import-garbage",
        ["import", "{tmp}/gb", "--dataset", "moons"],
        1,
        "x.safetensors",
        write("gb/x.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"),
    ),
    Case("import-pickle", ["import", "{tmp}/evil", "--dataset", "moons"], 1, "m.pt", pickle_bomb),
    Case(
        "import-arch-mismatch",
        ["import", "{tmp}/ck", "--dataset", "digits"],
        2,
        "takes 2 inputs",
        checkpoints("ck"),
    ),
    # maintenance
    Case("compact-vacuum-neg", ["compact", "--vacuum", "-1"], 2, "--vacuum"),
    Case("compact-vacuum-nan", ["compact", "--vacuum", "nan"], 2, "--vacuum"),
    Case("gc-grace-nan", ["gc", "--grace", "nan"], 2, "--grace"),
    Case(
        "import-dropout",
        ["import", "{tmp}/ck", "--dataset", "moons", "--dropout", "-1"],
        2,
        "--dropout",
        checkpoints("ck"),
    ),
    Case("gc-grace-neg", ["gc", "--grace", "-1"], 2, "--grace"),
    Case(
        "migrate-absent",
        ["migrate", "--store", "{tmp}/absent"],
        1,
        "no bnnctl store",
        store_arg=False,
    ),
    # archives and CIFAR-10 data: hostile members and truncated files refused by name
    Case(
        "import-tgz-dotdot",
        ["import", "{tmp}/evil.tgz", "--arch", "mlp:2-3-2", "--dataset", "moons"],
        1,
        "member '../" + MARKER + ".safetensors' has a '..' path part",
        tgz("evil.tgz", f"../{MARKER}.safetensors"),
    ),
    Case(
        "import-tgz-absolute",
        ["import", "{tmp}/evil.tgz", "--arch", "mlp:2-3-2", "--dataset", "moons"],
        1,
        "has an absolute path",
        tgz("evil.tgz", f"/tmp/{MARKER}.safetensors"),
    ),
    Case(
        "import-tgz-symlink",
        ["import", "{tmp}/evil.tgz", "--dataset", "moons"],
        1,
        "member 'm1.safetensors' is a link",
        tgz("evil.tgz", "m1.safetensors", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
    ),
    Case(
        "import-tgz-device",
        ["import", "{tmp}/evil.tgz", "--dataset", "moons"],
        1,
        "is a device or FIFO",
        tgz("evil.tgz", "zero", type=tarfile.CHRTYPE, devmajor=1, devminor=5),
    ),
    Case(
        "import-tgz-garbage",
        ["import", "{tmp}/x.tgz", "--dataset", "moons"],
        1,
        "x.tgz: not a readable .tgz archive",
        write("x.tgz", b"\x1f\x8b\x08garbage"),
    ),
    Case(
        "train-cifar-truncated",
        ["train", "--data", "{tmp}/cifar", "--arch", "cifar_small", "--epochs", "1"],
        1,
        "data_batch_2.bin: 6139 bytes is not a whole number",
        cifar("cifar", "data_batch_2.bin"),
    ),
    Case(
        "import-cifar-truncated",
        ["import", "{tmp}/ck", "--data", "{tmp}/cifar", "--arch", "cifar_small"],
        1,
        "test_batch.bin",
        cifar("cifar", "test_batch.bin"),
    ),
    Case(
        "train-cifar-pickled",
        ["train", "--data", "{tmp}/cifar-10-batches-py", "--arch", "cifar_small"],
        1,
        "never unpickles",
        write("cifar-10-batches-py/data_batch_1", b"\x80\x04pickled"),
    ),
    Case("train-cifar10-no-data", ["train", "--dataset", "cifar10"], 2, "--data FOLDER"),
    # the app itself
    Case("unknown-command", ["frobnicate"], 2, "No such command", store_arg=False),
    Case("unknown-flag", ["ls", "--frob"], 2, "No such option"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_an_exit_code_and_no_change(case, store_copy, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # an injected `touch` would land here
    if case.setup:
        case.setup(store_copy, work)
    before = snapshot(store_copy)
    args = [a.replace("{tmp}", str(work)) for a in case.args]
    if case.store_arg:
        args += ["--store", str(store_copy)]
    r = runner.invoke(app, args, input=case.input)
    lines = r.stderr.strip().splitlines()
    assert r.exception is None or isinstance(r.exception, SystemExit), r.stderr
    assert len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and "Traceback" not in r.stderr
    assert case.msg in lines[0], lines[0]
    assert r.exit_code == case.code, (r.exit_code, lines[0])
    assert snapshot(store_copy) == before, "the store changed"
    assert not (work / MARKER).exists() and not Path(MARKER).exists()
    assert not any(work.glob("**/" + MARKER))


def test_the_corpus_is_large_and_covers_every_command():
    commands = {c.args[0] for c in CASES}
    assert len(CASES) >= 60
    assert {
        "train",
        "sample",
        "canonicalize",
        "ls",
        "verify",
        "stats",
        "export",
        "import",
    } <= commands
    assert {c.code for c in CASES} == {1, 2, 3}
