"""The ``bnnctl`` command: a thin Typer layer over the library.

Each command parses its options, makes one library call and renders the result: data to
stdout, progress and logs to stderr. A :class:`~bnnctl.errors.BnnctlError` becomes one
line on stderr and a non-zero exit (2 for usage errors); anything else is a bug.
Command modules register themselves on :data:`app` when imported below.
"""

from __future__ import annotations

from bnnctl.cli.common import app

# Importing a command module registers its commands on `app`, in this order in --help.
from bnnctl.cli import train as _train  # noqa: E402,F401
from bnnctl.cli import sample as _sample  # noqa: E402,F401
from bnnctl.cli import canonicalize as _canonicalize  # noqa: E402,F401
from bnnctl.cli import query as _query  # noqa: E402,F401
from bnnctl.cli import stats as _stats  # noqa: E402,F401
from bnnctl.cli import export as _export  # noqa: E402,F401

def main() -> None:
    app()
