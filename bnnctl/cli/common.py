"""What every command shares: the app, the error boundary, options and choices defined
once, progress on stderr and rows on stdout.

Nothing here (or in any command module at import time) imports torch: commands import
the engines they call inside their bodies, so ``bnnctl ls`` starts as fast as pandas.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer._click import exceptions as click  # typer vendors click: its errors are these
from typer.core import TyperGroup

from bnnctl.arch.spec import Activation
from bnnctl.errors import (
    BnnctlError,
    EnvironmentFault,
    MissingDependencyError,
    UsageError,
    describe,
    environment_fault,
    one_line,
    os_error_in,
)

if TYPE_CHECKING:
    import pandas as pd

    from bnnctl.arch import AnyArch
    from bnnctl.data import Dataset


class OneLineErrors(TyperGroup):
    """Usage errors (unknown flag, bad value, missing argument) as one line on stderr,
    like the library's errors, instead of click's usage block."""

    def main(  # type: ignore[override]  # click overloads it on Literal standalone_mode
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kw: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **kw)
        except click.NoArgsIsHelpError as e:
            e.show()
            rv = 2
        except click.UsageError as e:
            if not standalone_mode:
                raise
            hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
            typer.echo(f"error: {one_line(e.format_message())}{hint}", err=True)
            rv = 2
        except typer.Abort:
            typer.echo("aborted", err=True)
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="bnnctl",
    help=(
        "Build and query datasets of thousands of neural-network checkpoints: train many "
        "seeds at once, sample posteriors, canonicalize symmetries, measure and export.\n\n"
        "Example: bnnctl train --seeds 3072 && bnnctl ls --where 'test_acc > 0.97'"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

err = Console(stderr=True, highlight=False)
DEFAULT_STORE = "bnnctl.zarr"
#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_PROGRESS_EVERY = 10.0


def _version(value: bool) -> None:
    if value:
        from bnnctl.store import FORMAT_VERSION
        from bnnctl.version import __version__

        typer.echo(f"bnnctl {__version__} (store format {FORMAT_VERSION})")
        raise typer.Exit()


def debugging() -> bool:
    """Whether unexpected errors show their traceback (``--debug`` or ``BNNCTL_DEBUG=1``)."""
    return _debug or os.environ.get("BNNCTL_DEBUG", "") not in ("", "0")


_debug = False


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show the traceback of an internal error (or BNNCTL_DEBUG=1)."
        ),
    ] = False,
) -> None:
    """Build and query datasets of thousands of neural-network checkpoints."""
    global _debug
    _debug = debug


# --- options defined once ---------------------------------------------------------------


StoreOpt = Annotated[
    str,
    typer.Option(
        "--store", envvar="BNNCTL_STORE", help="Store path or object-store URL (env BNNCTL_STORE)."
    ),
]
AsOfOpt = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="Read the manifest as it was at this version number or ISO 8601 time "
        "(e.g. 12, or 2026-11-29T10:00:00+00:00).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]
WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        "-w",
        help='Filter on manifest columns, e.g. "test_acc > 0.97 and seed < 100" '
        "(a safe subset of pandas query syntax; see README).",
    ),
]


class RowFormat(str, Enum):
    """How ``ls`` prints rows."""

    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    ids = "ids"
    parquet = "parquet"


class ReportFormat(str, Enum):
    """How ``canonicalize`` prints its report."""

    table = "table"
    json = "json"


class StatsFormat(str, Enum):
    """How ``stats`` prints its report (csv: section,key,value)."""

    table = "table"
    json = "json"
    csv = "csv"


FormatFlag = typer.Option("--format", "-f", help="Output format.")


DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        "-d",
        help="Built-in dataset (digits, digits28: digits in a 28x28 frame, moons), or the "
        "name for --data (e.g. mnist, cifar10).",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help=(
            "Your data: an .npz (x_train, y_train, x_test, y_test), a folder of MNIST IDX files, "
            "or a folder of CIFAR-10 binary batches (data_batch_*.bin, test_batch.bin)."
        ),
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        "-a",
        help="mlp:64-128-128-10 (MLP widths, input to output), a conv net preset (optunet, "
        "lenet5, cifar_small) or a cnn: spec (README), e.g. "
        "cnn:1x28x28/c2k4nb-r-m3-c10k5g2nb-r-gap-l3-r-l10; default: an MLP fit for the data.",
    ),
]


SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Run blocks on Dask workers: local:N (a cluster of N worker processes here) or "
        "tcp://HOST:PORT (a running `dask scheduler`); needs the distributed package. "
        "Default: in this process.",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the arithmetic runs: auto (the first GPU torch sees, else the CPU), cpu, "
        "cuda or cuda:N. Random draws stay on the CPU, so a seed draws the same on any device.",
    ),
]
AllowNonfiniteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-nonfinite",
        help="Commit models whose weights or metrics hold NaN or Inf (refused by default).",
    ),
]
ActivationOpt = Annotated[Activation, typer.Option("--activation", help="Hidden activation.")]
DropoutOpt = Annotated[
    float, typer.Option("--dropout", help="Dropout rate after each hidden layer (for MC dropout).")
]


def dataset_and_arch(
    dataset: str, data: str | None, arch: str | None, activation: str, dropout: float
) -> tuple[Dataset, AnyArch]:
    """The dataset and architecture that the data options describe. A conv net (``cnn:``
    or a preset) names its activations and dropout in its spec, so ``--activation`` and
    ``--dropout`` apply to MLPs only."""
    from bnnctl.arch import ArchSpec, parse_arch
    from bnnctl.data import load_dataset

    ds = load_dataset(None if data and dataset == "digits" else dataset, data)
    if arch and not arch.strip().startswith("mlp:"):
        spec = parse_arch(arch)
        if activation != "relu" or dropout:
            raise UsageError(
                f"`activation` and `dropout` apply to mlp: archs; {spec.name} names its own "
                "activations and dropout in its spec",
                "activation" if activation != "relu" else "dropout",
            )
        return ds, spec
    if arch:
        return ds, ArchSpec.parse(arch, activation, dropout)
    return ds, ArchSpec(ds.default_arch_widths(), activation, dropout)


# --- the error boundary -----------------------------------------------------------------


def command(name: str, flags: dict[str, str] | None = None) -> Callable:
    """Register a command behind the error boundary: every failure ends as one line on
    stderr and an exit code (:mod:`bnnctl.errors`). Library errors name parameters in
    backquotes (```batch_size```); the line names the command's flag instead
    (``--batch-size``, or as ``flags`` maps it). Known-harmless library warnings are
    silenced: the user sees bnnctl's own lines only."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*a: Any, **kw: Any) -> Any:
            try:
                with quiet_library_warnings():
                    return fn(*a, **kw)
            except BrokenPipeError:  # `| head` closed the pipe: end quietly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                raise typer.Exit(0) from None
            except KeyboardInterrupt:
                _fail("interrupted (committed blocks are kept; re-run to continue)", 130)
            except Exception as e:
                if isinstance(e, typer.Exit | click.ClickException):
                    raise
                known = as_known_error(e)
                if known is None:
                    if debugging():
                        raise
                    _fail(
                        f"internal error: {describe(e)} (re-run with `bnnctl --debug ...` or "
                        "BNNCTL_DEBUG=1 for the traceback)",
                        1,
                    )
                else:
                    _fail(_with_flag(known, flags or {}), known.exit_code)

        return app.command(name)(run)

    return wrap


def as_known_error(e: BaseException) -> BnnctlError | None:
    """``e`` as the error family sees it: faults of the environment (disk full, read-only,
    permission, a missing optional package) become theirs; None for a bug."""
    if isinstance(e, BnnctlError):
        return e
    fault = os_error_in(e)
    if fault is not None:
        return environment_fault(fault)
    if isinstance(e, MemoryError):
        return EnvironmentFault("out of memory (try a smaller --block-size or --chains)")
    torch = sys.modules.get("torch")  # loaded by any command that could run out of it
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return EnvironmentFault(
            "out of GPU memory (try a smaller --block-size or --chains, or --device cpu)"
        )
    if isinstance(e, ImportError) and e.name and e.name.split(".")[0] in OPTIONAL_PACKAGES:
        return MissingDependencyError(
            f"{e.name} is not installed; it is needed for this store or format "
            f"(pip install {OPTIONAL_PACKAGES[e.name.split('.')[0]]})"
        )
    return None


#: Optional packages a request may need, by import name, with what to install.
OPTIONAL_PACKAGES = {
    "s3fs": "s3fs",
    "gcsfs": "gcsfs",
    "adlfs": "adlfs",
    "matplotlib": "matplotlib",
    "laplace": "laplace-torch",
    "distributed": "distributed",
}


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {one_line(message)}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """Silence warnings libraries raise about conditions bnnctl handles itself (zarr's
    notice about leftover ``*.partial`` files of an interrupted write, which ``bnnctl gc``
    removes)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\.partial", module=r"zarr(\..*)?")
        yield


def _with_flag(e: BnnctlError, flags: dict[str, str]) -> str:
    def flag(m: re.Match[str]) -> str:
        return flags.get(m.group(1), "--" + m.group(1).replace("_", "-"))

    return re.sub(r"`([a-z][a-z0-9_]*)`", flag, str(e))


# --- progress on stderr -----------------------------------------------------------------


@contextmanager
def progress(
    quiet: bool, label: str, total: int | None, unit: str = "models", per_item: int = 1
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for ``n`` units of work (``per_item`` units make one item).
    On a terminal: a rich bar. Otherwise (a log file, ``nohup``): a plain line about
    every :data:`PLAIN_PROGRESS_EVERY` seconds with done/total, rate and ETA. Nothing
    with ``quiet``."""
    t0 = time.perf_counter()
    state = {"units": 0, "printed": t0}
    items_total = None if total is None else total // per_item

    def status() -> tuple[int, float, str]:
        done = int(state["units"] // per_item)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        rate = done / elapsed
        eta = f", eta {_duration((items_total - done) / rate)}" if items_total and rate > 0 else ""
        return done, rate, eta

    if quiet:
        yield lambda n: None
        return
    if not err.is_terminal:

        def plain(n: int) -> None:
            state["units"] += n
            now = time.perf_counter()
            if now - state["printed"] >= PLAIN_PROGRESS_EVERY:
                state["printed"] = now
                done, rate, eta = status()
                of = f"/{items_total}" if items_total else ""
                err.print(f"{label}: {done}{of} {unit}, {rate:.1f} {unit}/s{eta}", markup=False)

        yield plain
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(label, total=total, status="")

        def rich_advance(n: int) -> None:
            state["units"] += n
            done, rate, eta = status()
            of = f"/{items_total}" if items_total else ""
            bar.update(task, advance=n, status=f"{done}{of} {unit}, {rate:.1f}/s{eta}")

        yield rich_advance


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def log(quiet: bool, message: str) -> None:
    if not quiet:
        err.print(message, markup=False, soft_wrap=True)


# --- rows and reports on stdout ---------------------------------------------------------


def read_ids(ids: str) -> list[str]:
    """Ids from a comma list, or from stdin when ``-`` (one per line or whitespace)."""
    text = sys.stdin.read() if ids == "-" else ids.replace(",", " ")
    out = [t for t in text.split() if t]
    if not out:
        raise UsageError("no model ids given", "ids")
    return out


def emit_rows(df: pd.DataFrame, fmt: str, title: str | None = None) -> None:
    """Write rows to stdout in the chosen format (parquet: a plain snapshot file)."""
    if fmt == "parquet":
        if sys.stdout.isatty():
            raise UsageError("--format parquet writes binary: redirect stdout to a file")
        df.to_parquet(sys.stdout.buffer, index=False)
        sys.stdout.flush()
        return
    if fmt == "ids":
        text = "".join(f"{m}\n" for m in df["model_id"])
    elif fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        text = json.dumps(records(df), indent=2) + "\n"
    elif fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records(df))
    else:
        print_table(list(df.columns), df.itertuples(index=False), title, width=200)
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def print_table(
    columns: Sequence[str],
    rows: Any,
    title: str | None = None,
    width: int = 160,
    right: Sequence[str] = (),
) -> None:
    """A rich table on stdout (``width`` columns when stdout is not a terminal)."""
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold", justify="right" if c in right else "left")
    for r in rows:
        table.add_row(*(fmt_cell(v) for v in r))
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else width).print(table)


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe records: nulls as null, timestamps as ISO 8601."""
    return json.loads(df.to_json(orient="records", date_format="iso"))


def fmt_cell(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if v is None or (isinstance(v, float) and v != v) or str(v) == "<NA>":
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def dump_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
