"""Detail lines, what `-v/--verbose` adds: a logger named `transfer`, silent unless asked.

The stage lines (`data: …`, `backbone: …`, `features: …`) say what a command does; detail lines
say how: each cut's tensor and shape, each cache entry's full key and folder, how long each
split's extraction took, the engine's choice, each thawed layer's measured step, the training
settings. In Python: `transfer.detail.show_details()`, or give the `transfer` logger a handler
at INFO level.
"""
from __future__ import annotations

import logging
import sys

from transfer.text import printable

LOGGER = logging.getLogger("transfer")


def detail(message: str) -> None:
    """One detail line (`printable`: names in it come from graphs and files)."""
    LOGGER.info(printable(message))


class _Stdout(logging.Handler):
    """Writes to whatever `sys.stdout` is when a line comes (with `--json` the CLI points it at
    stderr), indented under the stage lines."""

    def emit(self, record):
        print(f"  {record.getMessage()}", file=sys.stdout, flush=True)


def show_details(show: bool = True) -> None:
    """Print detail lines (or stop); idempotent."""
    for handler in [h for h in LOGGER.handlers if isinstance(h, _Stdout)]:
        LOGGER.removeHandler(handler)
    if show:
        LOGGER.addHandler(_Stdout())
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False
    else:
        LOGGER.setLevel(logging.NOTSET)
        LOGGER.propagate = True
