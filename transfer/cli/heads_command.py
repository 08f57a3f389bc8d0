"""`transfer heads`: every head a run can name, with what it does and the options it takes."""
from __future__ import annotations

import json

from transfer.cli.arguments import command
from transfer.errors import TransferError

EXAMPLES = """examples:
  transfer heads
  transfer heads 'm*'             # the heads whose names match a pattern
  transfer heads --json"""


def add(commands) -> None:
    heads = command(commands, "heads", run, "list the heads (--head, --heads) with their options and defaults",
                    EXAMPLES)
    heads.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                       help="only the heads whose names match this shell pattern (default: all)")
    heads.add_argument("--json", action="store_true", help="print the heads as JSON")


def run(args) -> int:
    from transfer.heads import registry

    names = registry.available(args.pattern)
    if not names:
        raise TransferError(f"no head matches {args.pattern!r}; registered heads: {', '.join(registry.available())}")
    described = [registry.kind_of(name).describe() for name in names]
    print(json.dumps(described, indent=2) if args.json else format_heads(described))
    return 0


def format_heads(described: list[dict]) -> str:
    """One block per head: its name and description, then `option=default  what it accepts`."""
    from transfer.tables import format_table

    lines = []
    for head in described:
        lines.append(f"{head['name']}: {head['description']}")
        if head["options"] is None:
            lines.append("  (takes any option its factory accepts)")
            continue
        rows = [[f"{o['name']}=" + ("REQUIRED" if o["required"] else _shown(o["default"])), o["accepts"]]
                for o in head["options"]]
        lines.extend(format_table(rows, indent="  "))
    return "\n".join(lines)


def _shown(value) -> str:
    """A default as a user types it on the command line (`hidden=256,128`, `norm=none`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
