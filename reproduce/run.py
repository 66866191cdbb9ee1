"""Run the reproduction suite: one script per finding of Laurent et al. (ICLR 2024) and
Izmailov et al. (ICML 2021), adapted to MLPs on bnnctl's built-in data.

    python reproduce/run.py [--quick] [--only R1,R4] [--out DIR] [--keep-stores] [--threads N]

Each finding builds its populations with bnnctl's library API in a store of its own
(``DIR/stores/<id>.zarr``, removed when it is done unless ``--keep-stores``) and writes
``DIR/<id>_<name>.csv``, ``.md`` and ``.png``. ``--quick`` runs tiny populations (CI,
about a minute); the default is the full run REPRODUCTION.md reports. Exit 0 when every
finding ran, 1 when one failed, 2 on a usage error."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

FINDINGS = {
    "R1": "r1_fig1",
    "R2": "r2_excess_mass",
    "R3": "r3_modes",
    "R4": "r4_mmd",
    "R5": "r5_multimode",
    "R6": "r6_hmc_reference",
    "R7": "r7_largest_index",
}


class UsageError(ValueError):
    pass


def parse_only(text: str | None) -> list[str]:
    """``"R1,r4"`` -> ``["R1", "R4"]`` in suite order; an unknown or empty id is a
    :class:`UsageError` naming it."""
    if text is None:
        return list(FINDINGS)
    ids = [t.strip().upper() for t in text.split(",")]
    bad = [t for t in ids if t not in FINDINGS]
    if bad or not ids:
        shown = ", ".join(repr(b) for b in bad) or repr(text)
        raise UsageError(f"--only: unknown finding {shown}; choose from {','.join(FINDINGS)}")
    return [f for f in FINDINGS if f in ids]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny populations (CI)")
    p.add_argument("--only", help="comma-separated finding ids, e.g. R1,R4")
    p.add_argument("--out", default="reproduction", help="output folder (default reproduction/)")
    p.add_argument("--keep-stores", action="store_true", help="keep each finding's store")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on the shared 2-core machine, 2 threads trained "
        "4.5x slower than 1 when other jobs were running)",
    )
    a = p.parse_args(argv)
    if a.threads < 1:
        print(f"error: --threads must be at least 1, got {a.threads}", file=sys.stderr)
        return 2
    try:
        ids = parse_only(a.only)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        return run_findings(ids, Path(a.out), a.quick, a.keep_stores)
    finally:
        torch.set_num_threads(before)  # a caller in the same process (tests) gets its own back


def run_findings(ids: list[str], out: Path, quick: bool, keep_stores: bool) -> int:
    """Run the findings ``ids`` into ``out``; print and write ``timings.tsv``; 1 when one
    failed (its traceback is printed and the others still run), else 0."""
    from reproduce import common

    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    times, failed = {}, []
    for fid in ids:
        module = importlib.import_module(f"reproduce.{FINDINGS[fid]}")
        t0 = time.perf_counter()
        try:
            common.run_one(module, out, quick, keep_stores)
        except Exception:  # report and go on: one finding's failure is not the suite's
            traceback.print_exc()
            failed.append(fid)
        times[fid] = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    lines = [f"{fid}\t{'FAILED' if fid in failed else 'ok'}\t{s:.1f} s" for fid, s in times.items()]
    summary = "\n".join(lines + [f"total\t{'quick' if quick else 'full'}\t{total:.1f} s"])
    (out / "timings.tsv").write_text(summary + "\n")
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
