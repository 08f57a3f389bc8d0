"""`transfer evaluate` and `transfer predict`: what a fit run does on new data."""
from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

from transfer.cli.arguments import command, table
from transfer.text import printable

EVALUATE_EXAMPLES = """examples:
  transfer evaluate runs/fit-20261125-101500 --data 'digits:5-9'
  transfer evaluate runs/my-run --data photos/test --json
  transfer evaluate runs/my-run --data photos/test --out runs/my-run-on-test"""
PREDICT_EXAMPLES = """examples:
  transfer predict runs/my-run cat.jpg dog.png --top-k 2
  transfer predict runs/my-run photos/      # every image under the folder
  transfer predict runs/my-run digits.npy --json
  transfer predict runs/audio-run clips.npy   # a run on a waveform backbone: (n, 1024, 1) arrays"""


def add(commands) -> None:
    _add_evaluate(commands)
    _add_predict(commands)


def _add_evaluate(commands) -> None:
    evaluate = command(commands, "evaluate", run_evaluate, "score a fit run on labelled data", EVALUATE_EXAMPLES)
    evaluate.add_argument("run", metavar="RUN", help="run directory written by transfer fit")
    evaluate.add_argument("--data", required=True, metavar="SPEC", help="labelled data, as for fit")
    evaluate.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data directory")
    evaluate.add_argument("--batch-size", type=int, default=32, help="examples per model call (default 32)")
    evaluate.add_argument("--split", choices=["test", "all"], default="test",
                          help="score the data's test split (default; every example if it has none) or all of it")
    evaluate.add_argument("--out", metavar="DIR", help="new directory for metrics.json and confusion_matrix.png "
                          "(default: RUN/evaluate-YYYYmmdd-HHMMSS)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _add_predict(commands) -> None:
    predict = command(commands, "predict", run_predict, "top-k classes of images (or arrays) with a fit run",
                      PREDICT_EXAMPLES)
    predict.add_argument("run", metavar="RUN", help="run directory written by transfer fit")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or .npy arrays of images or "
                         "of what a non-image backbone takes (one example or a batch), or folders of them "
                         "(searched recursively)")
    predict.add_argument("--top-k", type=int, default=3, help="how many classes to show per input, most likely "
                         "first (default 3)")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")


def run_evaluate(args) -> int:
    from transfer.training.prediction import evaluate
    from transfer.training.reporting import confusion_text

    out = args.out or _new_evaluation_dir(Path(args.run))
    metrics = evaluate(args.run, args.data, data_dir=args.data_dir, batch_size=args.batch_size, split=args.split,
                       out=out)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    which = "the test split" if metrics["split"] == "test" else (
        "every example" + (" (the data has no test split)" if args.split == "test" else ""))
    print(f"accuracy {metrics['accuracy']:.3f} on {metrics['examples']} examples: {which}")
    if metrics["absent_classes"]:
        print(printable(f"classes absent from the data: {', '.join(metrics['absent_classes'])}"))
    report = metrics["report"]
    rows = [(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1-score']:.3f}", str(int(v["support"])))
            for name, v in report.items() if isinstance(v, dict)]
    print(table([("class", "precision", "recall", "f1", "support"), *rows]))
    print("confusion matrix (rows: true class, columns: predicted):")
    print(confusion_text(metrics["confusion_matrix"], metrics["class_names"]))
    print(printable(f"written: {out}/metrics.json, {out}/confusion_matrix.png"))
    return 0


def _new_evaluation_dir(run: Path) -> Path:
    """`RUN/evaluate-YYYYmmdd-HHMMSS`, with `-2`, `-3`, … when evaluations come within a second."""
    base = run / f"evaluate-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    numbered = (base.with_name(f"{base.name}-{number}") for number in itertools.count(2))
    return next(path for path in itertools.chain([base], numbered) if not path.exists())


def run_predict(args) -> int:
    from transfer.training.prediction import predict

    results = predict(args.run, args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(printable(result["image"]) + ": "
              + ", ".join(f"{printable(t['class'])} {t['probability']:.3f}" for t in result["top"]))
    return 0
