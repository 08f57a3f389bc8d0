"""The one exception type for user mistakes.

A `TransferError` carries a single line that names the bad value and what would be valid;
the CLI prints it and exits 2 without a traceback. Anything else escaping is a bug (exit 1).
"""


class TransferError(ValueError):
    """A user error: bad path, unknown cut, wrong shape, corrupt file, unprepared dataset."""


class TransferWarning(UserWarning):
    """Something the user should know that did not stop the work (skipped image files).
    The CLI prints these as one line each."""
