"""Use a finished run: `evaluate` it on labelled data, `predict` classes of image files or arrays.

The run's config.json says what its model takes (`transfer.data.input_kind`): images, resized to fit,
or the backbone's own arrays, checked for shape and dtype.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transfer import datasets
from transfer.data import input_kind
from transfer.errors import TransferError, TransferWarning, check_choice
from transfer.datasets.folder import IMAGE_SUFFIXES
from transfer.training.reporting import (MODEL_FILE, check_new_run_dir, classification_metrics, plot_confusion_matrix,
                                         run_directory, run_title, write_json)
from transfer.data.batches import Batches


def load_run(run_dir) -> tuple[keras.Model, dict]:
    """The trained model (loaded in safe mode) and the config of a `transfer fit` run directory."""
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / MODEL_FILE
    if not config_path.is_file() or not model_path.is_file():
        raise TransferError(f"{str(run_dir)!r} is not a transfer run directory (needs config.json and {MODEL_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise TransferError(f"{config_path} is corrupt: {error}") from None
    return keras.models.load_model(model_path), config


EVALUATED_SPLITS = ("test", "all")


def evaluate(run_dir, data, data_dir=None, batch_size: int = 32, split: str = "test", out=None) -> dict:
    """Accuracy, per-class report and confusion matrix on the data's test split (`split="test"`,
    the default: training and validation examples would flatter the run), or on every example
    (`"all"`, also what a test split that the data lacks falls back to); `metrics["split"]` says which.
    `out`: a new directory that gets `metrics.json` and `confusion_matrix.png` (`metrics["out"]`)."""
    check_choice("split", split, EVALUATED_SPLITS, flag="--split")
    if out is not None:
        check_new_run_dir(out)
    model, config = load_run(run_dir)
    splits = _as_split_for_the_run(data, data_dir, config)
    run_labels = _run_labels(splits.class_names, config["class_names"], data)
    kind = input_kind.from_config(config)
    kind.check(splits.example_shape, splits.example_dtype, repr(data))
    batches = Batches(splits, kind, batch_size, 0, None)
    scored = "test" if split == "test" and splits.test is not None else "all"
    probabilities, labels = [], []
    for role in ("test",) if scored == "test" else ("train", "validation", "test"):
        dataset = batches.evaluation(role)
        if dataset is not None:
            for examples, _ in dataset.take(1):
                warn_if_out_of_range(examples.numpy(), config, repr(data))
            outputs, y = predict_batches(model, dataset)
            probabilities.append(outputs)
            labels.append(run_labels[y])
    metrics = classification_metrics(np.concatenate(labels), np.concatenate(probabilities), config["class_names"])
    absent = [name for name in config["class_names"] if name not in splits.class_names]
    metrics = {**metrics, "class_names": config["class_names"], "split": scored, "absent_classes": absent}
    if out is not None:
        _write_evaluation(out, metrics, config, data)
    return metrics


def _write_evaluation(out, metrics: dict, config: dict, data) -> None:
    """`metrics.json` and `confusion_matrix.png` (titled with the run and the data) in `out`,
    written whole or not at all."""
    metrics["out"] = str(out)
    with run_directory(out) as directory:
        write_json(directory / "metrics.json", {**metrics, "data": str(data), "run": config.get("command")})
        plot_confusion_matrix(directory / "confusion_matrix.png", metrics["confusion_matrix"], config["class_names"],
                              (run_title(config), f"{data}: {metrics['split']} accuracy {metrics['accuracy']:.3f}"))


def _run_labels(data_classes: list, run_classes: list, data) -> np.ndarray:
    """The run's label of each of the data's labels: data may hold some of the run's classes (in
    any order), never others."""
    unknown = [name for name in data_classes if name not in run_classes]
    if unknown:
        raise TransferError(f"data {data!r} has classes the run was not trained on: {', '.join(unknown)}; "
                            f"the run was trained on {', '.join(run_classes)}")
    return np.array([run_classes.index(name) for name in data_classes], "int64")


def _as_split_for_the_run(data, data_dir, config):
    """The run's own data is split as the run split it, so that its test split holds only the
    examples the run neither trained nor validated on; other data keep their own test split."""
    used = (config.get("data_identity") or {}).get("split") or {}
    settings = {key: used.get(key) for key in ("validation_split", "per_class", "seed")}
    if settings["validation_split"] is not None and settings["seed"] is not None:
        splits = datasets.load(data, data_dir=data_dir, **settings)
        if splits.identity == config.get("data_identity"):
            return splits
    return datasets.load(data, data_dir=data_dir, validation_split=0.0)


def predict(run_dir, paths, top_k: int = 3) -> list[dict]:
    """Top-k classes with probabilities for each image file or `.npy` array (one example or many)."""
    model, config = load_run(run_dir)
    kind = input_kind.from_config(config)
    top_k = max(1, min(top_k, len(config["class_names"])))
    results = []
    for path in inputs_of(paths, kind.images):
        examples = _read(path, kind.images)
        warn_if_out_of_range(examples, config, str(path))
        probabilities = np.asarray(model.predict_on_batch(kind.conform(examples, str(path))))
        for index, row in enumerate(probabilities):
            best = np.argsort(row)[::-1][:top_k]
            results.append({"image": str(path) if len(probabilities) == 1 else f"{path}[{index}]",
                            "top": [{"class": config["class_names"][i], "probability": float(row[i])} for i in best]})
    return results


def warn_if_out_of_range(examples, config: dict, where: str) -> None:
    """A TransferWarning when inputs lie far outside the range the run was trained on (a PNG of
    0..255 given to a model trained on digits of 0..16 is confidently wrong)."""
    if not config.get("input_range") or not np.size(examples):
        return
    low, high = config["input_range"]
    margin = 0.5 * max(high - low, 1e-6)
    got_low, got_high = float(np.min(examples)), float(np.max(examples))
    if got_low < low - margin or got_high > high + margin:
        warnings.warn(f"{where}: inputs range {got_low:g}..{got_high:g}, but the run was trained on inputs in "
                      f"{low:g}..{high:g}; predictions may be wrong: scale them as the training data were",
                      TransferWarning, stacklevel=3)


def inputs_of(paths, images: bool) -> list[Path]:
    """Each path as given; a folder stands for every image (or `.npy` array) under it, searched
    recursively in sorted order, other files skipped with a note."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)
            continue
        wanted = (*IMAGE_SUFFIXES, ".npy") if images else (".npy",)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        kept = [p for p in files if p.suffix.lower() in wanted]
        what = f"images ({', '.join(IMAGE_SUFFIXES)}) or .npy arrays" if images else ".npy arrays"
        if not kept:
            raise TransferError(f"folder {str(path)!r} holds no {what}")
        skipped = [p.relative_to(path) for p in files if p.suffix.lower() not in wanted]
        if skipped:
            named = ", ".join(map(str, skipped[:3])) + (", ..." if len(skipped) > 3 else "")
            warnings.warn(f"{path}: skipped {len(skipped)} file(s) that are not {what}: {named}", TransferWarning,
                          stacklevel=3)
        found += kept
    return found


def _read(path: Path, images: bool) -> np.ndarray:
    """A `.npy` array, or (for a run on images) an image file."""
    if not path.is_file():
        raise TransferError(f"input {str(path)!r} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as error:
            raise TransferError(f"{path} is not a readable .npy array: {error}") from None
    if not images:
        raise TransferError(f"{path}: this run takes arrays, give them as .npy files")
    try:
        return tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False).numpy()
    except tf.errors.OpError:
        raise TransferError(f"{path} is not a readable image (valid: {', '.join(IMAGE_SUFFIXES)}, .npy)") from None


def predict_batches(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs and labels of a batched (example, label) dataset, in one pass."""
    predict, outputs, labels = _batch_predictor(model), [], []
    for examples, y in dataset:
        outputs.append(np.asarray(predict(examples)))
        labels.append(y.numpy())
    if not outputs:
        return np.zeros((0,)), np.zeros((0,), "int32")
    return np.concatenate(outputs), np.concatenate(labels)


def _batch_predictor(model):
    """`model.predict_on_batch`; for a model made under a strategy with several replicas, its
    call traced once instead: there Keras 3.15's `predict_on_batch` runs the whole batch on every
    replica and returns the outputs once per replica (and fails across workers)."""
    if model.distribute_strategy.num_replicas_in_sync == 1:
        return model.predict_on_batch
    return tf.function(lambda examples: model(examples, training=False), reduce_retracing=True)
