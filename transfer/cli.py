"""The `transfer` command. It only parses arguments and calls the Python API.

Exit status: 0 done, 2 user error (one line on stderr), 1 a bug (traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from transfer.errors import TransferError

EXAMPLES = {
    "inspect": """examples:
  transfer inspect example:digits
  transfer inspect model.pb --cut conv5_block3_out
  transfer inspect model.pb --json > model.json
  transfer inspect saved_model_dir --signature serving_default --all""",
}


def _quiet_tensorflow() -> None:
    """TF's start-up chatter (CUDA probing on CPU machines, deprecations) would bury the one line
    the user needs. Its C++ side writes to fd 2 before any log level applies, so that fd is
    parked in a temporary file while TF starts, and replayed only if starting fails."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as parked:
        os.dup2(parked.fileno(), 2)
        try:
            import absl.logging
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing happens here, not mid-command
        except BaseException:
            os.dup2(saved, 2)
            parked.seek(0)
            sys.stderr.write(parked.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")


def cmd_inspect(args) -> int:
    from transfer.inspection import format_report, inspect_graph

    report = inspect_graph(args.backbone_path or args.backbone, signature=args.signature, all_tensors=args.all,
                           cut=args.cut)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfer",
        description="Reuse frozen TensorFlow graphs and SavedModels as Keras feature layers.",
        epilog="run `transfer COMMAND --help` for a command's options and an example",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = _command(commands, "inspect", cmd_inspect,
                       "list a graph's inputs, outputs, ops and candidate cut points")
    inspect.add_argument("backbone_path", nargs="?", metavar="PATH",
                         help=".pb/.pbtxt GraphDef, SavedModel directory, .keras/.h5 file, or example:NAME")
    inspect.add_argument("--backbone", metavar="PATH", help="same as PATH")
    inspect.add_argument("--signature", metavar="NAME", help="SavedModel signature (default: serving_default)")
    inspect.add_argument("--cut", metavar="NAME", help="also resolve this cut (several as a,b) and check it")
    inspect.add_argument("--all", action="store_true", help="list every tensor, not only the candidate cuts")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _command(commands, name: str, handler, summary: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=summary, epilog=EXAMPLES.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.set_defaults(handler=handler)
    return sub


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect" and not (args.backbone_path or args.backbone):
        parser.error("inspect: give the backbone PATH (or --backbone PATH)")
    _quiet_tensorflow()
    try:
        return args.handler(args)
    except TransferError as error:
        print(f"transfer {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
