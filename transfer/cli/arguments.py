"""What several commands share: their flags (one definition each, so that `fit`, `sweep` and
`extract` say the same thing), the parsers of flag values, and how a command's table prints.

No TensorFlow here: `--help` and argument errors must answer at once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from transfer.choices import CACHE_DTYPES, ENGINES, OPTIMIZERS, POOLS, PRECISIONS, RUNNERS, STRATEGIES
from transfer.errors import TransferError
from transfer.features.calibration import CALIBRATION
from transfer.graph.memory import parse_size
from transfer.training.settings import default

CACHE_HELP = "feature cache directory (default: $TRANSFER_CACHE or ~/.cache/transfer)"


def command(commands, name: str, handler, summary: str, examples: str | None = None) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=summary, epilog=examples,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.set_defaults(handler=handler)
    return sub


def add_output_arguments(parser, json_help: str) -> None:
    """`--json`, and how much is said meanwhile: `--quiet` (the results only) or `--verbose`."""
    parser.add_argument("--json", action="store_true", help=json_help + "; stdout then holds only the JSON, the "
                        "stage lines and progress go to stderr")
    said = parser.add_mutually_exclusive_group()
    said.add_argument("--quiet", "-q", action="store_true", help="print only the results: no stage lines, "
                      "progress bars or epochs")
    said.add_argument("--verbose", "-v", action="store_true", help="say more: each cut's tensor and shape, cache "
                      "entries' keys and folders, extraction times, the engine's choice, each thawed layer's step")


@contextlib.contextmanager
def progress_streams(args):
    """While a command works: with `--json`, everything it prints (stage lines, progress bars,
    Keras' epochs) goes to stderr, so that stdout holds only the JSON printed after; with
    `--verbose`, detail lines (`transfer.detail`) are printed too."""
    from transfer.detail import show_details

    show_details(bool(getattr(args, "verbose", False)))
    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            yield
    finally:
        show_details(False)


def add_training_arguments(fit) -> None:
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
    add_strategy_argument(fit)


def add_strategy_argument(parser) -> None:
    """Where training runs (`transfer.training.distribute`): the same flag on fit and sweep."""
    parser.add_argument("--strategy", default="default", choices=STRATEGIES,
                        help="where training runs: default (one device), mirrored (every GPU, else every logical "
                        "CPU, of this machine) or multiworker (the machines in $TF_CONFIG; the chief writes the "
                        "run directory). --batch-size is the global batch, split across devices/workers")


def add_thaw_training_arguments(fit) -> None:
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


def add_input_arguments(parser) -> None:
    """Backbone, cut, data and preprocessing: the same flags wherever features are made."""
    parser.add_argument("--backbone", required=True, metavar="PATH", help="graph file, SavedModel dir or example:NAME")
    parser.add_argument("--cut", default="auto", metavar="NAME", help="where to cut the graph (default: auto)")
    parser.add_argument("--signature", metavar="NAME",
                        help="SavedModel signature (default: serving_default, else TF Hub's default)")
    add_graph_arguments(parser)
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


def add_graph_arguments(parser) -> None:
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


def add_cache_arguments(parser, help_text: str, *aliases: str) -> None:
    parser.add_argument("--cache-dir", *aliases, metavar="DIR", help=help_text)
    parser.add_argument("--cache-dtype", default="float32", choices=CACHE_DTYPES,
                        help="stored feature dtype (float16 halves the disk)")
    parser.add_argument("--engine", default="tf", choices=ENGINES,
                        help="what runs the frozen backbone when features are extracted: tf, onnxruntime or "
                        "openvino (converted once, checked against tf on the first batch) or auto (the fastest of "
                        "those installed, measured); training stays in TensorFlow (default: tf)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="int8: extract with the backbone quantized by NNCF (--engine openvino or auto; "
                        "pip install 'transfer[openvino]'), calibrated on training examples and refused (fp32 "
                        "then) when its features disagree with fp32's (default: fp32)")
    parser.add_argument("--calibration-size", type=int, default=CALIBRATION, metavar="N",
                        help="--precision int8: how many training examples (a seeded sample) it is calibrated on; "
                        f"64 kept every measured probe within 1 point of fp32 (default: {CALIBRATION})")
    parser.add_argument("--runner", default="local", choices=RUNNERS,
                        help="where features are extracted: local (this process), beam (an Apache Beam pipeline, "
                        "one work item per shard; pip install 'transfer[beam]') or dask (beam on a dask.distributed "
                        "cluster, --beam-option dask_client_address=HOST:PORT; pip install 'transfer[dask]') "
                        "(default: local)")
    parser.add_argument("--beam-option", type=_beam_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a Beam pipeline option, e.g. direct_num_workers=2, direct_running_mode=multi_processing, "
                        "runner=DaskRunner, dask_client_address=HOST:PORT, runner=DataflowRunner (repeatable; "
                        "default: Beam's FnApiRunner in this process, which downloads nothing)")


def _beam_option(text: str):
    """`direct_num_workers=2` -> ("direct_num_workers", "2"): Beam parses the value."""
    name, equals, value = text.partition("=")
    name = name.strip().removeprefix("--")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a Beam pipeline option), got {text!r}")
    return name, value


def add_pool_argument(parser) -> None:
    parser.add_argument("--pool", choices=POOLS, default=None,
                        help="pool spatial features over every position before they are cached: one vector per "
                        "example and cut, or grid2: a 2x2 grid of cells that keeps some of the layout, from "
                        "which a cut sweep ranks both the average and the grid (default: none; on a sweep over "
                        "several cuts, avg when every swept head averages positions anyway)")


def export_formats(text: str) -> tuple:
    """`savedmodel,pb` -> ("savedmodel", "pb"); `none` -> ()."""
    return () if text == "none" else tuple(text.split(","))


def graph_options(args) -> dict:
    """Where and with what the graph is fed (`--inputs`, `--feed`, `--allow-op`), as API keywords."""
    return {"inputs": args.inputs, "feeds": dict(args.feed) or None, "allow_ops": args.allow_op,
            "max_memory": args.max_memory}


def choices_of(cast):
    """`1e-3,3e-3` -> [0.001, 0.003]: the values a sweep axis takes."""
    def parse(text: str):
        try:
            return [cast(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {cast.__name__} values, got {text!r}") from None
    return parse


def key_value(text: str):
    """`--head-opt hidden=128,64` -> ("hidden", [128, 64]); values are JSON where they parse."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parts = [json_or_text(v) for v in value.split(",")] if "," in value and not value.startswith("[") else None
    return key, parts if parts is not None else json_or_text(value)


def fit_head_options(pairs) -> dict:
    """`fit`'s `--head-opt` pairs as head options: each key once (a fit trains one setting)."""
    options = {}
    for key, value in pairs:
        if key in options:
            raise TransferError(f"--head-opt {key} is given twice ({_typed(options[key])} and {_typed(value)}); "
                                "a fit trains one setting: give it once (alternatives are for transfer sweep)")
        options[key] = value
    return options


def sweep_head_options(pairs, list_valued) -> dict:
    """`sweep`'s `--head-opt` pairs as {key: [alternatives]}, in the grammar `fit` reads too: a
    comma joins the values of one setting for an option whose value is a list (`hidden=64,32`:
    two layers), and separates alternatives for any other (`pooling=avg,flatten`); repeating
    `--head-opt KEY=...` adds alternatives (`--head-opt hidden=64,32 --head-opt hidden=128`);
    a JSON list of lists gives several (`'hidden=[[64],[128,64]]'`). `list_valued(key)`: whether
    the swept heads take a list for `key` (None: they disagree, which makes a comma ambiguous)."""
    options = {}
    for key, value in pairs:
        kind = list_valued(key)
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            alternatives = value
        elif isinstance(value, list) and kind is None:
            raise TransferError(f"--head-opt {key}={_typed(value)}: some of the swept heads take a list for {key} and "
                                "some one value, so the comma is ambiguous: sweep those heads apart")
        else:
            alternatives = [value] if kind or not isinstance(value, list) else value
        options.setdefault(key, []).extend(alternatives)
    return options


def _typed(value) -> str:
    """A value as it was typed (`64,32`, `avg`)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def table(rows) -> str:
    from transfer.tables import format_table

    return "\n".join(format_table(rows))


def backbone_spec(args):
    """The backbone flags (`--cut`, `--signature`, `--inputs`, `--feed`, `--allow-op`, `--max-memory`)
    as one `BackboneSpec`, checked now."""
    from transfer.graph.spec import BackboneSpec

    return BackboneSpec(args.backbone, cut=args.cut, signature=args.signature, **graph_options(args))


def data_spec(args):
    """The data flags (`--data-dir`, `--validation-split`, `--per-class`, `--seed`, `--preprocessing`,
    `--scale`) as one `DataSpec`, checked now."""
    from transfer.data.spec import DataSpec

    return DataSpec(args.data, data_dir=args.data_dir, validation_split=args.validation_split,
                    per_class=args.per_class, seed=args.seed, preprocessing=args.preprocessing, scale=args.scale)
