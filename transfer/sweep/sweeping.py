"""Sweeps: train many head settings on features extracted once, and rank them.

The backbone is the slow part of transfer learning and does not change between head settings,
so a sweep trains every setting on the same feature datasets (from the feature cache or any
tf.data source) and leaves a ranked table, `sweep.csv`, `sweep.json` and a bar chart. Settings
are ranked by validation accuracy; test accuracy only breaks exact ties, since choosing by it
would fit the test split. `run_sweep` trains settings on any `FeatureSplits`; `sweep` adds what
the command needs around it: the backbone and data, the feature cache, thawed layers, the files,
and the best setting retrained into a full `transfer fit` run. With `out`, each finished trial is
written to the run directory's journal as it finishes (`transfer.sweep.journal`), so a killed sweep rerun
with the same `out` trains only the trials it lacks.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transfer import heads as registry
from transfer.heads.registry import CLASS_COUNT
from transfer.errors import TransferError, check_int
from transfer.files import written_whole
from transfer.sweep.journal import TrialJournal, check_resumable, finished_trials
from transfer.layers.model import head_model
from transfer.training.reporting import pyplot, write_json
from transfer.features.inputs import FeatureSplits
from transfer.features.runners import get_runner
from transfer.features.spec import CacheSpec
from transfer.graph.spec import BackboneSpec
from transfer.training.keywords import DataSpec, dispatch
from transfer.training.settings import check_setting, default
from transfer.training.thaw_schedule import ThawTraining
from transfer.training.tensorboard_logs import TensorBoardLogs, hparams_api, write_hparams_config
from transfer.training.fitting import adapt_on_features, train_keras, trained_with_refit
from transfer import tables
from transfer.text import printable

# The training axes and their defaults (those of `transfer.fit`; thaw 0 = frozen); None where a
# head has no training loop of its own (the scikit-learn probe).
TRAINING_AXES = {**{name: (default(name),) for name in ("lr", "epochs", "batch_size", "optimizer")}, "thaw": (0,)}
# How thawed layers train (`transfer.training.thaw_schedule`): axes of the settings with thaw > 0 only.
THAW_AXES = {name: (None,) for name in ThawTraining.__dataclass_fields__ if name != "thaw_epochs"}
SETTING_AXES = {**TRAINING_AXES, **THAW_AXES}
GRID_KEYS = ("heads", "cuts", *SETTING_AXES, "head_options")
CSV_COLUMNS = ("rank", "cut", "head", *SETTING_AXES, "head_options", "val_accuracy_mean", "val_accuracy_std",
               "test_accuracy_mean", "test_accuracy_std", "seconds_mean", "repeats")
EVAL_BATCH = 256
ALL_CUTS = "all"  # the `cut` of a setting whose head reads every swept cut at once (`multilayer`)
TENSORBOARD_SCORES = ("val_accuracy", "test_accuracy")  # a run's scores that the HParams dashboard shows


# --- the grid ------------------------------------------------------------------------------------


def expand_grid(heads, *, head_options=None, **axes) -> list[dict]:
    """Every distinct setting of the grid, in grid order.

    Each axis is a list of choices (a scalar is one choice; a list-valued option is a list of
    lists: `hidden=[[64], [128, 64]]`). An axis only multiplies the heads it applies to: a head
    option those that take it, the training axes (lr, epochs, batch_size, optimizer) the Keras
    heads, so that no setting is trained twice under two names.
    """
    unknown = sorted(set(axes) - set(SETTING_AXES))
    if unknown:
        raise TransferError(f"unknown sweep axis {unknown[0]!r}; valid: {', '.join(GRID_KEYS[2:])}")
    training = {key: _axis(key, axes.get(key, default)) for key, default in TRAINING_AXES.items()}
    _check_training_axes(training)
    thawing = _thaw_axes({key: _axis(key, axes.get(key, default)) for key, default in THAW_AXES.items()},
                         any(training["thaw"]))
    options = {key: _axis(f"head option {key!r}", values) for key, values in (head_options or {}).items()}
    kinds = {name: registry.kind_of(name) for name in _axis("heads", heads)}
    if CLASS_COUNT in options:  # set from the data: the one-line error `transfer.fit` gives
        next(iter(kinds.values())).check_options(options)
    for option in options:
        if not any(kind.settable is None or option in kind.settable for kind in kinds.values()):
            taken = "; ".join(f"{name}: {kind.valid_options()}" for name, kind in kinds.items())
            raise TransferError(f"head option {option!r} applies to none of the swept heads ({taken})")
    settings = []
    for name, kind in kinds.items():
        own = {key: values for key, values in options.items() if kind.settable is None or key in kind.settable}
        own_training = training if kind.traits.keras else {key: (None,) for key in TRAINING_AXES}
        for trained, chosen in itertools.product(itertools.product(*own_training.values()),
                                                 itertools.product(*own.values())):
            setting = dict(zip(own_training, trained))
            for thaw_options in itertools.product(*thawing.values()) if setting["thaw"] else [()]:
                settings.append({"head": name, **setting, **dict.fromkeys(THAW_AXES),
                                 **dict(zip(thawing, thaw_options)), "head_options": dict(zip(own, chosen))})
    return list({_key(setting): setting for setting in settings}.values())  # first of each duplicate


def load_grid(path) -> dict:
    """The `expand_grid` keyword arguments in a TOML or YAML grid file (`heads` may come from elsewhere)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise TransferError(f"cannot read grid file {str(path)!r}: {reason}") from None
    if path.suffix == ".toml":
        import tomllib

        parse, errors, kind = tomllib.loads, tomllib.TOMLDecodeError, "TOML"
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TransferError(f"grid file {str(path)!r} is YAML, which needs pyyaml: "
                                "pip install pyyaml, or write the grid in TOML") from None
        parse, errors, kind = yaml.safe_load, yaml.YAMLError, "YAML"
    else:
        raise TransferError(f"grid file {str(path)!r} must end in .toml, .yaml or .yml")
    try:
        grid = parse(text)
    except errors as error:
        raise TransferError(f"grid file {str(path)!r} is not valid {kind}: {' '.join(str(error).split())}") from None
    if not isinstance(grid, dict):
        raise TransferError(f"grid file {str(path)!r} must map keys to choices; valid keys: {', '.join(GRID_KEYS)}")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise TransferError(f"grid file {str(path)!r} has unknown key {unknown[0]!r}; "
                            f"valid keys: {', '.join(GRID_KEYS)}")
    if not isinstance(grid.get("head_options", {}), dict):
        raise TransferError(f"grid file {str(path)!r}: head_options must be a table of option = [choices]")
    return grid


def _axis(what: str, values) -> list:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise TransferError(f"sweep: {what} has no choices; give at least one")
    return values


def _check_training_axes(training: dict) -> None:
    """Refuse bad values before the first of many runs, not in the middle of the sweep."""
    for key, values in training.items():
        for value in values:
            if key == "thaw":  # 0: frozen, a setting of the sweep (fit's thaw is None or >= 1)
                check_int("sweep", "thaw", value, minimum=0)
            else:
                check_setting(key, value, owner="sweep")


def _thaw_axes(axes: dict, thawing: bool) -> dict:
    """The thaw options' choices, each combination checked now (not mid-sweep); given without a
    thaw > 0 on the grid they would apply to nothing, which is an error."""
    given = {key: values for key, values in axes.items() if values != [None]}
    if given and not thawing:
        raise TransferError(f"sweep: {next(iter(given))} shapes how thawed layers train: add thaw values > 0 "
                            "(--thaw 1,2)")
    for combination in itertools.product(*axes.values()):
        ThawTraining(**dict(zip(axes, combination))).check(thawing=True)
    return axes


def _key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


# --- training ------------------------------------------------------------------------------------


def train_setting(features: FeatureSplits, setting: dict, seed: int = 0, patience: int | None = default("patience"),
                  thawed=None, logs: TensorBoardLogs | None = None):
    """Train one setting; return the trained head (Keras layer or fitted probe) and its metrics.

    Metrics: val_accuracy, test_accuracy (None without that split), epochs_run (None for the
    probe) and seconds (training only). Early stopping on val_loss restores the best epoch.
    `thawed`: thaw N -> (its prefix outputs as FeatureSplits, its ThawedFeatureLayer), for
    settings with thaw > 0; the thawed layers start from the pretrained values every time.
    `logs`: where its TensorBoard logs go (`--tensorboard`).
    """
    features, suffix = _features_for(setting, features, thawed)
    if suffix is not None:
        suffix.whole.restore_pretrained()
    keras.utils.set_random_seed(seed)  # before the head exists: Keras draws initializer seeds at construction
    head, model = _build(features, setting, suffix)
    started = time.perf_counter()
    if model is None:
        head.fit(*_arrays(features.train))
        epochs_run, predict = None, head.predict_proba
    else:
        with _quiet_retracing():
            adapt_on_features(head, features, suffix, EVAL_BATCH)  # timed, as part of training
            epochs_run = _fit(model, head, features, setting, seed, patience, suffix, logs)
        predict = lambda x: model(list(x) if isinstance(x, tuple) else x, training=False)  # noqa: E731 (eager)
    seconds = time.perf_counter() - started
    return head, {"val_accuracy": _accuracy(predict, features.validation),
                  "test_accuracy": _accuracy(predict, features.test),
                  "epochs_run": epochs_run, "seconds": seconds}


def _features_for(setting: dict, features, thawed) -> tuple:
    """What a setting trains on: the features (of its cut, when `features` is a dict by cut), or
    for a thaw its prefix outputs and suffix."""
    if not setting.get("thaw"):
        return (features[setting["cut"]] if isinstance(features, dict) else features), None
    prefix_outputs, layer = thawed[setting["thaw"]]
    return prefix_outputs, layer.suffix()


def _build(features: FeatureSplits, setting: dict, suffix=None):
    """The setting's head and, for a Keras head, its model (building it checks the feature rank)."""
    kind = registry.kind_of(setting["head"])
    head = kind.build(num_classes=len(features.class_names), **setting["head_options"])
    if not kind.traits.keras:
        return head, None
    return head, head_model(features.feature_shapes, head, suffix)


def _fit(model, head, features: FeatureSplits, setting: dict, seed: int, patience, suffix=None, logs=None) -> int:
    """`model.fit` as `transfer.fit` runs it, the thaw options (`THAW_AXES`) and a head's refit
    step included; the epochs of every fit."""

    def train_once():
        plan = ThawTraining(**{key: setting.get(key) for key in THAW_AXES}).plan(
            suffix and suffix.whole, setting["optimizer"], setting["lr"], setting["epochs"], patience, validated=True)
        return train_keras(model, head, features.training(setting["batch_size"], seed),
                           features.evaluation("validation", EVAL_BATCH), epochs=plan.epochs, lr=setting["lr"],
                           optimizer=plan.optimizer, patience=plan.patience,
                           callbacks=[*plan.callbacks, *(logs.callbacks() if logs else [])])

    return sum(log.epochs_run for log in trained_with_refit(head, train_once))


@contextlib.contextmanager
def _quiet_retracing():
    """Every run builds a new model by design: TF's warning about tracing in a loop is noise here."""
    logger = tf.get_logger()
    logger.addFilter(_not_retracing)
    try:
        yield
    finally:
        logger.removeFilter(_not_retracing)


def _not_retracing(record) -> bool:
    return "tf.function retracing" not in record.getMessage()


def _arrays(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (features, labels) of a dataset as two arrays, read in batches (fast)."""
    batches = list(dataset.batch(EVAL_BATCH).as_numpy_iterator())
    if not batches:
        raise TransferError("the training split has no examples")
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def _accuracy(predict, dataset: tf.data.Dataset | None) -> float | None:
    """Accuracy of `predict` (features -> class scores) over a dataset, one batch at a time."""
    if dataset is None:
        return None
    correct = total = 0
    for x, y in dataset.batch(EVAL_BATCH).as_numpy_iterator():
        correct += int(np.sum(np.argmax(np.asarray(predict(x)), axis=1) == y))
        total += len(y)
    return correct / total if total else None


# --- the sweep -----------------------------------------------------------------------------------


def run_sweep(features: FeatureSplits | dict, settings: list[dict], repeats: int = 1, seed: int = 0,
              patience: int | None = default("patience"), progress: bool = True, thawed=None,
              log_dir=None, journal: TrialJournal | None = None) -> list[dict]:
    """Train each setting `repeats` times (seeds seed, seed+1, ...); rows ranked best first.

    `features`: one FeatureSplits, or a dict of them by cut when the settings name a `cut` each
    (a sweep over cuts).
    Every head is built on the features before the first run, so a bad option or a head that
    cannot read these features fails at once rather than an hour into the sweep. `thawed`: see
    `train_setting`. `log_dir`: TensorBoard logs, one directory per run, with HParams summaries.
    `journal`: where each finished run is written as it finishes, and the runs it holds already
    are taken from (`transfer.sweep.journal`: a killed sweep resumes).
    """
    thawed = thawed or {}
    missing = sorted({s["thaw"] for s in settings if s.get("thaw")} - set(thawed))
    if missing:
        raise TransferError(f"sweep: no thawed layer given for thaw={missing[0]}")
    splits = list(features.values()) if isinstance(features, dict) else [features]
    if any(f is not None and f.validation is None for f in (*splits, *(f for f, _ in thawed.values()))):
        raise TransferError("a sweep ranks settings by validation accuracy; these features have no validation split")
    if not settings:
        raise TransferError("a sweep needs at least one setting")
    repeats = check_int("sweep", "repeats", repeats)
    for setting in {_key((s["head"], s["head_options"], s.get("thaw"), s.get("cut"))): s for s in settings}.values():
        setting_features, suffix = _features_for(setting, features, thawed)
        _build(setting_features, setting, suffix)
    shown, cut_names = _varying(settings), short_cut_names([s.get("cut") for s in settings])
    _begin_runs(settings, range(seed, seed + repeats), log_dir, journal, progress)
    rows, done = [], 0
    for number, setting in enumerate(settings, start=1):
        runs = []
        for run_seed in range(seed, seed + repeats):
            trial = f"{number:03d}" + (f"-seed{run_seed}" if repeats > 1 else "")
            done += 1
            if journal and journal.get(setting, run_seed) is not None:
                runs.append(journal.get(setting, run_seed))
                continue
            logs = TensorBoardLogs(None if log_dir is None else Path(log_dir) / trial)
            if log_dir is not None:
                shutil.rmtree(logs.log_dir, ignore_errors=True)  # a killed run's: this run writes its own
            runs.append(train_setting(features, setting, run_seed, patience, thawed, logs)[1])
            logs.hparams({**setting, "seed": run_seed}, {name: runs[-1][name] for name in TENSORBOARD_SCORES},
                         trial_id=trial)
            if journal:
                journal.record(trial, setting, run_seed, runs[-1])
            if progress:
                again = f" seed={run_seed}" if repeats > 1 else ""
                print(f"[{done}/{len(settings) * repeats}] {_label(setting, shown, cut_names)}{again}: "
                      f"val {_accuracy_text(runs[-1]['val_accuracy'])} ({runs[-1]['seconds']:.1f} s)",
                      file=sys.stderr, flush=True)
        rows.append(_row(setting, runs))
    rows.sort(key=lambda row: (-_score(row["val_accuracy_mean"]), -_score(row["test_accuracy_mean"])))
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]


def _begin_runs(settings: list[dict], seeds: range, log_dir, journal, progress: bool) -> None:
    """The HParams summaries of every run (a resumed sweep's stale ones removed), and what a resumed
    sweep takes from its journal, said once."""
    if log_dir is not None:
        for stale in Path(log_dir).glob("events.out.tfevents.*"):  # a resumed sweep's: written again
            stale.unlink()
        write_hparams_config(Path(log_dir), [{**s, "seed": n} for s in settings for n in seeds],
                             list(TENSORBOARD_SCORES))
    taken = sum(journal.get(s, n) is not None for s in settings for n in seeds) if journal else 0
    if taken and progress:
        print(f"resuming the sweep in {journal.path.parent}: {taken} of {len(settings) * len(seeds)} trials taken "
              f"from its journal ({journal.path.name})", file=sys.stderr, flush=True)


def _row(setting: dict, runs: list[dict]) -> dict:
    val = [run["val_accuracy"] for run in runs]
    test = [run["test_accuracy"] for run in runs]
    return {"cut": setting.get("cut"), "head": setting["head"], **{key: setting.get(key) for key in SETTING_AXES},
            "head_options": setting["head_options"],
            "val_accuracy_mean": _mean(val), "val_accuracy_std": _std(val),
            "test_accuracy_mean": _mean(test), "test_accuracy_std": _std(test),
            "seconds_mean": _mean([run["seconds"] for run in runs]), "repeats": len(runs),
            "val_accuracies": val, "epochs_run": [run["epochs_run"] for run in runs], "setting": setting}


def _mean(values) -> float | None:
    return None if None in values else float(np.mean(values))


def _std(values) -> float | None:
    """Population std: 0.0 for one run."""
    return None if None in values else float(np.std(values))


def _score(value) -> float:
    return -1.0 if value is None else value


# --- reporting -----------------------------------------------------------------------------------


def write_sweep(directory, rows: list[dict], cut_order: list | None = None) -> None:
    """`sweep.csv`, `sweep.json` and `sweep.png` in `directory`, each written whole or not at all;
    with several cuts also `sweep_cuts.png`, accuracy per cut in `cut_order` (graph order)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with written_whole(directory / "sweep.csv") as path, open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([_show(row[column]) for column in CSV_COLUMNS] for row in rows)
    with written_whole(directory / "sweep.json") as path:
        write_json(path, rows)
    with written_whole(directory / "sweep.png") as path:
        _plot(path, rows)
    cuts = [cut for cut in cut_order or dict.fromkeys(row["cut"] for row in rows) if cut != ALL_CUTS]
    if len(cuts) > 1:
        with written_whole(directory / "sweep_cuts.png") as path:
            _plot_cuts(path, rows, cuts)


def best_per_cut(rows: list[dict], cuts: list) -> dict:
    """head -> [the best row of that head at each cut (None where it was not trained)]; heads
    that read all cuts at once are left out (see `_plot_cuts`)."""
    best = {}
    for row in rows:  # ranked: the first row of a (head, cut) is its best
        if row["cut"] == ALL_CUTS:
            continue
        per_cut = best.setdefault(row["head"], dict.fromkeys(cuts))
        if per_cut.get(row["cut"]) is None:
            per_cut[row["cut"]] = row
    return {head: [per_cut[cut] for cut in cuts] for head, per_cut in best.items()}


def _plot_cuts(path: Path, rows: list[dict], cuts: list):
    """Validation (solid) and test (dotted) accuracy per cut, deepest on the right: where the
    features transfer. One line per head, its best setting at each cut; a head that reads all
    cuts at once (`multilayer`) is a dashed level across (its best validation accuracy). Cut
    names are `printable`, shown as they are (not as mathtext). Returns the (closed) figure."""
    plt = pyplot()
    names = short_cut_names(cuts)
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(cuts) + 2), 4.5))
    positions = np.arange(len(cuts))
    for number, (head, best) in enumerate(best_per_cut(rows, cuts).items()):
        color = f"C{number}"
        for split, style in (("val", "-"), ("test", ":")):
            values = [np.nan if row is None or row[f"{split}_accuracy_mean"] is None else row[f"{split}_accuracy_mean"]
                      for row in best]
            axis.plot(positions, values, style, marker="o" if split == "val" else None, color=color,
                      label=f"{printable(head)} ({'validation' if split == 'val' else 'test'})")
    for number, row in enumerate({row["head"]: row for row in reversed(rows) if row["cut"] == ALL_CUTS}.values()):
        axis.axhline(_score(row["val_accuracy_mean"]), linestyle="--", color=f"C{number + 5}",
                     label=f"{printable(row['head'])}, all {len(cuts)} cuts (validation)")
    axis.set_xticks(positions, [printable(names[cut]) for cut in cuts], rotation=70, ha="right", fontsize=7,
                    parse_math=False)
    axis.set_xlabel("cut, in graph order (deeper to the right)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"accuracy per cut ({len(cuts)} cuts)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def format_table(rows: list[dict]) -> str:
    """The ranked rows as an aligned text table for the terminal.

    `options` holds a row's head options and the training axes that vary in the sweep.
    """
    varying = _varying([row["setting"] for row in rows])
    training = [key for key in varying if key in SETTING_AXES and key != "lr"]
    cuts = short_cut_names([row["cut"] for row in rows]) if "cut" in varying else None
    header = ("rank", *(["cut"] if cuts else []), "head", "lr", "options", "val", "test", "seconds")
    lines = [(str(row["rank"]), *([cuts[row["cut"]]] if cuts else []), row["head"], _show(row["lr"]) or "-",
              _describe(row["setting"], [*training, *row["head_options"]]) or "-",
              _mean_std(row, "val"), _mean_std(row, "test"), f"{row['seconds_mean']:.1f}") for row in rows]
    return "\n".join(tables.format_table([header, *lines]))


def short_cut_names(specs: list) -> dict:
    """Cut specs as a person reads them: `:0` and the scopes every cut shares dropped
    (`digits_resnet_1/block1_out_1/Relu:0` -> `block1_out_1/Relu`)."""
    distinct = list(dict.fromkeys(spec for spec in specs if spec is not None))
    parts = [(spec[:-2] if spec.endswith(":0") else spec).split("/") for spec in distinct]
    shared = 0
    while len(parts) > 1 and all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return {spec: "/".join(p[shared:]) for spec, p in zip(distinct, parts)}


def _plot(path: Path, rows: list[dict]):
    """Horizontal bars of mean validation accuracy with std error bars, best on top; the labels
    `printable`, shown as they are (not as mathtext). Returns the (closed) figure."""
    plt = pyplot()
    shown = _varying([row["setting"] for row in rows])
    cut_names = short_cut_names([row["cut"] for row in rows])
    labels = [f"{row['rank']}. {_label(row['setting'], shown, cut_names)}" for row in rows]
    means = [_score(row["val_accuracy_mean"]) for row in rows]
    errors = [row["val_accuracy_std"] or 0.0 for row in rows]
    width = 5 + 0.07 * max(map(len, labels), default=0)
    figure, axis = plt.subplots(figsize=(width, 1.2 + 0.35 * len(rows)))
    positions = np.arange(len(rows))
    axis.barh(positions, means, xerr=errors, capsize=3, color="tab:blue", alpha=0.8)
    for position, mean, error in zip(positions, means, errors):
        axis.text(mean + error + 0.01, position, f"{mean:.3f}", va="center", fontsize=8)
    axis.set_yticks(positions, labels, parse_math=False)
    axis.invert_yaxis()  # rank 1 on top
    axis.set_xlim(0, 1.12)
    axis.set_xlabel("validation accuracy")
    repeats = rows[0]["repeats"] if rows else 1
    axis.set_title(f"{len(rows)} settings, best first" + (f" (mean ± std of {repeats} runs)" if repeats > 1 else ""))
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def _varying(settings: list[dict]) -> list[str]:
    """The axes whose value differs between settings: what a label shows to tell them apart."""
    keys = ["cut", *SETTING_AXES, *dict.fromkeys(key for s in settings for key in s["head_options"])]
    return [key for key in keys
            if len({_show(_value(s, key)) for s in settings if _value(s, key) is not None}) > 1]


def _value(setting: dict, key: str):
    return setting.get(key) if key in SETTING_AXES or key == "cut" else setting["head_options"].get(key)


def _describe(setting: dict, keys: list[str], cut_names: dict | None = None) -> str:
    shown = {**setting, "cut": (cut_names or {}).get(setting.get("cut"), setting.get("cut"))}
    return " ".join(f"{key}={_show(_value(shown, key))}" for key in keys if _value(shown, key) is not None)


def _label(setting: dict, keys: list[str], cut_names: dict | None = None) -> str:
    """A setting in one line for the terminal and plots: `printable` (cut names come from the graph)."""
    return printable(f"{setting['head']} {_describe(setting, keys, cut_names)}".rstrip())


def _show(value) -> str:
    """One compact text form for tables, labels and CSV cells."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _accuracy_text(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean_std(row: dict, split: str) -> str:
    """`0.912 ± 0.004` over repeats; a single run has no spread to show."""
    mean, std = row[f"{split}_accuracy_mean"], row[f"{split}_accuracy_std"]
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if row["repeats"] > 1 else f"{mean:.3f}"


# --- the command -----------------------------------------------------------------------------------


def _swept_cuts(cut, cuts):
    """The cut spec to load: `--cut` alone, or the `--cuts` axis (a list, `a,b` or `candidates`)."""
    if cuts is None:
        return cut
    if cut not in (None, "auto"):
        raise TransferError(f"sweep: give one cut (--cut {cut}) or the cuts to sweep (--cuts), not both")
    if isinstance(cuts, str):
        return cuts
    if not isinstance(cuts, (list, tuple)) or not cuts or not all(isinstance(c, str) for c in cuts):
        raise TransferError(f"sweep: cuts={cuts!r} must be a list of cut names, 'a,b' or 'candidates'")
    return list(cuts)


def _storage_pool(pool, settings: list[dict], several_cuts: bool, progress: bool) -> str:
    """What extraction does to spatial features (see `sweep`): averaged when every setting
    averages positions anyway and several cuts make the cache large."""
    from transfer.features.extraction import check_pool

    if pool is not None:
        return check_pool(pool)
    if not several_cuts or not all(registry.kind_of(s["head"]).averages_positions(s["head_options"])
                                   for s in settings):
        return "none"
    if progress:
        print("features are averaged over positions before they are cached, as every swept head averages them "
              "(--pool none keeps them)", file=sys.stderr, flush=True)
    return "avg"


def _on_cuts(settings: list[dict], cut_specs: list[str]) -> list[dict]:
    """Every setting on every cut; a head that reads several cuts (`multilayer`) on all of them
    at once (its `cut` is ALL_CUTS when there are several)."""
    crossed = []
    for setting in settings:
        if registry.kind_of(setting["head"]).traits.several_cuts and len(cut_specs) > 1:
            crossed.append({"cut": ALL_CUTS, **setting})
        else:
            crossed += [{"cut": spec, **setting} for spec in cut_specs]
    return sorted(crossed, key=lambda s: ([*cut_specs, ALL_CUTS].index(s["cut"])))  # cut by cut, as before


def _pooled_like(setting: dict, pool: str) -> dict:
    """The best setting's head options for its retraining on the cut's full features: the pooling
    the sweep's cache applied, made the head's own."""
    options = dict(setting["head_options"])
    if pool != "none" and registry.kind_of(setting["head"]).takes("pooling"):
        options.setdefault("pooling", pool)
    return options


def _in_graph_order(backbone) -> list[str]:
    position = backbone.info.position
    return [c.spec for c in sorted(backbone.cuts, key=lambda c: position[c.tensor.op.name])]


def _definition(inputs, settings: list[dict], cut_specs: list[str], **terms) -> dict:
    """What decides a sweep's results, its journal's fingerprint: a rerun resumes only the same sweep."""
    backbone = inputs.backbone
    return {"backbone": {"fingerprint": backbone.fingerprint, "signature": backbone.loaded.signature,
                         **backbone.feeding},
            "cuts": cut_specs, "data": inputs.splits.identity, "preprocessing": inputs.kind.recipe(), "grid": settings,
            **{key.replace("_", " "): value for key, value in terms.items()}}


@dataclasses.dataclass
class SweepResult:
    rows: list  # ranked, best first (see run_sweep)
    run_dir: Path | None  # sweep.csv, sweep.json, sweep.png, config.json and best/ (a fit run)
    best: object  # the FitResult of the best setting, retrained into best/ (None without `out`)


@dataclasses.dataclass
class _SweepRun:
    """One `sweep` call once its arguments are checked and its features extracted."""

    inputs: object  # transfer.features.inputs.Inputs
    data: object  # what the user gave as data (config.json records it)
    settings: list
    cut_specs: list
    sources: dict  # the backbone's and data's settings as config.json records them
    cache: CacheSpec
    pool: str
    definition: dict
    resumable: bool
    repeats: int
    seed: int
    patience: int | None
    out: object
    export: tuple
    tensorboard: bool
    progress: bool
    strategy: object


def sweep(backbone, data, *, heads=("linear",), head_options=None, grid=None, repeats: int = 1, seed: int = 0,
          patience: int | None = default("patience"), cuts=None, cache: CacheSpec | None = None, out=None,
          export=("savedmodel", "pb"), tensorboard: bool = False, progress: bool = True, strategy=None,
          **options) -> SweepResult:
    """Extract once (or reuse the feature cache), train every setting on the cached features,
    rank them; with `out`, write the sweep files and turn the best setting into a full run
    directory (`out/best`, exactly as `transfer fit` writes one, backbone + head exported).

    `backbone`, `data`: as for `transfer.fit` (a path, `BackboneSpec` or `Backbone`; a spec,
    `DataSpec` or `DataSplits`), and so are the backbone's, data's and cache's keyword `options`
    (cut, signature, inputs, feeds, allow_ops, max_memory; data_dir, validation_split, per_class,
    preprocessing, scale; cache_dir, cache_dtype, engine, runner, pool; or `cache`, a `CacheSpec`).
    `grid`: a TOML/YAML grid file (see `load_grid`); its axes replace the keyword ones.
    `cuts`: the cuts to sweep (`"a,b"`, a list, or `"candidates"`: every candidate cut), all
    extracted in one pass, each cut's features its own cache entry; every setting trains on
    every cut. `pool`: `none`, `avg`, `max`: what extraction does to spatial features before
    they are cached (default: `avg` when several cuts are swept and every swept head averages
    positions anyway, else `none`).
    The other `options` are the axes: lr, epochs, batch_size, optimizer, thaw (0 = frozen), each
    a list of choices; a thaw N trains its last N weight layers from the cached outputs of its
    frozen prefix (with several cuts, only for a head that reads them all: the layers before the
    deepest). The thaw options (thaw_lr_scale, thaw_weight_decay, unfreeze_every, head_epochs)
    are axes of the settings with thaw > 0. `runner`: where the extraction runs ("local", "beam"
    or a `transfer.features.runners.BeamRunner`). `tensorboard`: every run's logs and the HParams
    summaries under `out/tensorboard`, the best setting's run under `out/best/tensorboard`.
    `strategy`: where every setting trains, as for `transfer.fit` (only the chief writes `out`).
    An unknown keyword is one line naming the valid ones.
    """
    from transfer.training.distribute import strategy_named
    from transfer.features.inputs import open_inputs

    spec, data_spec, cache, axes = dispatch("sweep", backbone, data, options, cache=cache, own=tuple(SETTING_AXES))
    cache = CacheSpec.of(cache, runner=get_runner(cache.runner))  # unknown, or Beam missing: before any slow work
    _check_sweep_output(out, tensorboard)
    grid_axes = {"heads": heads, "head_options": head_options, "cuts": cuts, **axes,
                 **(load_grid(grid) if grid else {})}
    cut = _swept_cuts(spec.cut if isinstance(spec, BackboneSpec) else "auto", grid_axes.pop("cuts"))
    spec = BackboneSpec.of(spec, cut=cut) if isinstance(spec, BackboneSpec) else spec  # a Backbone is cut already
    settings = expand_grid(grid_axes.pop("heads"), head_options=grid_axes.pop("head_options"), **grid_axes)
    data_spec = DataSpec.of(data_spec, seed=seed)
    strategy = strategy_named(strategy)  # before TensorFlow runs anything: multiworker must
    inputs = open_inputs(spec, data_spec, engine=cache.engine)
    settings, cut_specs = _settings_on_cuts(settings, inputs.backbone)
    pool = _storage_pool(cache.pool, settings, len(cut_specs) > 1, progress)
    definition = _definition(inputs, settings, cut_specs, repeats=repeats, seed=seed, patience=patience, pool=pool,
                             cache_dtype=cache.dtype, engine=cache.engine, strategy=type(strategy).__name__,
                             tensorboard=tensorboard)
    sources = {"cut": _listed(spec.cut) if isinstance(spec, BackboneSpec) else cut_specs,
               "signature": spec.signature if isinstance(spec, BackboneSpec) else inputs.backbone.loaded.signature,
               **{key: getattr(data_spec, key) for key in ("data_dir", "validation_split", "per_class", "seed",
                                                           "preprocessing", "scale")}}
    return _sweep_run(_SweepRun(inputs, data, settings, cut_specs, sources, cache, pool, definition,
                                _resumable(out, strategy, definition), repeats, seed, patience, out, export,
                                tensorboard, progress, strategy))


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


def _check_sweep_output(out, tensorboard: bool) -> None:
    from transfer.training.reporting import check_new_run_dir

    if out is not None:
        check_new_run_dir(out)
    elif tensorboard:
        raise TransferError("TensorBoard logs are written in the sweep directory: give `out` with `tensorboard`")
    if tensorboard:
        hparams_api()  # the tensorboard package is there, before any slow work


def _settings_on_cuts(settings: list[dict], backbone) -> tuple:
    """(every setting on the backbone's cuts, the cut specs); a thaw over several cuts only for a
    head that reads them all."""
    cut_specs = [c.spec for c in backbone.cuts]
    settings = _on_cuts(settings, cut_specs)
    one_cut = next((s["head"] for s in settings if s.get("thaw") and len(cut_specs) > 1 and s["cut"] != ALL_CUTS), None)
    if one_cut:  # a thaw N is one layer on all the cuts (below); a head of one cut would need one per cut
        raise TransferError(f"sweep: head {one_cut!r} trains on one cut, and a thaw on {len(cut_specs)} cuts trains a "
                            "head of several cuts (multilayer): sweep the cuts frozen first, then thaw at the best "
                            "one (--cut CUT --thaw N)")
    return settings, cut_specs


def _resumable(out, strategy, definition: dict) -> bool:
    """Whether the sweep keeps a journal (every worker runs the same trials, and only the chief has
    it); another sweep's unfinished trials in `out` are refused before any extraction."""
    from transfer.training.reporting import partial_dir

    resumable = out is not None and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if resumable:
        check_resumable(partial_dir(out), definition)
    return resumable


def _extracted(run: _SweepRun) -> tuple:
    """(the features by cut, or None when every setting thaws; thaw N -> (its prefix outputs, its
    ThawedFeatureLayer)), from the cache, extracting what is not there yet."""
    from transfer.layers.thawing import ThawedFeatureLayer

    inputs, cache, settings = run.inputs, run.cache, run.settings
    with run.strategy.scope():  # thawed weights are variables
        layers = {count: ThawedFeatureLayer(inputs.backbone, last=count, name="features")  # a bad N fails before
                  for count in sorted({s["thaw"] for s in settings if s.get("thaw")})}  # any extraction
    joined = ALL_CUTS if any(s["cut"] == ALL_CUTS for s in settings) else None
    features = (inputs.cached_features_by_cut(cache.dir, cache.dtype, progress=run.progress, pool=run.pool,
                                              joined=joined, runner=cache.runner)
                if any(not s.get("thaw") for s in settings) else None)
    thawed = {count: (inputs.cached_prefix(layer, cache.dir, cache.dtype, progress=run.progress,
                                           runner=cache.runner), layer)
              for count, layer in layers.items()}
    return features, thawed


def _sweep_run(run: _SweepRun) -> SweepResult:
    """Train every setting (OUT.partial, kept with its journal if the sweep is killed), write the
    sweep files and retrain the best setting into `out/best`."""
    from transfer.training.distribute import run_dir_of
    from transfer.training.reporting import run_directory

    features, thawed = _extracted(run)
    with run_dir_of(run.strategy, run.out) as written, \
            run_directory(written, keep=finished_trials if run.resumable else None) if written is not None \
            else contextlib.nullcontext() as directory:
        journal = TrialJournal(directory, run.definition) if run.resumable and directory is not None else None
        with run.strategy.scope():  # every head and optimizer is made in it
            rows = run_sweep(features, run.settings, repeats=run.repeats, seed=run.seed, patience=run.patience,
                             progress=run.progress, thawed=thawed,
                             log_dir=directory / "tensorboard" if run.tensorboard else None, journal=journal)
        if directory is None:
            return SweepResult(rows, None, None)
        write_sweep(directory, rows, _in_graph_order(run.inputs.backbone))
        write_json(directory / "config.json", {"backbone": run.inputs.backbone.loaded.source, "data": run.data,
                                               **run.inputs.backbone.feeding, "settings": run.settings,
                                               "repeats": run.repeats, **run.sources, "cuts": run.cut_specs,
                                               "pool": run.pool, "cache_dir": run.cache.dir})
        result = _fit_best(run, rows[0]["setting"], directory)
    if written != run.out:  # another worker than the chief: it wrote nothing
        return SweepResult(rows, None, result)
    result.run_dir = Path(run.out) / "best"
    return SweepResult(rows, Path(run.out), result)


def _fit_best(run: _SweepRun, best: dict, directory: Path):
    """The best setting retrained into `directory/best`, a full `transfer fit` run."""
    from transfer.training.fitting import fit

    shutil.rmtree(directory / "best", ignore_errors=True)  # a resumed sweep's, killed at its very end
    backbone = run.inputs.backbone
    if len(run.cut_specs) > 1 and best["cut"] != ALL_CUTS:
        backbone = backbone.recut(best["cut"])
    cache = run.cache
    return fit(backbone, run.inputs.splits, head=best["head"], head_options=_pooled_like(best, run.pool),
               **{key: best[key] for key in TRAINING_AXES if best[key]},  # thaw 0: none
               **{key: best[key] for key in THAW_AXES if best.get(key) is not None}, patience=run.patience,
               seed=run.seed, preprocessing=run.inputs.kind.preprocessing, cache_dir=cache.dir,
               cache_dtype=cache.dtype, engine=cache.engine, runner=cache.runner, out=directory / "best",
               export=run.export, tensorboard=run.tensorboard, verbose=0, strategy=run.strategy)
