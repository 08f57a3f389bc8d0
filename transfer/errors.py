"""The one exception type for user mistakes.

A `TransferError` carries a single line that names the bad value and what would be valid;
the CLI prints it and exits 2 without a traceback. Anything else escaping is a bug (exit 1).
"""
from __future__ import annotations

import numbers


class TransferError(ValueError):
    """A user error: bad path, unknown cut, wrong shape, corrupt file, unprepared dataset."""


class TransferWarning(UserWarning):
    """Something the user should know that did not stop the work (skipped image files).
    The CLI prints these as one line each."""


def check_int(owner, option, value, minimum=1) -> int:
    """`value` if it is an int >= `minimum`, else a one-line error naming owner and option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise TransferError(f"{owner}: {option}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_number(name: str, value, minimum, *, above: bool = False, integer: bool = False, maximum=None,
                 flag: str | None = None) -> None:
    """A `TransferError` naming `value` and the valid range unless minimum <= value (< if `above`) <= maximum."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value > minimum if above else value >= minimum)
    if ok and (maximum is None or value <= maximum):
        return
    valid = f"{'>' if above else '>='} {minimum}" + ("" if maximum is None else f" and <= {maximum}")
    shown = f"{name}={value!r}" + (f" ({flag})" if flag else "")
    raise TransferError(f"{shown} must be {'an integer' if integer else 'a number'} {valid}")
