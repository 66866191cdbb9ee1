"""Light commands start fast: they never import torch, matplotlib or scikit-learn.

Each case runs ``python -X importtime -m bnnctl ...`` in a subprocess and reads the names of
the modules it imported from stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "matplotlib", "sklearn"}
STORE = "{store}"


def imported(args: list[str]) -> set[str]:
    """Top-level names of the modules ``python -X importtime ARGS`` imports; fails, showing
    the rest of stderr, if it exits non-zero."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    lines = r.stderr.splitlines()
    rest = "\n".join(line for line in lines if not line.startswith("import time:"))
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{rest}"
    names = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in lines
        if line.startswith("import time:")
    }
    return names


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny population of 4 moons models, trained through the CLI."""
    path = tmp_path_factory.mktemp("startup") / "s.zarr"
    args = ["--seeds", "4", "--dataset", "moons", "--arch", "mlp:2-1", "--epochs", "1"]
    r = subprocess.run(
        [sys.executable, "-m", "bnnctl", "train", *args, "--store", str(path), "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return path


def test_importtime_output_is_understood() -> None:
    assert "torch" in imported(["-c", "import torch"])


def test_import_bnnctl_cli_skips_heavy_modules() -> None:
    heavy = sorted(imported(["-c", "import bnnctl.cli"]) & HEAVY)
    assert not heavy, f"import bnnctl.cli imports {heavy}"


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["ls", "--store", STORE],
        ["ls", "--help"],
        ["verify", "--store", STORE],
        ["stats", "--store", STORE],
        ["export", "--help"],
        ["train", "--help"],
        ["sample", "--help"],
    ],
    ids=" ".join,
)
def test_light_command_skips_heavy_modules(args: list[str], store: Path) -> None:
    argv = [str(store) if a == STORE else a for a in args]
    heavy = sorted(imported(["-m", "bnnctl", *argv]) & HEAVY)
    assert not heavy, f"bnnctl {' '.join(args)} imports {heavy}"
