"""The `transfer` command. It only parses arguments and calls the Python API: each command is a
module of this package (its flags, its example and its handler), `arguments` holds what they
share.

Exit status: 0 done, 2 user error (one line on stderr), 1 a bug (traceback).
What it prints that came from a file (names, class labels, paths, cache manifests) is `printable`:
tables escape their cells, the lines around them their fields; `--json` is `json.dumps`'s.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from transfer._version import __version__
from transfer.cli.early_checks import check_before_tensorflow
from transfer.cli import (cache_commands, completion, fit_command, heads_command, inspect_command, run_commands,
                          sweep_command)
from transfer.errors import TransferError, TransferWarning
from transfer.graph.memory import memory_errors
from transfer.text import printable

DASHED_VALUE = re.compile(r"-\.?\d")  # -1..1, -0.5, -1: a value, never one of our flags
INTERRUPTED = {  # what a command that keeps its finished work says of it on Ctrl-C (others: nothing written)
    "sweep": "the settings that finished are kept; the same command resumes the sweep",
    "extract": "the shards finished are kept; the same command goes on from them",
}
COMMANDS_WITHOUT_TENSORFLOW = ("cache", "completion")  # they read files only: they answer at once
# in `--help`'s order
COMMANDS = (inspect_command, fit_command, sweep_command, cache_commands, run_commands, heads_command, completion)


def _load_tensorflow() -> None:
    """For the commands that run a graph: TensorFlow and the API, with TF's Python-side
    deprecation notices silenced (they would bury the one line the user needs; its C++ start-up
    chatter is parked by `transfer.load_tensorflow`, see `transfer._backend`)."""
    import absl.logging

    import transfer

    transfer.load_tensorflow()
    import tensorflow as tf

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfer",
        description="Reuse frozen TensorFlow graphs and SavedModels as Keras feature layers.",
        epilog="run `transfer COMMAND --help` for a command's options and an example",
    )
    parser.add_argument("--version", action="version", version=f"transfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    completion.complete(parser)  # a Tab press in the shell: answers and exits here
    args = parser.parse_args(joined_dash_values(sys.argv[1:] if argv is None else list(argv)))
    if args.command == "inspect" and not (args.backbone_path or args.backbone):
        parser.error("inspect: give the backbone PATH (or --backbone PATH)")
    try:
        if hasattr(args, "runner"):  # where extraction runs: a bad --beam-option is said before TensorFlow loads
            from transfer.features.runners import get_runner

            args.runner = get_runner(args.runner, args.beam_option)
        check_before_tensorflow(args)
        if args.command not in COMMANDS_WITHOUT_TENSORFLOW:
            _load_tensorflow()
        with warnings.catch_warnings(record=True) as caught, memory_errors():
            warnings.simplefilter("always", TransferWarning)
            try:
                return args.handler(args)
            finally:
                _print_user_warnings(args.command, caught)
    except TransferError as error:
        print(f"transfer {args.command}: error: {printable(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was half-written is removed on the way out (`transfer.files`)
        return _interrupted(args.command)
    except BrokenPipeError:  # `transfer cache ls | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except Exception as error:
        if not _while_interrupted(error):
            raise
        return _interrupted(args.command)


def _interrupted(command: str) -> int:
    print(f"transfer {command}: interrupted; {INTERRUPTED.get(command, 'nothing written')}", file=sys.stderr)
    return 130


def _while_interrupted(error: BaseException) -> bool:
    """Whether `error` was raised while Ctrl-C unwound the stack: a context manager's exit that
    fails on the way (TensorFlow's device scope, left mid-`model.fit`: `Exiting device scope
    without proper scope nesting`) hides the KeyboardInterrupt it was handling."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


def joined_dash_values(argv: list) -> list:
    """`--scale -1..1` as `--scale=-1..1`: argparse takes a value that starts with a dash and is
    not a plain number for a flag, so documented values such as `-1..1` could not be typed as
    documented. No flag of ours starts with a dash and a digit, so such a word is always a value."""
    joined = []
    for word in map(str, argv):
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and DASHED_VALUE.match(word):
            joined[-1] = f"{joined[-1]}={word}"
        else:
            joined.append(word)
    return joined


def _print_user_warnings(command: str, caught) -> None:
    """Our own warnings (skipped image files) as one line each, like the errors; library
    warnings (Keras, TF) stay out of the user's way."""
    for warning in caught:
        if issubclass(warning.category, TransferWarning):
            print(f"transfer {command}: warning: {printable(warning.message)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
