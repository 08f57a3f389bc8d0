"""`transfer inspect`: what a graph holds and where it can be cut; nothing of it runs."""
from __future__ import annotations

import json

from transfer.cli.arguments import add_graph_arguments, command, graph_options

EXAMPLES = """examples:
  transfer inspect example:digits
  transfer inspect model.pb --cut conv5_block3_out
  transfer inspect classify_image_graph_def.pb --inputs Mul --cut pool_3
  transfer inspect model.pb --json > model.json
  transfer inspect saved_model_dir --signature serving_default --all
  transfer inspect saved_model_dir --cut note      # a signature output key"""


def add(commands) -> None:
    inspect = command(commands, "inspect", run, "list a graph's inputs, outputs, ops and candidate cut points",
                      EXAMPLES)
    inspect.add_argument("backbone_path", nargs="?", metavar="PATH",
                         help=".pb/.pbtxt GraphDef, SavedModel directory, .keras/.h5 file, or example:NAME")
    inspect.add_argument("--backbone", metavar="PATH", help="same as PATH")
    inspect.add_argument("--signature", metavar="NAME",
                         help="SavedModel signature (default: serving_default, else TF Hub's default)")
    inspect.add_argument("--cut", metavar="NAME", help="also resolve this cut (several as a,b) and check it")
    add_graph_arguments(inspect)
    inspect.add_argument("--layers", action="store_true", help="list the weight layers before the cut (what "
                         "--thaw N counts), with their weights and parameter counts")
    inspect.add_argument("--all", action="store_true", help="list every tensor, not only the candidate cuts")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from transfer.graph.inspection import format_report, inspect_graph

    report = inspect_graph(args.backbone_path or args.backbone, signature=args.signature, all_tensors=args.all,
                           cut=args.cut or ("auto" if args.layers else None), layers=args.layers,
                           **graph_options(args))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
