"""One error family. The CLI turns any of these into one line on stderr and a non-zero exit;
anything else reaching the CLI is a bug and surfaces as one."""


class BnnctlError(Exception):
    """Base of every error bnnctl reports to a user."""

    exit_code = 1


class UsageError(BnnctlError, ValueError):
    """The user asked for something invalid (bad flag value, unknown name)."""

    exit_code = 2


class DataError(BnnctlError, ValueError):
    """Input data is malformed (shapes, dtypes, labels, NaN)."""

    exit_code = 2


class StoreError(BnnctlError, OSError):
    """The store cannot be opened, read or written as asked."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No bnnctl store at the given location."""


class FormatVersionError(StoreError):
    """The store was written by a newer or unknown format version."""


class ConflictError(BnnctlError, ValueError):
    """The request contradicts what the store already holds (e.g. another arch)."""

    exit_code = 2


class CheckError(BnnctlError, AssertionError):
    """A check on computed results failed (e.g. a transform changed the function)."""
