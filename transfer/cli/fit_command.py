"""`transfer fit`: train a head on a backbone's features and write a run directory."""
from __future__ import annotations

import json

from transfer.cli.arguments import (add_cache_arguments, add_input_arguments, add_output_arguments,
                                     add_thaw_training_arguments, add_training_arguments, backbone_spec, command,
                                     data_spec, export_formats, fit_head_options, key_value, progress_streams)
from transfer.choices import HEADS
from transfer.text import printable
from transfer.training.settings import FIELDS as SETTINGS
from transfer.training.settings import TrainingSettings

MAIN_JOB = ("transfer fit --backbone example:digits --cut block2_out --head linear --head-opt pooling=flatten "
            "--data 'digits:5-9?per_class=10' --epochs 60 --lr 0.01")
EXAMPLES = f"""examples:
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
      # and the same with "index": 1 on host2: they train one model, the chief (index 0) writes it"""


def add(commands) -> None:
    fit = command(commands, "fit", run, "train a head on a frozen backbone's features; write a run directory",
                  EXAMPLES)
    add_input_arguments(fit)
    fit.add_argument("--head", default="linear", metavar="NAME",
                     help=f"{', '.join(HEADS)}, or module:Class (default: linear)")
    fit.add_argument("--head-opt", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="a head option, e.g. hidden=256,128 or pooling=flatten (repeatable)")
    add_training_arguments(fit)
    thaw = fit.add_mutually_exclusive_group()
    thaw.add_argument("--thaw", type=int, metavar="N", help="also train the last N weight layers before the cut "
                      "(`transfer inspect --cut CUT --layers` lists them)")
    thaw.add_argument("--thaw-from", metavar="SCOPE", help="also train every weight layer from SCOPE to the cut")
    add_thaw_training_arguments(fit)
    add_cache_arguments(fit, "train the head on features from this feature cache, extracting them once "
                         "(default: no cache)", "--cache")
    fit.add_argument("--out", metavar="DIR", help="run directory (default: runs/fit-<timestamp>)")
    fit.add_argument("--export", type=export_formats, default=("savedmodel", "pb"), metavar="FORMATS",
                     help="savedmodel, pb, tflite, comma-separated, or none; the list replaces the default "
                     "savedmodel,pb")
    fit.add_argument("--tensorboard", action="store_true",
                     help="write TensorBoard logs in RUN/tensorboard (scalars per epoch, confusion matrices)")
    add_output_arguments(fit, "print the metrics and the run directory (run_dir) as JSON")


def run(args) -> int:
    from transfer.training.fitting import default_run_dir, fit

    out = args.out or default_run_dir("fit")
    settings = TrainingSettings(**{name: getattr(args, name) for name in SETTINGS})
    head_options = fit_head_options(args.head_opt)
    with progress_streams(args):
        result = fit(backbone_spec(args), data_spec(args), settings, head=args.head, head_options=head_options,
                     cache_dir=args.cache_dir, cache_dtype=args.cache_dtype, engine=args.engine, runner=args.runner,
                     precision=args.precision, calibration_size=args.calibration_size, out=out, export=args.export,
                     tensorboard=args.tensorboard, strategy=args.strategy,
                     verbose=0 if args.quiet else ("auto" if not args.json else 2))
    if args.json:
        print(json.dumps({**result.metrics, "run_dir": None if result.run_dir is None else str(result.run_dir)},
                         indent=2))  # run_dir None: another worker's run, written by the chief
    else:
        scores = [f"{role} accuracy {result.metrics[role]['accuracy']:.3f} "
                  f"({result.metrics[role]['examples']} examples)"
                  for role in ("validation", "test") if role in result.metrics]
        if "training" in result.metrics:
            print(result.metrics["training"]["summary"])
        print(", ".join(scores) or "no validation or test data to score")
        print(f"run directory: {printable(result.run_dir or 'written by the chief worker')}")
    return 0
