"""`transfer sweep`: many heads and settings over one extraction, ranked; the best retrained."""
from __future__ import annotations

import json

from transfer.choices import HEADS
from transfer.cli.arguments import (CACHE_HELP, add_cache_arguments, add_input_arguments, add_output_arguments,
                                     add_pool_argument, add_strategy_argument, backbone_spec, choices_of, command,
                                     data_spec, export_formats, key_value, progress_streams, sweep_head_options)
from transfer.text import printable
from transfer.training.settings import default

EXAMPLES = """examples:
  transfer sweep --backbone example:digits --cut block2_out --data 'digits:5-9?per_class=10' \\
      --heads linear,mlp,logreg --head-opt pooling=avg,flatten --lr 1e-3,1e-2 --epochs 40 --repeats 3
  transfer sweep --backbone model.pb --cut resnet_features --data photos/ --grid grid.toml
  transfer sweep --backbone example:digits --cuts candidates --heads logreg --data 'digits:5-9?per_class=10'"""


def add(commands) -> None:
    sweep = command(commands, "sweep", run, "train many heads and settings on features extracted once; "
                    "rank them; export the best", EXAMPLES)
    add_input_arguments(sweep)
    sweep.add_argument("--cuts", metavar="A,B|candidates",
                       help="cuts to sweep, all extracted in one pass; 'candidates': every candidate cut that "
                       "`transfer inspect` lists (default: the one --cut)")
    add_pool_argument(sweep)
    sweep.add_argument("--finalists", type=int, default=None, metavar="N",
                       help="with more cuts than N and only logreg: rank every cut with the closed-form ridge probe "
                       "(average and 2x2-grid pooling), the full probe on the best N (default 3; "
                       "0: the full probe on every cut)")
    sweep.add_argument("--heads", type=lambda text: text.split(","), metavar="A,B",
                       help=f"heads to sweep, e.g. linear,mlp,logreg (default: linear); built in: {', '.join(HEADS)}")
    sweep.add_argument("--head-opt", type=key_value, action="append", default=[], metavar="KEY=A,B",
                       help="a head option's choices, e.g. pooling=avg,flatten; an option that takes a list reads "
                       "a comma as fit does (hidden=64,32: two layers), and a repeated --head-opt adds choices "
                       "(--head-opt hidden=64,32 --head-opt hidden=128); applies to the heads that take it")
    sweep.add_argument("--lr", type=choices_of(float), metavar="A,B", help=f"learning rates (default {default('lr')})")
    sweep.add_argument("--epochs", type=choices_of(int), metavar="A,B", help=f"epochs (default {default('epochs')})")
    sweep.add_argument("--batch-size", type=choices_of(int), metavar="A,B",
                       help=f"global batch sizes, split across the devices of --strategy "
                       f"(default {default('batch_size')})")
    sweep.add_argument("--optimizer", type=lambda text: text.split(","), metavar="A,B",
                       help=f"optimizers (default {default('optimizer')})")
    sweep.add_argument("--thaw", type=choices_of(int), metavar="A,B",
                       help="also train the last N weight layers before the cut, from cached prefix outputs "
                            "(0 = frozen; default 0)")
    for flag, cast, meaning in (("--thaw-lr-scale", float, "thawed layers' learning rate / --lr"),
                                ("--thaw-weight-decay", float, "weight decay on the thawed layers"),
                                ("--unfreeze-every", int, "gradual unfreezing: one more layer every K epochs"),
                                ("--head-epochs", int, "epochs of the head alone before the thawed layers train")):
        sweep.add_argument(flag, type=choices_of(cast), metavar="A,B", help=f"{meaning} (settings with thaw > 0)")
    sweep.add_argument("--grid", metavar="FILE", help="a TOML or YAML grid file instead of the axis flags")
    sweep.add_argument("--repeats", type=int, default=1, metavar="K", help="seeds per setting: mean ± std")
    sweep.add_argument("--patience", type=int, default=default("patience"),
                       help=f"early-stopping patience (default {default('patience')})")
    add_strategy_argument(sweep)
    add_cache_arguments(sweep, CACHE_HELP)
    sweep.add_argument("--out", metavar="DIR", help="sweep directory (default: runs/sweep-<timestamp>)")
    sweep.add_argument("--export", type=export_formats, default=("savedmodel", "pb"), metavar="FORMATS",
                       help="exports of the best setting's run (savedmodel, pb, tflite, or none)")
    sweep.add_argument("--tensorboard", action="store_true",
                       help="write every run's TensorBoard logs and HParams summaries in OUT/tensorboard")
    add_output_arguments(sweep, "print the sweep directory (run_dir), the best setting's run (best_dir) and the "
                         "ranked rows (rows) as JSON")


def _list_valued(heads: list[str]):
    """Whether the swept heads take a list for an option (their declared default is one): True,
    False, or None where they disagree. Heads that do not take the option have no say."""
    from transfer.heads import registry

    kinds = [registry.kind_of(name) for name in heads]

    def list_valued(key: str):
        said = {isinstance(kind.default(key), (list, tuple)) for kind in kinds if kind.takes(key)}
        return next(iter(said)) if len(said) == 1 else (None if said else False)

    return list_valued


def run(args) -> int:
    from transfer.sweep.report import format_table
    from transfer.sweep.sweeping import sweep
    from transfer.training.fitting import default_run_dir

    axes = {key: getattr(args, key) for key in ("lr", "epochs", "batch_size", "optimizer", "thaw", "thaw_lr_scale",
                                                "thaw_weight_decay", "unfreeze_every", "head_epochs")
            if getattr(args, key) is not None}
    with progress_streams(args):
        result = sweep(backbone_spec(args), data_spec(args), heads=args.heads or ["linear"], grid=args.grid,
                       head_options=sweep_head_options(args.head_opt, _list_valued(args.heads or ["linear"])),
                       repeats=args.repeats, seed=args.seed, patience=args.patience, cuts=args.cuts, pool=args.pool,
                       cache_dir=args.cache_dir, cache_dtype=args.cache_dtype, engine=args.engine, runner=args.runner,
                       precision=args.precision, calibration_size=args.calibration_size,
                       out=args.out or default_run_dir("sweep"),
                       export=args.export, tensorboard=args.tensorboard, progress=not args.quiet,
                       strategy=args.strategy, **axes,
                       **({"finalists": args.finalists} if args.finalists is not None else {}))
    if args.json:  # where the sweep went, for scripts; None on a worker that is not the chief
        best_dir = result.best.run_dir if result.best is not None else None
        print(json.dumps({"run_dir": None if result.run_dir is None else str(result.run_dir),
                          "best_dir": None if best_dir is None else str(best_dir), "rows": result.rows}, indent=2))
    else:
        print(format_table(result.rows))
        print(printable(f"sweep directory: {result.run_dir} (best setting retrained into {result.best.run_dir})"
                        if result.run_dir else "sweep directory: written by the chief worker"))
    return 0
