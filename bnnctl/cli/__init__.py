"""The ``bnnctl`` command: a thin Typer layer over the library.

Each command parses its options, makes one library call and renders the result: data to
stdout, progress and logs to stderr. A :class:`~bnnctl.errors.BnnctlError` becomes one
line on stderr and a non-zero exit (2 for usage errors); anything else is a bug.
Command modules register themselves on :data:`app` when imported below, in ``--help``
order; none imports torch until its command runs.
"""

from __future__ import annotations

from bnnctl.cli import (  # noqa: F401  (importing a command module registers it)
    canonicalize,
    export,
    import_,
    ls,
    sample,
    stats,
    train,
    verify,
)
from bnnctl.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
