"""The reproduction suite (reproduce/): one cheap finding end to end in quick mode, and
the runner's refusal of an unknown finding id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from reproduce import run

ROOT = Path(__file__).resolve().parents[1]


def test_r7_quick_writes_its_table(tmp_path):
    assert run.main(["--quick", "--only", "r7", "--out", str(tmp_path)]) == 0
    csv = tmp_path / "R7_largest_index.csv"
    md = tmp_path / "R7_largest_index.md"
    assert md.exists() and (tmp_path / "R7_largest_index.png").exists()
    table = pd.read_csv(csv)
    expected = {"population", "n_models", "n_observations", "chi2", "dof", "p_value"}
    assert expected <= set(table.columns)
    assert len(table) == 5 and table["p_value"].between(0, 1).all()
    assert "| population |" in md.read_text()
    assert not (tmp_path / "stores" / "R7.zarr").exists()  # removed unless --keep-stores


def test_only_refuses_an_unknown_id():
    p = subprocess.run(
        [sys.executable, str(ROOT / "reproduce" / "run.py"), "--only", "R1,R9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "'R9'" in p.stderr and p.stderr.startswith("error:")
    assert p.stdout == ""
