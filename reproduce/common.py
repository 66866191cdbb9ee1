"""Shared helpers of the reproduction scripts: where each finding writes, its own store,
tables (CSV + Markdown) and small figures. Each finding is a module ``rN_*.py`` with
``ID``, ``TITLE`` and ``run(ctx) -> pandas.DataFrame``; ``run.py`` runs them."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

DPI = 80


@dataclass
class Ctx:
    """One finding's run: its output folder, quick or full, and its store."""

    fid: str
    out: Path
    quick: bool
    keep_store: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def store_path(self) -> Path:
        return self.out / "stores" / f"{self.fid}.zarr"

    def store(self):
        """A fresh store of this finding's own (an old one from an earlier run is removed,
        so that a quick and a full run never mix)."""
        from bnnctl import Store

        shutil.rmtree(self.store_path, ignore_errors=True)
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        return Store.open(str(self.store_path), create=True)

    def pick(self, quick, full):
        return quick if self.quick else full

    def log(self, msg: str) -> None:
        print(f"[{self.fid}] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        """A line that goes under the Markdown table."""
        self.notes.append(msg)

    def table(self, df: pd.DataFrame, name: str, title: str) -> None:
        """Write ``<fid>_<name>.csv`` and ``.md`` under the out folder."""
        stem = self.out / f"{self.fid}_{name}"
        df.to_csv(f"{stem}.csv", index=False)
        lines = [f"# {self.fid} — {title}", "", f"Mode: {'quick' if self.quick else 'full'}", ""]
        lines += [to_markdown(df), ""]
        lines += [f"- {n}" for n in self.notes]
        Path(f"{stem}.md").write_text("\n".join(lines) + "\n")

    def figure(self, fig, name: str) -> Path:
        import matplotlib.pyplot as plt

        path = self.out / f"{self.fid}_{name}.png"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        return path

    def done(self) -> None:
        if not self.keep_store:
            shutil.rmtree(self.store_path, ignore_errors=True)


def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub table without the optional ``tabulate`` dependency."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def setup_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")


def run_one(module, out: Path, quick: bool, keep_store: bool = False) -> pd.DataFrame:
    """Run one finding module into ``out``; returns its main table."""
    setup_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(module.ID, out, quick, keep_store)
    t0 = time.perf_counter()
    ctx.log(f"{module.TITLE} ({'quick' if quick else 'full'})")
    try:
        table = module.run(ctx)
    finally:
        ctx.done()
    ctx.log(f"done in {time.perf_counter() - t0:.1f} s")
    return table


def main_single(module) -> None:
    """``python reproduce/rN_x.py [--quick] [--out DIR]``: one finding on its own."""
    p = argparse.ArgumentParser(description=module.TITLE)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="reproduction")
    p.add_argument("--keep-stores", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (see run.py)")
    a = p.parse_args()
    import torch

    torch.set_num_threads(max(1, a.threads))
    table = run_one(module, Path(a.out), a.quick, a.keep_stores)
    print(to_markdown(table))


Runner = Callable[[Ctx], pd.DataFrame]
