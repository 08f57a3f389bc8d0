"""Aligned plain-text tables for the terminal (inspect, cache, sweep, evaluate)."""
from __future__ import annotations

from transfer.text import printable


def format_table(rows, indent: str = "") -> list[str]:
    """Rows of cells (any type; rows may be shorter than others) as left-aligned lines; each cell
    `printable` (names in cells come from files), escaped before it is measured."""
    rows = [[printable(cell) for cell in row] for row in rows]
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
