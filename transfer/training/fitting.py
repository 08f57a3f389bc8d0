"""`transfer.fit`: a frozen backbone, a head, a dataset -> a trained Keras model and a run directory.

Training is plain Keras `model.fit` on tf.data pipelines, so the user's own callbacks see the
usual logs; under a `tf.distribute` strategy (`strategy=`) every variable is made in its
scope and `transfer.training.distribute.fit_model` trains (the same contract on several workers). The
scikit-learn probe (`logreg`) is fitted on extracted features instead and then turned into the
equivalent Dense head, so that every head exports the same way. What a head is (trained by
Keras or fitted by scikit-learn, reads several cuts, averages positions, adapts, refits, keeps a
subset of cuts) is read from its declared traits (`transfer.heads.protocol`), never probed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import keras
import numpy as np

from transfer import heads
from transfer._version import __version__
from transfer.training.distribute import run_dir_of, strategy_config, strategy_named
from transfer.choices import EXPORT_FORMATS
from transfer.detail import detail
from transfer.errors import TransferError, check_choice
from transfer.graph.memory import memory_errors
from transfer.heads.pooling import averages_exactly
from transfer.heads.protocol import traits_of
from transfer.heads.sklearn_probe import probe_as_head
from transfer.layers.model import build_classifier
from transfer.data.spec import DataSpec
from transfer.training.keywords import dispatch
from transfer.training.settings import FIELDS as SETTING_FIELDS, TrainingSettings
from transfer.features.spec import CacheSpec
from transfer.features.inputs import open_inputs
from transfer.training.prediction import predict_batches
from transfer.features.runners import get_runner
from transfer.training.reporting import check_new_run_dir, run_directory, run_title
from transfer.training.tensorboard_logs import TensorBoardLogs
from transfer.training.keras_training import TrainingLog, class_weights, train_keras, trained_with_refit
from transfer.training.run_files import evaluate_splits, write_run
from transfer.training.concatenation_end import keep_better_end
from transfer.training.sources import adapt_head, measured_thaw_steps, training_source



@dataclasses.dataclass
class FitResult:
    model: keras.Model
    history: dict  # metric name -> one value per epoch (empty for the logreg probe)
    metrics: dict
    run_dir: Path | None
    class_names: list


def default_run_dir(command: str = "fit") -> Path:
    return Path("runs") / f"{command}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


@dataclasses.dataclass
class _FitRun:
    """One `fit` call once its arguments are checked: what the training steps read."""

    inputs: object  # transfer.features.inputs.Inputs
    head: str
    kind: object  # heads.kind_of(head)
    head_options: dict
    settings: TrainingSettings
    cache: CacheSpec
    config: dict
    callbacks: list
    out: object
    export: tuple
    tensorboard: bool
    verbose: object
    strategy: object


@memory_errors()
def fit(backbone, data, settings: TrainingSettings | None = None, *, head="linear", head_options=None, callbacks=(),
        cache: CacheSpec | None = None, out=None, export=("savedmodel", "pb"), tensorboard: bool = False,
        verbose="auto", strategy=None, **options) -> FitResult:
    """Train `head` on the features of `backbone` cut at `cut`; see README "transfer fit".

    `backbone`: a path, `example:NAME`, a `BackboneSpec` or a `Backbone`; `data`: a spec
    (`transfer.datasets.load`), a `DataSpec` or `DataSplits`. How it trains: `settings`
    (`TrainingSettings`) or its fields as keyword arguments (epochs, batch_size, lr, optimizer,
    patience, class_weight, seed, augment, crop_padding, thaw=N or thaw_from=SCOPE with the thaw
    options); `seed` also splits the data. `options`, besides those: the backbone's (cut,
    signature, inputs, feeds, allow_ops, max_memory: where and with what the graph is fed and
    what one example may take, as for `Backbone.load`; ignored when `backbone` is a `Backbone`
    already), the data's (data_dir, validation_split, per_class, preprocessing, scale) and the
    cache's (cache_dir, cache_dtype, engine, precision, runner; or `cache`, a `CacheSpec`). With `out`, a
    run directory is written (config, metrics, history, plots, model.keras and the exports);
    without, nothing touches the disk. With `cache_dir`, the head trains on features from the
    feature cache (extracted once, reused by later runs; `runner`: where that extraction runs,
    "local" or "beam" or a `transfer.features.runners.BeamRunner`). Running out of memory is a
    TransferError. `strategy`: where it trains, `default`, `mirrored`, `multiworker`
    (`transfer.training.distribute`) or a `tf.distribute.Strategy`; `batch_size` is the global
    batch, split across its replicas. Under `multiworker` only the chief writes `out`; the other
    workers return no run_dir. An unknown keyword is one line naming the valid ones.
    """
    backbone, data, cache, settings = fit_specs(backbone, data, settings, cache, options)
    verbose, export = _checked_output(out, export, tensorboard, verbose)
    head_options = dict(head_options or {})
    kind = _checked_head(head, head_options, settings)
    strategy = strategy_named(strategy)  # before TensorFlow runs anything: multiworker must
    keras.utils.set_random_seed(settings.seed)
    inputs = open_inputs(backbone, data, batch_size=settings.batch_size, augment=settings.augment,
                         crop_padding=settings.crop_padding, engine=cache.engine, precision=cache.precision,
                         calibration_size=cache.calibration_size)
    _check_inputs(inputs, head, kind, cache)
    inputs.announce(data, progress=verbose != 0)
    config = {"transfer_version": __version__,
              "command": " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("transfer") else None,
              **_source_config(inputs, data), "head": head, "head_options": head_options, **settings.to_config(),
              "cache_dir": cache.dir, "cache_dtype": cache.dtype, "engine": cache.engine,
              **cache.precision_config, "runner": cache.runner.name,
              "export": list(export), "strategy": strategy_config(strategy)}
    return _fit_run(_FitRun(inputs, head, kind, head_options, settings, cache, config, list(callbacks), out, export,
                            tensorboard, verbose, strategy))


def fit_specs(backbone, data, settings: TrainingSettings | None, cache: CacheSpec | None, options: dict,
              owner: str = "fit") -> tuple:
    """`fit`'s keyword arguments as (backbone or BackboneSpec, DataSpec, CacheSpec with its runner
    made, TrainingSettings): each checked when made, before any slow work; the data split with
    the training seed."""
    backbone, data, cache, training = dispatch(owner, backbone, data, options, cache=cache, own=SETTING_FIELDS,
                                               cache_keywords=("cache_dir", "cache_dtype", "engine", "runner",
                                                                               "precision", "calibration_size"))
    settings = TrainingSettings.of(settings, **training)
    runner = get_runner(cache.runner)  # unknown, or Beam missing: before any slow work
    return backbone, DataSpec.of(data, seed=settings.seed), CacheSpec.of(cache, runner=runner), settings


def _checked_output(out, export, tensorboard: bool, verbose) -> tuple:
    """(verbose, export formats), checked with where the run is written, before any slow work."""
    if verbose == "auto" and not sys.stdout.isatty():
        verbose = 2  # a line per epoch: a progress bar's ANSI codes would litter a log file
    export = tuple(export or ())
    for name in export:
        check_choice("export format", name, EXPORT_FORMATS, flag="--export")
    if out is not None:
        check_new_run_dir(out)
    elif tensorboard:
        raise TransferError("TensorBoard logs are written in the run directory: give `out` with `tensorboard`")
    return verbose, export


def _checked_head(head, head_options: dict, settings: TrainingSettings):
    """The head's kind (`heads.kind_of`): an unknown head or option fails before any slow work."""
    kind = heads.kind_of(head)
    kind.check_options(head_options)
    if settings.thawing and not kind.traits.keras:
        raise TransferError(f"head {head!r} is fitted by scikit-learn on frozen features, so thawed layers would not "
                            "train: use a Keras head (linear, mlp, conv, attention) with --thaw")
    return kind


def _check_inputs(inputs, head, kind, cache: CacheSpec) -> None:
    """What the loaded backbone and data refuse for this head and cache."""
    if inputs.backbone.multi_cut and not kind.traits.several_cuts:
        cuts = [c.spec for c in inputs.backbone.cuts]
        raise TransferError(f"head {head!r} trains on one cut; got {len(cuts)} cuts ({', '.join(cuts[:4])}"
                            f"{', …' if len(cuts) > 4 else ''}); a head of several cuts: --head multilayer")
    cache.check_uncached()
    if cache.dir is not None and inputs.batches.augmentation is not None:
        raise TransferError("augmentation changes the images every epoch, cached features cannot; "
                            "drop --augment/--crop-padding or --cache-dir")


def _fit_run(run: _FitRun) -> FitResult:
    """Train and evaluate; written as OUT.partial while training (TensorBoard can watch it), renamed
    when all went well; by the chief only: another worker writes into a temporary directory that it
    removes."""
    inputs, settings, config = run.inputs, run.settings, run.config
    with run_dir_of(run.strategy, run.out) as written, \
            run_directory(written) if written is not None else contextlib.nullcontext() as directory:
        logs = TensorBoardLogs(directory / "tensorboard" if run.tensorboard and directory else None)
        with run.strategy.scope():  # the thawed weights, the head and the optimizer are made in it
            feature_layer = _feature_layer(inputs, settings)
            source = training_source(inputs, feature_layer, settings, run.cache, progress=run.verbose != 0,
                                      pool=cache_pool(inputs.backbone, run.kind, run.head_options, run.cache.pool))
            started = time.perf_counter()
            head_layer, trained, log = _train_head(source, feature_layer, settings, run.kind, run.head_options,
                                                   [*logs.callbacks(), *run.callbacks], run.verbose)
            ends = None if settings.thawing else keep_better_end(head_layer, trained, source)
            feature_layer, head_layer, kept = keep_selected_cuts(inputs, feature_layer, head_layer)
            model = build_classifier(feature_layer, head_layer, inputs.kind)
        seconds = time.perf_counter() - started
        if kept is not None:
            config["kept_cuts"] = kept
        metrics = evaluate_splits(trained, source, inputs.splits.class_names)
        if ends is not None:
            metrics["selection"] = _said_selection(ends, run.verbose)
        logs.confusion_matrices(metrics, step=log.epochs_run, title=run_title(config))
        metrics["train_seconds"] = round(seconds, 2)
        if log.history:
            metrics["training"] = {"epochs_run": log.epochs_run, "stopped_early": log.stopped_early,
                                   "kept_epoch": log.kept_epoch, "summary": log.summary()}
        if directory is not None:
            write_run(directory, model, config, metrics, log, inputs.splits.class_names, run.export)
    run_dir = Path(run.out) if run.out is not None and written == run.out else None
    return FitResult(model, log.history, metrics, run_dir, inputs.splits.class_names)


def _said_selection(ends: dict, verbose) -> dict:
    """What `keep_better_end` compared, said in one line (unless quiet) and kept in the metrics."""
    if verbose != 0:
        chosen = "every cut concatenated" if ends["kept"] == "concatenation" else "the trained selection"
        print(f"selection: validation {ends['trained_val_accuracy']:.3f} trained, "
              f"{ends['concatenation_val_accuracy']:.3f} with every cut concatenated: kept {chosen}",
              file=sys.stderr, flush=True)
    return ends


def _source_config(inputs, data: DataSpec) -> dict:
    """What a run records of its backbone, cut, data and inputs: enough to repeat it."""
    backbone, splits = inputs.backbone, inputs.splits
    return {"backbone": backbone.loaded.source, "backbone_fingerprint": backbone.fingerprint,
            "signature": backbone.loaded.signature, "cut": ",".join(c.spec for c in backbone.cuts),
            "cut_tensor": ",".join(c.name for c in backbone.cuts), **backbone.feeding,
            "data": data.data if data.named else None, "data_identity": splits.identity,
            "data_dir": data.data_dir, "validation_split": data.validation_split,
            "per_class": splits.identity.get("split", {}).get("per_class", data.per_class),  # ?per_class=N too
            "class_names": splits.class_names, **inputs.kind.to_config(),
            "input_range": inputs.input_range()}


def _feature_layer(inputs, settings: TrainingSettings):
    """The frozen FeatureLayer, or with a thaw the ThawedFeatureLayer whose last layers train."""
    if not settings.thawing:
        return inputs.feature_layer()
    from transfer.layers.thawing import ThawedFeatureLayer

    return ThawedFeatureLayer(inputs.backbone, last=settings.thaw, from_scope=settings.thaw_from, name="features")


def cache_pool(backbone, kind, head_options: dict, requested: str | None = None) -> str:
    """What the cache stores of several cuts for a head (`heads.kind_of`) that reads them all:
    their averages when the head averages each over positions anyway (`multilayer`: grid 1), which
    keeps a cache of many cuts small; else the features as they are. Averages also for a head of
    one cut that averages them when the cache spec asks for them (`pool="avg"`: a cut sweep's best
    setting, retrained from the entries the sweep cached), and a 2x2 grid of cells (`pool="grid2"`)
    for a head that pools to that grid, or averages maps whose sides are even (the mean of the
    cells is then their average exactly). Frozen features only: a thaw caches its
    prefix's outputs whole."""
    averages = kind.averages_positions(head_options)
    if requested == "avg" and averages:
        return "avg"
    if requested == "grid2" and (kind.pools_to_grid2(head_options) or averages and all(
            averages_exactly(spec.shape) for spec in backbone.feature_specs.values())):
        return "grid2"
    return "avg" if backbone.multi_cut and kind.traits.several_cuts and averages else "none"


def keep_selected_cuts(inputs, feature_layer, head) -> tuple:
    """After a head that selects cuts (`multilayer`: `kept`, `subset`) has trained: its mask
    set to the features it kept, and, when it dropped whole cuts, a feature layer of the kept
    cuts only with the head made for them, so that the model (and every export) computes only
    those; a thawed layer keeps the trained values of the layers those cuts depend on
    (`ThawedFeatureLayer.recut`). Returns (feature layer, head, the kept cut specs or None)."""
    if not traits_of(head).subsets:
        return feature_layer, head, None
    head.set_mask(head.kept_features())
    kept = list(head.kept)
    specs = [cut.spec for cut in inputs.backbone.cuts]
    if not kept:
        raise TransferError(f"head {head.head_name!r}: its penalty dropped every cut (strength={head.strength}); "
                            "use a smaller strength")
    if len(kept) == len(specs):
        return feature_layer, head, specs
    kept_specs = [specs[number] for number in kept]
    return feature_layer.recut(kept_specs), head.subset(kept), kept_specs


def _train_head(source, feature_layer, settings: TrainingSettings, kind, head_options, callbacks, verbose):
    """A Keras head (`heads.kind_of`) trained with `model.fit`, or the scikit-learn probe fitted on
    extracted features and turned into the equivalent Dense head: (head layer, trained model, log)."""
    num_classes = source.num_classes
    if not kind.traits.keras:
        probe = kind.build(num_classes=num_classes, **head_options)
        x_train, y_train = predict_batches(source.model(keras.layers.Identity()), source.split("train"))
        head_layer = probe_as_head(probe.fit(x_train, y_train), x_train.shape)
        return head_layer, source.model(head_layer), TrainingLog({})
    head_layer = kind.build(num_classes=num_classes, **head_options)
    trained = source.model(head_layer)
    detail(f"training: {settings.optimizer} at lr {settings.lr:g}, batch size {settings.batch_size}, up to "
           f"{settings.epochs} epochs, patience {settings.patience}; {trained.count_params()} weights, "
           f"{sum(int(np.prod(w.shape)) for w in trained.trainable_weights)} trainable")
    adapt_head(head_layer, source)
    class_weight = settings.class_weight
    if class_weight == "balanced":
        class_weight = class_weights(source.split("train"))
    validation = source.split("validation")
    step_scales = measured_thaw_steps(source, feature_layer, settings.lr) if settings.thawing else None
    say_thaw_steps(feature_layer, step_scales, verbose)

    def train_once():
        plan = settings.thaw_training.plan(feature_layer, settings.optimizer, settings.lr, settings.epochs,
                                           settings.patience, validated=validation is not None, step_scales=step_scales)
        return train_keras(trained, head_layer, source.training(), validation, epochs=plan.epochs, lr=settings.lr,
                           optimizer=plan.optimizer, patience=plan.patience, class_weight=class_weight,
                           callbacks=[*plan.callbacks, *callbacks], verbose=verbose)

    return head_layer, trained, trained_with_refit(head_layer, train_once)[-1]




def say_thaw_steps(feature_layer, step_scales: dict | None, verbose) -> None:
    """One line per thawed layer whose step was scaled down (`transfer.training.thaw_steps`)."""
    if verbose == 0 or not step_scales:
        return
    for layer in feature_layer.plan.layers:
        if step_scales.get(layer.index, 1.0) < 1:
            print(f"thaw: {layer.scope} trains at lr x {step_scales[layer.index]:.2g}: a step at the full rate "
                  "would move the cut features by more than their spread", flush=True)
