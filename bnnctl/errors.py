"""One error family. The CLI turns any of these into one line on stderr and an exit code:
2 for usage, 1 for data or store problems, 3 for the environment (disk full, read-only,
permission, a missing optional dependency). Anything else reaching the CLI is a bug: one
"internal error" line, and the traceback with ``--debug``.

Each class is also the matching built-in error (a :class:`StoreNotFoundError` is a
``FileNotFoundError``), so library users can catch either. Errors about one argument
name it in backquotes as the library spells it (```batch_size```) and carry it as
``param``; the CLI shows the flag instead (``--batch-size``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces made single spaces."""
    return " ".join(text.split())


def describe(e: BaseException) -> str:
    """A foreign exception as one line: its type and message."""
    return f"{type(e).__name__}: {one_line(str(e))}"


class BnnctlError(Exception):
    """Base of every error bnnctl reports to a user."""

    exit_code = 1

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UsageError(BnnctlError, ValueError):
    """The user asked for something invalid (bad argument value, unknown name)."""

    exit_code = 2

    @classmethod
    def choice(cls, param: str, value: object, allowed: Iterable[str]) -> UsageError:
        """``param`` is not one of ``allowed``."""
        return cls(f"unknown `{param}` {value!r}; choose from {', '.join(allowed)}", param)


class DataError(BnnctlError, ValueError):
    """Input data is malformed (shapes, dtypes, labels, NaN)."""


class StoreError(BnnctlError, OSError):
    """The store cannot be opened, read or written as asked."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No bnnctl store at the given location."""


class FormatVersionError(StoreError):
    """The store was written by a newer or unknown format version."""


class ConflictError(BnnctlError, ValueError):
    """The request contradicts what the store already holds (e.g. another arch)."""

    exit_code = 2


class EnvironmentFault(BnnctlError, OSError):
    """The machine stops the work: no space left, a read-only file system, no permission."""

    exit_code = 3


class MissingDependencyError(BnnctlError, ImportError):
    """An optional package the request needs is not installed."""

    exit_code = 3


#: errno values that are faults of the environment, not of the request or the data.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOMEM", "EMFILE", "ENFILE")
    if hasattr(errno, n)
)


def os_error_in(e: BaseException) -> OSError | None:
    """``e`` as an :class:`OSError` of the environment, or None. Libraries written in Rust
    (delta-rs) report one only in their message, as "(os error 28)"."""
    if isinstance(e, OSError):
        return e if e.errno in ENVIRONMENT_ERRNOS else None
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m and int(m.group(1)) in ENVIRONMENT_ERRNOS:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def environment_fault(e: OSError, doing: str = "", after: str = "") -> EnvironmentFault:
    """``e`` (one of :data:`ENVIRONMENT_ERRNOS`) as one line: ``<why>[ while <doing>][ (after)]``,
    e.g. "no space left on device while committing block digits/3 (nothing committed; re-run
    to continue)"."""
    why = (e.strerror or describe(e)).lower()
    where = f" ({e.filename})" if e.filename and not doing else ""
    text = f"{why}{where}" + (f" while {doing}" if doing else "") + (f" ({after})" if after else "")
    fault = EnvironmentFault(text)
    fault.errno = e.errno
    return fault


class CheckError(BnnctlError, AssertionError):
    """A check on computed results failed (e.g. a transform changed the function)."""
