"""The `transfer` command. It only parses arguments and calls the Python API.

Exit status: 0 done, 2 user error (one line on stderr), 1 a bug (traceback).
What it prints that came from a file (names, class labels, paths, cache manifests) is `printable`:
tables escape their cells, the lines around them their fields; `--json` is `json.dumps`'s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from transfer._version import __version__
from transfer.errors import TransferError, TransferWarning
from transfer.graph.memory import memory_errors, parse_size
from transfer.training.settings import FIELDS as SETTINGS
from transfer.training.settings import OPTIMIZERS, TrainingSettings, default
from transfer.text import printable

COMMANDS_WITHOUT_TENSORFLOW = ("cache",)  # they read files only: they answer at once
ENGINES = ("tf", "onnxruntime", "auto")  # transfer.features.engines.ENGINES, named here without importing TensorFlow
STRATEGIES = ("default", "mirrored", "multiworker")  # transfer.training.distribute.STRATEGIES, likewise
RUNNERS = ("local", "beam")  # transfer.features.runners.RUNNERS
CORRUPT_CACHE = 3  # `cache verify` found corrupt shards: not a bug (1) nor a user error (2)

MAIN_JOB = ("transfer fit --backbone example:digits --cut block2_out --head linear --head-opt pooling=flatten "
            "--data 'digits:5-9?per_class=10' --epochs 60 --lr 0.01")
EXAMPLES = {
    "fit": f"""examples:
  {MAIN_JOB}
  transfer fit --backbone classify_image_graph_def.pb --inputs Mul --cut pool_3 --head mlp --data photos/
  transfer fit --backbone model.pb --feed keep_prob=1.0 --data photos/
  transfer fit --backbone model.pb --cut resnet_features --head mlp --head-opt hidden=256 --data photos/
  transfer fit --backbone saved_model/ --data tfds:cifar10 --data-dir ~/tensorflow_datasets \\
      --export savedmodel,pb,tflite
  transfer fit --backbone model.pb --cut resnet_features --data photos/ --thaw 2 --thaw-lr-scale 0.1 \\
      --head-epochs 5 --thaw-epochs 10
  transfer fit --backbone model.pb --data photos/ --strategy mirrored --batch-size 64   # 32 per device on 2 GPUs
  TF_CONFIG='{{"cluster": {{"worker": ["host1:12345", "host2:12345"]}}, "task": {{"type": "worker", "index": 0}}}}' \\
      transfer fit --backbone model.pb --data photos/ --strategy multiworker --out runs/shared
      # and the same with "index": 1 on host2: they train one model, the chief (index 0) writes it""",
    "sweep": """examples:
  transfer sweep --backbone example:digits --cut block2_out --data 'digits:5-9?per_class=10' \\
      --heads linear,mlp,logreg --head-opt pooling=avg,flatten --lr 1e-3,1e-2 --epochs 40 --repeats 3
  transfer sweep --backbone model.pb --cut resnet_features --data photos/ --grid grid.toml
  transfer sweep --backbone example:digits --cuts candidates --heads logreg --data 'digits:5-9?per_class=10'""",
    "extract": """examples:
  transfer extract --backbone example:digits --cut block2_out --data digits:5-9 --cache-dir features/
  transfer extract --backbone model.pb --cut resnet_features --data photos/ --cache-dtype float16
  transfer extract --backbone model.pb --cut resnet_features --data photos/ --engine onnxruntime
  transfer extract --backbone model.pb --cut candidates --pool avg --data photos/   # every cut, one pass
  transfer extract --backbone model.pb --data photos/ --runner beam \
      --beam-option direct_num_workers=2 --beam-option direct_running_mode=multi_processing
  transfer extract --backbone model.pb --data photos/ --cache-dir gs://bucket/features --runner beam \
      --beam-option runner=DataflowRunner --beam-option project=my-project --beam-option region=europe-west1""",
    "cache": """examples:
  transfer cache ls --cache-dir features/
  transfer cache verify
  transfer cache rm 9c466a7488d741d40711d4deadac0808""",
    "evaluate": """examples:
  transfer evaluate runs/fit-20261125-101500 --data 'digits:5-9'
  transfer evaluate runs/my-run --data photos/test --json""",
    "predict": """examples:
  transfer predict runs/my-run cat.jpg dog.png --top-k 2
  transfer predict runs/my-run digits.npy --json
  transfer predict runs/audio-run clips.npy   # a run on a waveform backbone: (n, 1024, 1) arrays""",
    "inspect": """examples:
  transfer inspect example:digits
  transfer inspect model.pb --cut conv5_block3_out
  transfer inspect classify_image_graph_def.pb --inputs Mul --cut pool_3
  transfer inspect model.pb --json > model.json
  transfer inspect saved_model_dir --signature serving_default --all
  transfer inspect saved_model_dir --cut note      # a signature output key""",
}


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


def cmd_inspect(args) -> int:
    from transfer.graph.inspection import format_report, inspect_graph

    report = inspect_graph(args.backbone_path or args.backbone, signature=args.signature, all_tensors=args.all,
                           cut=args.cut or ("auto" if args.layers else None), layers=args.layers,
                           **_graph_options(args))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_fit(args) -> int:
    from transfer.training.fitting import default_run_dir, fit

    out = args.out or default_run_dir("fit")
    settings = TrainingSettings(**{name: getattr(args, name) for name in SETTINGS})
    result = fit(args.backbone, args.data, settings, cut=args.cut, head=args.head, head_options=dict(args.head_opt),
                 cache_dir=args.cache_dir, cache_dtype=args.cache_dtype, engine=args.engine, runner=args.runner,
                 preprocessing=args.preprocessing, scale=args.scale, signature=args.signature, **_graph_options(args),
                 data_dir=args.data_dir, validation_split=args.validation_split, per_class=args.per_class,
                 out=out, export=args.export, tensorboard=args.tensorboard, strategy=args.strategy,
                 verbose=0 if args.json else "auto")  # --json: stdout is for the JSON only
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        scores = [f"{role} accuracy {result.metrics[role]['accuracy']:.3f} "
                  f"({result.metrics[role]['examples']} examples)"
                  for role in ("validation", "test") if role in result.metrics]
        if "training" in result.metrics:
            print(result.metrics["training"]["summary"])
        print(", ".join(scores) or "no validation or test data to score")
        print(f"run directory: {printable(result.run_dir or 'written by the chief worker')}")
    return 0


def cmd_extract(args) -> int:
    from transfer.features.inputs import open_inputs

    inputs = open_inputs(args.backbone, args.data, cut=args.cut, signature=args.signature, data_dir=args.data_dir,
                         validation_split=args.validation_split, per_class=args.per_class, seed=args.seed,
                         preprocessing=args.preprocessing, scale=args.scale, batch_size=args.batch_size,
                         engine=args.engine, **_graph_options(args))
    entries = inputs.extract(args.cache_dir, dtype=args.cache_dtype, shard_size=args.shard_size,
                             progress=not args.json, pool=args.pool, runner=args.runner)
    rows = [_entry_row(entry) for listed in entries.values() for entry in listed]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from transfer.features.cache import FeatureCache

        print(f"cache {printable(FeatureCache(args.cache_dir).root)}:")
        print(_entry_table(rows))
    return 0


def cmd_cache(args) -> int:
    from transfer.features.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "rm" and not args.keys and not args.all:
        raise TransferError(f"cache rm: give the keys of the entries to remove (`transfer cache ls` lists them), "
                            f"or --all to remove every entry of {cache.root}")
    entries = [cache.open(key) for key in args.keys] if args.keys else cache.entries()
    if args.action == "rm":
        for entry in entries:
            cache.remove(entry.key)
            print(f"removed {printable(entry.key)}")
        return 0
    rows = [_entry_row(entry, verify=args.action == "verify") for entry in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_entry_table(rows))
    else:
        print(f"no cache entries in {printable(cache.root)}")
    bad = [row for row in rows if row.get("bad_shards")]
    for row in bad:
        print(f"entry {printable(row['key'])}: corrupt or missing shard(s) {row['bad_shards']} "
              f"({printable('; '.join(row['problems'].values()))}); the next extract or fit with this cache "
              "re-extracts them", file=sys.stderr)
    return CORRUPT_CACHE if bad else 0


def _entry_row(entry, verify: bool = False) -> dict:
    recipe = entry.manifest.get("ingredients", {})
    shapes = [list(shape) for shape in entry.feature_shapes]
    row = {"key": entry.key, "path": str(entry.path), "role": entry.manifest.get("role"), "examples": entry.count,
           "shape": shapes[0] if len(shapes) == 1 else shapes or None, "dtype": entry.manifest.get("dtype"),
           "pool": recipe.get("pool", "none"),
           "shards": len(entry.manifest["shards"]), "complete": entry.complete,
           "megabytes": round(entry.size_bytes() / 1e6, 2),
           "cut": recipe.get("backbone", {}).get("cut"), "data": recipe.get("data", {}).get("source")}
    if verify:
        problems = entry.shard_problems()
        row["bad_shards"], row["problems"] = list(problems), {str(index): text for index, text in problems.items()}
    return row


def _entry_table(rows) -> str:
    header = ("key", "role", "examples", "shape", "dtype", "MB", "cut", "pool", "status")
    lines = [header] + [(r["key"], str(r["role"]), str(r["examples"]), str(tuple(r["shape"] or ())), str(r["dtype"]),
                         f"{r['megabytes']:.1f}", str(r["cut"]), r["pool"],
                         ("CORRUPT " + str(r["bad_shards"])) if r.get("bad_shards") else
                         ("ok" if r["complete"] else "partial")) for r in rows]
    return _table(lines)


def cmd_sweep(args) -> int:
    from transfer.sweep.sweeping import format_table, sweep
    from transfer.training.fitting import default_run_dir

    axes = {key: getattr(args, key) for key in ("lr", "epochs", "batch_size", "optimizer", "thaw", "thaw_lr_scale",
                                                "thaw_weight_decay", "unfreeze_every", "head_epochs")
            if getattr(args, key) is not None}
    result = sweep(args.backbone, args.data, heads=args.heads or ["linear"], grid=args.grid,
                   head_options={key: value if isinstance(value, list) else [value] for key, value in args.head_opt},
                   repeats=args.repeats, seed=args.seed, patience=args.patience, cut=args.cut, cuts=args.cuts,
                   pool=args.pool,
                   signature=args.signature, **_graph_options(args),
                   data_dir=args.data_dir, validation_split=args.validation_split,
                   per_class=args.per_class, preprocessing=args.preprocessing, scale=args.scale,
                   cache_dir=args.cache_dir, cache_dtype=args.cache_dtype, engine=args.engine, runner=args.runner,
                   out=args.out or default_run_dir("sweep"),
                   export=args.export, tensorboard=args.tensorboard, progress=not args.json,
                   strategy=args.strategy, **axes)
    if args.json:
        print(json.dumps(result.rows, indent=2))
    else:
        print(format_table(result.rows))
        print(printable(f"sweep directory: {result.run_dir} (best setting retrained into {result.best.run_dir})"
                        if result.run_dir else "sweep directory: written by the chief worker"))
    return 0


def _graph_options(args) -> dict:
    """Where and with what the graph is fed (`--inputs`, `--feed`, `--allow-op`), as API keywords."""
    return {"inputs": args.inputs, "feeds": dict(args.feed) or None, "allow_ops": args.allow_op,
            "max_memory": args.max_memory}


def _choices(cast):
    """`1e-3,3e-3` -> [0.001, 0.003]: the values a sweep axis takes."""
    def parse(text: str):
        try:
            return [cast(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {cast.__name__} values, got {text!r}") from None
    return parse


def cmd_evaluate(args) -> int:
    from transfer.training.prediction import evaluate

    metrics = evaluate(args.run, args.data, data_dir=args.data_dir, batch_size=args.batch_size, split=args.split)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    which = "the test split" if metrics["split"] == "test" else (
        "every example" + (" (the data has no test split)" if args.split == "test" else ""))
    print(f"accuracy {metrics['accuracy']:.3f} on {metrics['examples']} examples: {which}")
    report = metrics["report"]
    rows = [(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1-score']:.3f}", str(int(v["support"])))
            for name, v in report.items() if isinstance(v, dict)]
    print(_table([("class", "precision", "recall", "f1", "support"), *rows]))
    return 0


def cmd_predict(args) -> int:
    from transfer.training.prediction import predict

    results = predict(args.run, args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(printable(result["image"]) + ": "
              + ", ".join(f"{printable(t['class'])} {t['probability']:.3f}" for t in result["top"]))
    return 0


def _table(rows) -> str:
    from transfer.tables import format_table

    return "\n".join(format_table(rows))


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
    parser.add_argument("--version", action="version", version=f"transfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect_command(commands)
    _add_fit_command(commands)
    _add_sweep_command(commands)
    _add_extract_command(commands)
    _add_cache_command(commands)
    _add_evaluate_command(commands)
    _add_predict_command(commands)
    return parser


def _add_inspect_command(commands) -> None:
    inspect = _command(commands, "inspect", cmd_inspect,
                       "list a graph's inputs, outputs, ops and candidate cut points")
    inspect.add_argument("backbone_path", nargs="?", metavar="PATH",
                         help=".pb/.pbtxt GraphDef, SavedModel directory, .keras/.h5 file, or example:NAME")
    inspect.add_argument("--backbone", metavar="PATH", help="same as PATH")
    inspect.add_argument("--signature", metavar="NAME",
                         help="SavedModel signature (default: serving_default, else TF Hub's default)")
    inspect.add_argument("--cut", metavar="NAME", help="also resolve this cut (several as a,b) and check it")
    _add_graph_arguments(inspect)
    inspect.add_argument("--layers", action="store_true", help="list the weight layers before the cut (what "
                         "--thaw N counts), with their weights and parameter counts")
    inspect.add_argument("--all", action="store_true", help="list every tensor, not only the candidate cuts")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_fit_command(commands) -> None:
    fit = _command(commands, "fit", cmd_fit, "train a head on a frozen backbone's features; write a run directory")
    _add_input_arguments(fit)
    fit.add_argument("--head", default="linear", metavar="NAME",
                     help="linear, mlp, conv, attention, logreg, or module:Class (default: linear)")
    fit.add_argument("--head-opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="a head option, e.g. hidden=256,128 or pooling=flatten (repeatable)")
    _add_training_arguments(fit)
    thaw = fit.add_mutually_exclusive_group()
    thaw.add_argument("--thaw", type=int, metavar="N", help="also train the last N weight layers before the cut "
                      "(`transfer inspect --cut CUT --layers` lists them)")
    thaw.add_argument("--thaw-from", metavar="SCOPE", help="also train every weight layer from SCOPE to the cut")
    _add_thaw_training_arguments(fit)
    _add_cache_arguments(fit, "train the head on features from this feature cache, extracting them once "
                         "(default: no cache)", "--cache")
    fit.add_argument("--out", metavar="DIR", help="run directory (default: runs/fit-<timestamp>)")
    fit.add_argument("--export", type=_export_formats, default=("savedmodel", "pb"), metavar="FORMATS",
                     help="savedmodel, pb, tflite, comma-separated, or none; the list replaces the default "
                     "savedmodel,pb")
    fit.add_argument("--tensorboard", action="store_true",
                     help="write TensorBoard logs in RUN/tensorboard (scalars per epoch, confusion matrices)")
    fit.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _add_sweep_command(commands) -> None:
    sweep = _command(commands, "sweep", cmd_sweep, "train many heads and settings on features extracted once; "
                     "rank them; export the best")
    _add_input_arguments(sweep)
    sweep.add_argument("--cuts", metavar="A,B|candidates",
                       help="cuts to sweep, all extracted in one pass; 'candidates': every candidate cut that "
                       "`transfer inspect` lists (default: the one --cut)")
    _add_pool_argument(sweep)
    sweep.add_argument("--heads", type=lambda text: text.split(","), metavar="A,B",
                       help="heads to sweep, e.g. linear,mlp,logreg (default: linear)")
    sweep.add_argument("--head-opt", type=_key_value, action="append", default=[], metavar="KEY=A,B",
                       help="a head option's choices, e.g. pooling=avg,flatten or 'hidden=[[64],[128,64]]' "
                       "(applies to the heads that take it; repeatable)")
    sweep.add_argument("--lr", type=_choices(float), metavar="A,B", help=f"learning rates (default {default('lr')})")
    sweep.add_argument("--epochs", type=_choices(int), metavar="A,B", help=f"epochs (default {default('epochs')})")
    sweep.add_argument("--batch-size", type=_choices(int), metavar="A,B",
                       help=f"global batch sizes, split across the devices of --strategy "
                       f"(default {default('batch_size')})")
    sweep.add_argument("--optimizer", type=lambda text: text.split(","), metavar="A,B",
                       help=f"optimizers (default {default('optimizer')})")
    sweep.add_argument("--thaw", type=_choices(int), metavar="A,B",
                       help="also train the last N weight layers before the cut, from cached prefix outputs "
                            "(0 = frozen; default 0)")
    for flag, cast, meaning in (("--thaw-lr-scale", float, "thawed layers' learning rate / --lr"),
                                ("--thaw-weight-decay", float, "weight decay on the thawed layers"),
                                ("--unfreeze-every", int, "gradual unfreezing: one more layer every K epochs"),
                                ("--head-epochs", int, "epochs of the head alone before the thawed layers train")):
        sweep.add_argument(flag, type=_choices(cast), metavar="A,B", help=f"{meaning} (settings with thaw > 0)")
    sweep.add_argument("--grid", metavar="FILE", help="a TOML or YAML grid file instead of the axis flags")
    sweep.add_argument("--repeats", type=int, default=1, metavar="K", help="seeds per setting: mean ± std")
    sweep.add_argument("--patience", type=int, default=default("patience"),
                       help=f"early-stopping patience (default {default('patience')})")
    _add_strategy_argument(sweep)
    _add_cache_arguments(sweep, CACHE_HELP)
    sweep.add_argument("--out", metavar="DIR", help="sweep directory (default: runs/sweep-<timestamp>)")
    sweep.add_argument("--export", type=_export_formats, default=("savedmodel", "pb"), metavar="FORMATS",
                       help="exports of the best setting's run (savedmodel, pb, tflite, or none)")
    sweep.add_argument("--tensorboard", action="store_true",
                       help="write every run's TensorBoard logs and HParams summaries in OUT/tensorboard")
    sweep.add_argument("--json", action="store_true", help="print the ranked rows as JSON")


def _add_extract_command(commands) -> None:
    extract = _command(commands, "extract", cmd_extract, "extract features once into the feature cache")
    _add_input_arguments(extract)
    _add_cache_arguments(extract, CACHE_HELP)
    extract.add_argument("--batch-size", type=int, default=32)
    extract.add_argument("--shard-size", type=int, metavar="N", help="examples per shard (default: ~64 MiB)")
    _add_pool_argument(extract)
    extract.add_argument("--json", action="store_true", help="print the entries as JSON")


def _add_cache_command(commands) -> None:
    cache = _command(commands, "cache", cmd_cache, "list, verify or remove feature-cache entries")
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    summaries = (("ls", "list entries"), ("verify", f"check every shard's checksum (exit {CORRUPT_CACHE} if any is "
                 "corrupt)"), ("rm", "remove the given entries, or all with --all"))
    for action, summary in summaries:
        sub = actions.add_parser(action, help=summary, description=summary)
        sub.add_argument("keys", nargs="*", metavar="KEY", help="entries (default: all" +
                         ("; rm needs --all for that)" if action == "rm" else ")"))
        if action == "rm":
            sub.add_argument("--all", action="store_true", help="remove every entry of the cache directory")
        sub.add_argument("--cache-dir", metavar="DIR", help=CACHE_HELP)
        sub.add_argument("--json", action="store_true", help="print the entries as JSON")


def _add_evaluate_command(commands) -> None:
    evaluate = _command(commands, "evaluate", cmd_evaluate, "score a fit run on labelled data")
    evaluate.add_argument("run", metavar="RUN", help="run directory written by transfer fit")
    evaluate.add_argument("--data", required=True, metavar="SPEC", help="labelled data, as for fit")
    evaluate.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data directory")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--split", choices=["test", "all"], default="test",
                          help="score the data's test split (default; every example if it has none) or all of it")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _add_predict_command(commands) -> None:
    predict = _command(commands, "predict", cmd_predict, "top-k classes of images (or arrays) with a fit run")
    predict.add_argument("run", metavar="RUN", help="run directory written by transfer fit")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or .npy arrays of images or "
                         "of what a non-image backbone takes (one example or a batch)")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")


def _add_training_arguments(fit) -> None:
    """How the head trains: the flags of `TrainingSettings`, with its defaults."""
    fit.add_argument("--epochs", type=int, default=default("epochs"),
                     help=f"training epochs, >= 1 (default {default('epochs')})")
    fit.add_argument("--batch-size", type=int, default=default("batch_size"),
                     help=f"examples per batch: the global batch, split across the devices of --strategy "
                     f"(default {default('batch_size')})")
    fit.add_argument("--lr", type=float, default=default("lr"), help=f"learning rate (default {default('lr')})")
    fit.add_argument("--optimizer", default=default("optimizer"),
                     help=f"{', '.join(OPTIMIZERS)} (default {default('optimizer')})")
    fit.add_argument("--patience", type=int, default=default("patience"), help="early-stopping patience in "
                     f"epochs; the best epoch's weights are restored (default {default('patience')})")
    fit.add_argument("--class-weight", choices=["balanced"], help="weight classes against imbalance")
    fit.add_argument("--augment", action="store_true", help="random horizontal flips during training")
    fit.add_argument("--crop-padding", type=int, default=default("crop_padding"), metavar="N",
                     help="random shifts during training: pad by N pixels, crop back (default 0: off)")
    _add_strategy_argument(fit)


def _add_strategy_argument(parser) -> None:
    """Where training runs (`transfer.training.distribute`): the same flag on fit and sweep."""
    parser.add_argument("--strategy", default="default", choices=STRATEGIES,
                        help="where training runs: default (one device), mirrored (every GPU, else every logical "
                        "CPU, of this machine) or multiworker (the machines in $TF_CONFIG; the chief writes the "
                        "run directory). --batch-size is the global batch, split across devices/workers")


def _add_thaw_training_arguments(fit) -> None:
    """How the thawed layers train (with --thaw or --thaw-from)."""
    fit.add_argument("--thaw-lr-scale", type=float, metavar="F", help="thawed layers learn at --lr times F "
                     "(> 0, e.g. 0.1), the head at --lr (default 1)")
    fit.add_argument("--thaw-weight-decay", type=float, metavar="F", help="decoupled weight decay of the thawed "
                     "layers only (>= 0, e.g. 1e-4; default: the optimizer's)")
    fit.add_argument("--unfreeze-every", type=int, metavar="K", help="gradual unfreezing: the layer nearest the "
                     "cut trains from the start (of stage 2 with --head-epochs), one more every K epochs")
    fit.add_argument("--head-epochs", type=int, metavar="H", help="two stages: the head alone for H epochs, then "
                     "head and thawed layers for --thaw-epochs (early stopping per stage)")
    fit.add_argument("--thaw-epochs", type=int, metavar="T", help="epochs of the second stage (default: --epochs)")


def _add_input_arguments(parser) -> None:
    """Backbone, cut, data and preprocessing: the same flags wherever features are made."""
    parser.add_argument("--backbone", required=True, metavar="PATH", help="graph file, SavedModel dir or example:NAME")
    parser.add_argument("--cut", default="auto", metavar="NAME", help="where to cut the graph (default: auto)")
    parser.add_argument("--signature", metavar="NAME",
                        help="SavedModel signature (default: serving_default, else TF Hub's default)")
    _add_graph_arguments(parser)
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="folder:PATH | PATH | npz:FILE | tfds:NAME[:SPLIT] | digits[:5-9] (+ ?per_class=N)")
    parser.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data directory")
    parser.add_argument("--validation-split", type=float, default=0.2, metavar="F",
                        help="share of each class held out when the data has no validation split (default 0.2)")
    parser.add_argument("--per-class", type=int, metavar="N", help="train on N labelled examples per class")
    parser.add_argument("--seed", type=int, default=default("seed"), help="seeds the split (and training)")
    parser.add_argument("--scale", help="input scaling: none, 0..1, -1..1, caffe (default: from the "
                        "preprocessing JSON beside the backbone, else none)")
    parser.add_argument("--preprocessing", metavar="JSON", help="preprocessing settings file")


def _add_graph_arguments(parser) -> None:
    """Where the graph is fed and what it may run: the same flags wherever a graph is loaded."""
    parser.add_argument("--inputs", metavar="TENSOR", help="feed the graph at these tensors: placeholders or any op "
                        "(e.g. Mul; several as a,b), whose batch dimension is opened (default: its placeholders)")
    parser.add_argument("--feed", type=_feed, action="append", default=[], metavar="NAME=VALUE",
                        help="give placeholder NAME the constant VALUE, e.g. keep_prob=1.0 (repeatable)")
    parser.add_argument("--allow-op", action="append", default=[], metavar="TYPE",
                        help="let the cut run ops of TYPE that are refused by default (repeatable)")
    parser.add_argument("--max-memory", type=_size, metavar="SIZE",
                        help="what one example's tensors may take at once, read off the graph's static shapes before "
                        "it runs, e.g. 16G (default: half the memory available)")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except TransferError:
        raise argparse.ArgumentTypeError(f"{text!r} is no size; give one such as 512M, 16G or 1.5T") from None


def _feed(text: str):
    """`keep_prob=1.0` -> ("keep_prob", "1.0"): the API parses the value for the placeholder's dtype."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


CACHE_HELP = "feature cache directory (default: $TRANSFER_CACHE or ~/.cache/transfer)"


def _add_cache_arguments(parser, help_text: str, *aliases: str) -> None:
    parser.add_argument("--cache-dir", *aliases, metavar="DIR", help=help_text)
    parser.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"],
                        help="stored feature dtype (float16 halves the disk)")
    parser.add_argument("--engine", default="tf", choices=ENGINES,
                        help="what runs the frozen backbone when features are extracted: tf, onnxruntime (converted "
                        "once, checked against tf on the first batch) or auto (onnxruntime where installed and faster, "
                        "measured); training stays in TensorFlow (default: tf)")
    parser.add_argument("--runner", default="local", choices=RUNNERS,
                        help="where features are extracted: local (this process) or beam (an Apache Beam pipeline, "
                        "one work item per shard; pip install 'transfer[beam]') (default: local)")
    parser.add_argument("--beam-option", type=_beam_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a Beam pipeline option, e.g. direct_num_workers=2, direct_running_mode=multi_processing, "
                        "runner=DataflowRunner (repeatable; default: the DirectRunner)")


def _beam_option(text: str):
    """`direct_num_workers=2` -> ("direct_num_workers", "2"): Beam parses the value."""
    name, equals, value = text.partition("=")
    name = name.strip().removeprefix("--")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a Beam pipeline option), got {text!r}")
    return name, value


def _add_pool_argument(parser) -> None:
    parser.add_argument("--pool", choices=["none", "avg", "max"], default=None,
                        help="pool spatial features over every position before they are cached: one vector per "
                        "example and cut (default: none; on a sweep over several cuts, avg when every swept head "
                        "averages positions anyway)")


def _export_formats(text: str) -> tuple:
    """`savedmodel,pb` -> ("savedmodel", "pb"); `none` -> ()."""
    return () if text == "none" else tuple(text.split(","))


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
    try:
        if hasattr(args, "runner"):  # where extraction runs: a bad --beam-option is said before TensorFlow loads
            from transfer.features.runners import get_runner

            args.runner = get_runner(args.runner, args.beam_option)
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
    except BrokenPipeError:  # `transfer cache ls | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


def _print_user_warnings(command: str, caught) -> None:
    """Our own warnings (skipped image files) as one line each, like the errors; library
    warnings (Keras, TF) stay out of the user's way."""
    for warning in caught:
        if issubclass(warning.category, TransferWarning):
            print(f"transfer {command}: warning: {printable(warning.message)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
