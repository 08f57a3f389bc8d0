"""One trial of a sweep: a setting trained with one seed on cached features (or a thawed
prefix's outputs), scored on validation and test."""
from __future__ import annotations

import contextlib
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from transfer import heads as registry
from transfer.errors import TransferError, TransferWarning
from transfer.layers.model import head_model
from transfer.features.feature_splits import FeatureSplits
from transfer.training.settings import default
from transfer.training.thaw_schedule import ThawTraining
from transfer.training.tensorboard_logs import TensorBoardLogs
from transfer.training.keras_training import Diverged, train_keras, trained_with_refit
from transfer.training.sources import adapt_on_features, measured_thaw_steps
from transfer.sweep.grid import EVAL_BATCH, THAW_AXES


def train_setting(features: FeatureSplits, setting: dict, seed: int = 0, patience: int | None = default("patience"),
                  thawed=None, logs: TensorBoardLogs | None = None):
    """Train one setting; return the trained head (Keras layer or fitted probe) and its metrics.

    Metrics: val_accuracy, test_accuracy (None without that split), epochs_run (None for the
    probe) and seconds (training only). Early stopping on val_loss restores the best epoch.
    `thawed`: thaw N -> (its prefix outputs as FeatureSplits, its ThawedFeatureLayer), for
    settings with thaw > 0; the thawed layers start from the pretrained values every time.
    `logs`: where its TensorBoard logs go (`--tensorboard`).
    """
    features, suffix = features_for(setting, features, thawed)
    if suffix is not None:
        suffix.whole.restore_pretrained()
    keras.utils.set_random_seed(seed)  # before the head exists: Keras draws initializer seeds at construction
    head, model = build_head(features, setting, suffix)
    started = time.perf_counter()
    if model is None:
        head.fit(*_arrays(features.train))
        epochs_run, predict = None, head.predict_proba
    else:
        with quiet_retracing():
            adapt_on_features(head, features, suffix, EVAL_BATCH)  # timed, as part of training
            try:
                epochs_run = _fit(model, head, features, setting, seed, patience, suffix, logs)
            except Diverged as error:  # this setting only: it scores 0 and ranks last, the sweep goes on
                return head, _diverged(setting, error, features, time.perf_counter() - started)
        predict = lambda x: model(list(x) if isinstance(x, tuple) else x, training=False)  # noqa: E731 (eager)
    seconds = time.perf_counter() - started
    return head, {"val_accuracy": _accuracy(predict, features.validation),
                  "test_accuracy": _accuracy(predict, features.test),
                  "epochs_run": epochs_run, "seconds": seconds}


def _diverged(setting: dict, error: Diverged, features: FeatureSplits, seconds: float) -> dict:
    """The metrics of a setting whose training diverged (`StopOnDivergence`), said in one line:
    accuracy 0, so that it ranks last and is never the best setting a sweep exports."""
    what = str(error).split(";")[0]  # "training diverged: the training loss went from ... (epoch N)"
    warnings.warn(f"setting {setting['head']} (lr {setting['lr']}, thaw {setting.get('thaw') or 0}): {what}; it "
                  "scores 0 and ranks last", TransferWarning, stacklevel=3)
    return {"val_accuracy": 0.0, "test_accuracy": None if features.test is None else 0.0, "epochs_run": 0,
            "seconds": seconds}


def features_for(setting: dict, features, thawed) -> tuple:
    """What a setting trains on: the features (of its cut, when `features` is a dict by cut), or
    for a thaw its prefix outputs and suffix."""
    if not setting.get("thaw"):
        return (features[setting["cut"]] if isinstance(features, dict) else features), None
    prefix_outputs, layer = thawed[setting["thaw"]]
    return prefix_outputs, layer.suffix()


def build_head(features: FeatureSplits, setting: dict, suffix=None):
    """The setting's head and, for a Keras head, its model (building it checks the feature rank)."""
    kind = registry.kind_of(setting["head"])
    head = kind.build(num_classes=len(features.class_names), **setting["head_options"])
    if not kind.traits.keras:
        return head, None
    return head, head_model(features.feature_shapes, head, suffix)


def _fit(model, head, features: FeatureSplits, setting: dict, seed: int, patience, suffix=None, logs=None) -> int:
    """`model.fit` as `transfer.fit` runs it, the thaw options (`THAW_AXES`) and a head's refit
    step included; the epochs of every fit."""

    step_scales = (measured_thaw_steps(features, suffix.whole, setting["lr"], setting["batch_size"])
                   if suffix is not None else None)

    def train_once():
        plan = ThawTraining(**{key: setting.get(key) for key in THAW_AXES}).plan(
            suffix and suffix.whole, setting["optimizer"], setting["lr"], setting["epochs"], patience, validated=True,
            step_scales=step_scales)
        return train_keras(model, head, features.training(setting["batch_size"], seed),
                           features.evaluation("validation", EVAL_BATCH), epochs=plan.epochs, lr=setting["lr"],
                           optimizer=plan.optimizer, patience=plan.patience,
                           callbacks=[*plan.callbacks, *(logs.callbacks() if logs else [])])

    return sum(log.epochs_run for log in trained_with_refit(head, train_once))


@contextlib.contextmanager
def quiet_retracing():
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
