"""The ``bnnctl`` command: a thin Typer layer over the library.

Each command parses its options, makes one library call and renders the result: data to
stdout, progress and logs to stderr. A :class:`~bnnctl.errors.BnnctlError` becomes one
line on stderr and a non-zero exit (2 for usage errors); anything else is a bug.
Importing a command module registers its commands on :data:`app`, in the order of
:data:`COMMAND_MODULES` (the order of ``--help``); none imports torch until it runs.
"""

from __future__ import annotations

import importlib

from bnnctl.cli.common import app

#: Command modules, in ``--help`` order.
COMMAND_MODULES = (
    "train",
    "sample",
    "canonicalize",
    "ls",
    "verify",
    "stats",
    "export",
    "import_",
    "maintain",
)
for _name in COMMAND_MODULES:
    importlib.import_module(f"bnnctl.cli.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    app()
