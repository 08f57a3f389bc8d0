"""Shell completion for bash and zsh, with argcomplete (optional: `pip install 'transfer[completion]'`).

`eval "$(transfer completion bash)"` (or `zsh`) registers it; then Tab completes commands,
flags, choices, head names (`--head`, `--heads`: built in and entry points, `transfer.choices`)
and, for a frozen `.pb` backbone already typed, the graph's node names for `--cut`/`--cuts`
(read from the file's bytes without TensorFlow, which takes seconds to load: a Tab must answer
at once; a SavedModel or `.keras` file completes `auto` and `candidates` only).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from transfer.choices import EXAMPLE_PREFIX, EXAMPLES_DIR, HEAD_ENTRY_POINTS, HEADS, OPTIMIZERS
from transfer.errors import TransferError

SHELLS = ("bash", "zsh")
MAX_GRAPH_BYTES = 256 << 20  # a larger .pb is not read for a Tab press
SPECIAL_CUTS = ("auto", "candidates")
NOT_CUTS = {"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "VarHandleOp", "VariableV2", "Assert"}
EXAMPLES = """examples:
  eval "$(transfer completion bash)"     # in ~/.bashrc
  eval "$(transfer completion zsh)"      # in ~/.zshrc"""


def add(commands) -> None:
    from transfer.cli.arguments import command

    completion = command(commands, "completion", run, "print the shell code that completes transfer's commands",
                         EXAMPLES)
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")


def run(args) -> int:
    try:
        import argcomplete
    except ImportError:
        raise TransferError("shell completion needs argcomplete; install it: pip install 'transfer[completion]'") \
            from None
    print(argcomplete.shellcode(["transfer"], shell=args.shell))
    return 0


def complete(parser, **options) -> None:
    """When the shell asks for completions (argcomplete's `_ARGCOMPLETE` in the environment): give
    them and exit, before any other work; otherwise nothing (argcomplete is not even imported).
    `options`: argcomplete.autocomplete's (a test's `output_stream`, `exit_method`)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    attach_completers(parser)
    argcomplete.autocomplete(parser, **options)


def attach_completers(parser) -> None:
    """Head names on --head/--heads, cut names on --cut/--cuts, optimizers on --optimizer (a
    value checked by the API, not by argparse `choices`), in every command."""
    for action in _actions(parser):
        if action.dest in ("head", "heads"):
            action.completer = head_names
        elif action.dest in ("cut", "cuts"):
            action.completer = cut_names
        elif action.dest == "optimizer":
            action.completer = optimizer_names


def optimizer_names(prefix: str = "", **_) -> list[str]:
    return _after_comma(prefix, list(OPTIMIZERS))


def _actions(parser):
    for action in parser._actions:
        yield action
        for sub in action.choices.values() if action.nargs == argparse.PARSER else ():
            yield from _actions(sub)


def head_names(prefix: str = "", **_) -> list[str]:
    """The heads a run can name (built in and entry points); after a comma (`--heads a,b`), the next."""
    from importlib.metadata import entry_points

    names = sorted({*HEADS, *(point.name for point in entry_points(group=HEAD_ENTRY_POINTS))})
    return _after_comma(prefix, names)


def cut_names(prefix: str = "", parsed_args=None, **_) -> list[str]:
    """`auto`, `candidates` and the node names of the `--backbone` typed when it is a `.pb`."""
    return _after_comma(prefix, [*SPECIAL_CUTS, *graph_node_names(getattr(parsed_args, "backbone", None))])


def _after_comma(prefix: str, names: list[str]) -> list[str]:
    done, _, word = prefix.rpartition(",")
    return [f"{done}," * bool(done) + name for name in names if name.startswith(word)]


def graph_node_names(backbone) -> list[str]:
    """The names of the nodes that could be cut (not constants, inputs or variables) of a frozen
    GraphDef file (`example:NAME` too), in graph order, decoded from protobuf's wire format
    (GraphDef field 1: nodes; NodeDef field 1: name, 2: op); [] for anything else, a file too
    large, or bytes that are not a GraphDef."""
    if not backbone:
        return []
    path = EXAMPLES_DIR / f"{backbone[len(EXAMPLE_PREFIX):]}.pb" if backbone.startswith(EXAMPLE_PREFIX) \
        else Path(backbone)
    try:
        if path.suffix != ".pb" or not path.is_file() or path.stat().st_size > MAX_GRAPH_BYTES:
            return []
        data = path.read_bytes()
        nodes = [(_field(node, 1).decode(), _field(node, 2).decode()) for number, node in _fields(data) if number == 1]
        return [name for name, op in nodes if op not in NOT_CUTS]
    except (OSError, ValueError, UnicodeDecodeError):
        return []


def _fields(data: bytes):
    """(field number, bytes) of the length-delimited fields of one message; others skipped."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(data, position)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated field")
            yield number, data[position:position + length]
            position += length
        else:
            raise ValueError(f"wire type {wire}")


def _field(message: bytes, number: int) -> bytes:
    return next((value for found, value in _fields(message) if found == number), b"")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position
