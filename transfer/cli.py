"""The `transfer` command. It only parses arguments and calls the Python API.

Exit status: 0 done, 2 user error (one line on stderr), 1 a bug (traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from transfer.errors import TransferError, TransferWarning

MAIN_JOB = ("transfer fit --backbone example:digits --cut block2_out --head linear --head-opt pooling=flatten "
            "--data 'digits:5-9?per_class=10' --epochs 60 --lr 0.01")
EXAMPLES = {
    "fit": f"""examples:
  {MAIN_JOB}
  transfer fit --backbone model.pb --cut resnet_features --head mlp --head-opt hidden=256 --data photos/
  transfer fit --backbone saved_model/ --data tfds:cifar10 --data-dir ~/tensorflow_datasets --export tflite""",
    "evaluate": """examples:
  transfer evaluate runs/fit-20261125-101500 --data 'digits:5-9'
  transfer evaluate runs/my-run --data photos/test --json""",
    "predict": """examples:
  transfer predict runs/my-run cat.jpg dog.png --top-k 2
  transfer predict runs/my-run digits.npy --json""",
    "inspect": """examples:
  transfer inspect example:digits
  transfer inspect model.pb --cut conv5_block3_out
  transfer inspect model.pb --json > model.json
  transfer inspect saved_model_dir --signature serving_default --all""",
}


def _quiet_tensorflow() -> None:
    """TF's Python-side deprecation notices would bury the one line the user needs (its C++
    start-up chatter is already parked by `import transfer`, see `transfer._backend`)."""
    import absl.logging
    import tensorflow as tf

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")


def cmd_inspect(args) -> int:
    from transfer.inspection import format_report, inspect_graph

    report = inspect_graph(args.backbone_path or args.backbone, signature=args.signature, all_tensors=args.all,
                           cut=args.cut)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_fit(args) -> int:
    from transfer.training import default_run_dir, fit

    out = args.out or default_run_dir("fit")
    result = fit(args.backbone, args.data, cut=args.cut, head=args.head, head_options=dict(args.head_opt),
                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                 patience=args.patience, class_weight=args.class_weight, seed=args.seed, augment=args.augment,
                 crop_padding=args.crop_padding,
                 preprocessing=args.preprocessing, scale=args.scale, signature=args.signature,
                 data_dir=args.data_dir, validation_split=args.validation_split, per_class=args.per_class,
                 out=out, export=() if args.export == "none" else tuple(args.export.split(",")),
                 verbose=2 if args.json else "auto")
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        scores = [f"{role} accuracy {result.metrics[role]['accuracy']:.3f} ({result.metrics[role]['examples']} examples)"
                  for role in ("validation", "test") if role in result.metrics]
        print(", ".join(scores) or "no validation or test data to score")
        print(f"run directory: {result.run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from transfer.prediction import evaluate

    metrics = evaluate(args.run, args.data, data_dir=args.data_dir, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"accuracy {metrics['accuracy']:.3f} on {metrics['examples']} examples")
    report = metrics["report"]
    rows = [(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1-score']:.3f}", str(int(v["support"])))
            for name, v in report.items() if isinstance(v, dict)]
    print(_table([("class", "precision", "recall", "f1", "support"), *rows]))
    return 0


def cmd_predict(args) -> int:
    from transfer.prediction import predict

    results = predict(args.run, args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["image"] + ": " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"]))
    return 0


def _table(rows) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _key_value(text: str):
    """`--head-opt hidden=128,64` -> ("hidden", [128, 64]); values are JSON where they parse."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parts = [_json_or_text(v) for v in value.split(",")] if "," in value and not value.startswith("[") else None
    return key, parts if parts is not None else _json_or_text(value)


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


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

    fit = _command(commands, "fit", cmd_fit, "train a head on a frozen backbone's features; write a run directory")
    fit.add_argument("--backbone", required=True, metavar="PATH", help="graph file, SavedModel dir or example:NAME")
    fit.add_argument("--cut", default="auto", metavar="NAME", help="where to cut the graph (default: auto)")
    fit.add_argument("--signature", metavar="NAME", help="SavedModel signature (default: serving_default)")
    fit.add_argument("--data", required=True, metavar="SPEC",
                     help="folder:PATH | PATH | npz:FILE | tfds:NAME[:SPLIT] | digits[:5-9] (+ ?per_class=N)")
    fit.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data directory")
    fit.add_argument("--validation-split", type=float, default=0.2, metavar="F",
                     help="share of each class held out when the data has no validation split (default 0.2)")
    fit.add_argument("--per-class", type=int, metavar="N", help="train on N labelled examples per class")
    fit.add_argument("--head", default="linear", metavar="NAME",
                     help="linear, mlp, conv, attention, logreg, or module:Class (default: linear)")
    fit.add_argument("--head-opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="a head option, e.g. hidden=256,128 or pooling=flatten (repeatable)")
    fit.add_argument("--epochs", type=int, default=20)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    fit.add_argument("--optimizer", default="adam", help="adam, adamw, sgd, rmsprop, nadam")
    fit.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs; the best "
                     "epoch's weights are restored (default 5)")
    fit.add_argument("--class-weight", choices=["balanced"], help="weight classes against imbalance")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--augment", action="store_true", help="random horizontal flips during training")
    fit.add_argument("--crop-padding", type=int, default=0, metavar="N",
                     help="random shifts during training: pad by N pixels, crop back (default 0: off)")
    fit.add_argument("--scale", help="input scaling: none, 0..1, -1..1, caffe (default: from the "
                     "preprocessing JSON beside the backbone, else none)")
    fit.add_argument("--preprocessing", metavar="JSON", help="preprocessing settings file")
    fit.add_argument("--out", metavar="DIR", help="run directory (default: runs/fit-<timestamp>)")
    fit.add_argument("--export", default="savedmodel,pb", metavar="FORMATS",
                     help="savedmodel, pb, tflite, comma-separated, or none (default: savedmodel,pb)")
    fit.add_argument("--json", action="store_true", help="print the metrics as JSON")

    evaluate = _command(commands, "evaluate", cmd_evaluate, "score a fit run on labelled data")
    evaluate.add_argument("run", metavar="RUN", help="run directory written by transfer fit")
    evaluate.add_argument("--data", required=True, metavar="SPEC", help="labelled data, as for fit")
    evaluate.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data directory")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")

    predict = _command(commands, "predict", cmd_predict, "top-k classes of images with a fit run")
    predict.add_argument("run", metavar="RUN", help="run directory written by transfer fit")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or .npy arrays of images")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TransferWarning)
            try:
                return args.handler(args)
            finally:
                _print_user_warnings(args.command, caught)
    except TransferError as error:
        print(f"transfer {args.command}: error: {error}", file=sys.stderr)
        return 2


def _print_user_warnings(command: str, caught) -> None:
    """Our own warnings (skipped image files) as one line each, like the errors; library
    warnings (Keras, TF) stay out of the user's way."""
    for warning in caught:
        if issubclass(warning.category, TransferWarning):
            print(f"transfer {command}: warning: {warning.message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
