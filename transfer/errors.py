"""The one exception type for user mistakes.

A `TransferError` carries a single line that names the bad value and what would be valid;
the CLI prints it and exits 2 without a traceback. Anything else escaping is a bug (exit 1).
Its message, and a `TransferWarning`'s, is made `printable` when it is made: the names it quotes
may come from a file (a graph, a folder, a manifest, a TensorFlow error that echoes them).
"""
from __future__ import annotations

import math
import numbers

from transfer.text import printable


class TransferError(ValueError):
    """A user error: bad path, unknown cut, wrong shape, corrupt file, unprepared dataset."""

    def __init__(self, message="", *args):
        super().__init__(printable(message), *args)


class TransferWarning(UserWarning):
    """Something the user should know that did not stop the work (skipped image files).
    The CLI prints these as one line each."""

    def __init__(self, message="", *args):
        super().__init__(printable(message), *args)


# Every checked value fails in one format: `NAME=VALUE (--flag) must be ...`.


def check_choice(name: str, value, valid, *, flag: str | None = None):
    """`value` if it is one of `valid`, else `name=value must be one of a, b, c`."""
    if value in valid:
        return value
    shown = ", ".join("none" if v is None else str(v) for v in valid)
    raise TransferError(f"{_shown(name, value, flag)} must be one of {shown}")


def unknown_head(name: str, names) -> TransferError:
    """The error for a head name that is neither registered, an entry point nor an import path:
    the registry's and the CLI's early check (before TensorFlow) say it alike."""
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}" if close else ""
    return TransferError(f"unknown head {name!r}{hint}; registered heads: {', '.join(names)} "
                         f"(or give an import path 'module:Class')")


def check_int(owner, option, value, minimum=1) -> int:
    """`value` if it is an int >= `minimum`, else a one-line error naming owner and option."""
    check_number(f"{owner}: {option}", value, minimum, integer=True)
    return int(value)


def check_number(name: str, value, minimum, *, above: bool = False, integer: bool = False, maximum=None,
                 flag: str | None = None) -> None:
    """A `TransferError` naming `value` and the valid range unless minimum <= value (< if `above`) <= maximum."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value) and (
        value > minimum if above else value >= minimum)
    if ok and (maximum is None or value <= maximum):
        return
    valid = f"{'>' if above else '>='} {minimum}" + ("" if maximum is None else f" and <= {maximum}")
    raise TransferError(f"{_shown(name, value, flag)} must be {'an integer' if integer else 'a number'} {valid}")


def flag_of(name: str) -> str:
    """The CLI flag of a Python name: thaw_lr_scale -> --thaw-lr-scale."""
    return "--" + name.replace("_", "-")


def _shown(name: str, value, flag: str | None) -> str:
    return f"{name}={value!r}" + (f" ({flag})" if flag else "")


def check_keywords(owner: str, given, valid) -> None:
    """A one-line `TransferError` for the first of `given` not in `valid`, listing the valid
    names closest first (`fit: unknown keyword argument 'epoch'; valid: epochs, ...`)."""
    import difflib

    valid = list(valid)
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=len(valid), cutoff=0.0)
            raise TransferError(f"{owner}: unknown keyword argument {name!r}; valid: {', '.join(close)}")
