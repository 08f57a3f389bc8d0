"""Several heads trained as one Keras model: a sweep's settings at the cost of one.

On cached features a head's arithmetic takes microseconds an epoch; what a setting costs is
Keras' per-model work (building, compiling, tracing, the Python loop of `fit`, validation and
callbacks each epoch). Branches pay it once: one model with an input per source (a cut's
features shuffled with one seed), head k on its source, the K outputs stacked, their K losses
summed into one `fit`. The branches share no weight, so each one's gradients are those it would get alone; its
learning rate is its own group of a `GroupedOptimizer`. `BranchStopping` scores each branch on
validation every epoch and stops it as `transfer.fit`'s early stopping would (its own patience,
its own epoch count, its best epoch's weights restored); a branch that diverges (NaN) only stops
itself. The fit ends when every branch has.
"""
from __future__ import annotations

import keras
import numpy as np

from transfer import _compat
from transfer.heads.protocol import traits_of
from transfer.training.distribute import fit_model
from transfer.training.keras_training import TrainingLog
from transfer.training.optimizers import GroupedOptimizer
from transfer.training.trace_memory import forgetting_step_gradients


def branched_model(feature_shapes: list, heads: list, source_of: list) -> keras.Model:
    """One model: an input per source (several tensors for a source of several cuts: one each,
    flattened in source order), `heads[k]` on source `source_of[k]`; its output stacks the heads'
    (batch, branches, classes), one loss and one metric for them all (K of each would cost K
    updates, resets and reads every epoch)."""
    inputs = [[keras.Input(tuple(shape)) for shape in shapes] for shapes in feature_shapes]
    given = [tensors if len(tensors) > 1 else tensors[0] for tensors in inputs]
    outputs = [head(given[source]) for head, source in zip(heads, source_of)]
    flat = [tensor for tensors in inputs for tensor in tensors]
    return keras.Model(flat if len(flat) > 1 else flat[0], keras.ops.stack(outputs, axis=1))


def train_branches(model: keras.Model, heads: list, train, validation, *, epochs: list, lrs: list, optimizer: str,
                   patience, callbacks=()) -> list:
    """`model.fit` of a `branched_model` on (inputs, labels (batch, branches)), each head at its
    learning rate and for its epochs, early-stopped on its own val loss (its best epoch
    restored): one `TrainingLog` per head. `callbacks` run after the branches' stopping."""
    grouped = GroupedOptimizer(optimizer, groups=[{"variables": head.trainable_variables, "lr_scale": lr}
                                                  for head, lr in zip(heads, lrs)], learning_rate=1.0)
    logits = [bool(traits_of(head).logits and head.logits) for head in heads]
    model.compile(optimizer=grouped, loss=BranchLosses(logits), metrics=[BranchScores(logits)])
    _compat.symbolic_build(model, train.element_spec)  # its loss's and metric's variables now: made in the
    # first step instead, they would have TensorFlow trace the step twice
    stopping = BranchStopping(heads, epochs, patience if validation is not None else None)
    with forgetting_step_gradients():
        history = fit_model(model, train, validation=validation, epochs=max(epochs), callbacks=[stopping, *callbacks])
    return [stopping.log(k, history.history) for k in range(len(heads))]


def branch_crossentropy(labels, outputs, logits: list):
    """(batch, branches): each branch's sparse categorical cross-entropy, as Keras computes it
    for that head alone (`logits[k]`: whether head k returns logits)."""
    order, parts = [], []
    for flag in (False, True):
        columns = [k for k, given in enumerate(logits) if given == flag]
        if columns:
            order += columns
            parts.append(keras.losses.sparse_categorical_crossentropy(
                keras.ops.take(labels, columns, axis=1), keras.ops.take(outputs, columns, axis=1), from_logits=flag))
    losses = parts[0] if len(parts) == 1 else keras.ops.concatenate(parts, axis=1)
    return losses if order == sorted(order) else keras.ops.take(losses, [order.index(k) for k in range(len(order))],
                                                                 axis=1)


@keras.saving.register_keras_serializable(package="transfer")
class BranchLosses(keras.losses.Loss):
    """The branches' losses summed, per example: each branch's gradient is the one it gets alone."""

    def __init__(self, logits, name="branch_losses", **kwargs):
        super().__init__(name=name, **kwargs)
        self.logits = [bool(flag) for flag in logits]

    def call(self, y_true, y_pred):
        return keras.ops.sum(branch_crossentropy(y_true, y_pred, self.logits), axis=1)

    def get_config(self):
        return {**super().get_config(), "logits": self.logits}


class BranchScores(keras.metrics.Metric):
    """Each branch's mean loss and accuracy over an epoch, as two vectors in the logs
    (`branch_loss`, `branch_accuracy`; `val_` ones on validation)."""

    def __init__(self, logits, name="branch"):
        super().__init__(name=name)
        self.logits = list(logits)
        shape = (len(self.logits),)
        self.loss_sum = self.add_variable(shape, initializer="zeros", name="loss_sum", aggregation="sum")
        self.correct = self.add_variable(shape, initializer="zeros", name="correct", aggregation="sum")
        self.count = self.add_variable((), initializer="zeros", name="count", aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = keras.ops.cast(y_true, "int32")
        self.loss_sum.assign_add(keras.ops.sum(branch_crossentropy(y_true, y_pred, self.logits), axis=0))
        hits = keras.ops.equal(keras.ops.cast(keras.ops.argmax(y_pred, axis=-1), "int32"), y_true)
        self.correct.assign_add(keras.ops.sum(keras.ops.cast(hits, "float32"), axis=0))
        self.count.assign_add(keras.ops.cast(keras.ops.shape(y_true)[0], "float32"))

    def result(self):
        return {"branch_loss": keras.ops.divide_no_nan(self.loss_sum, self.count),
                "branch_accuracy": keras.ops.divide_no_nan(self.correct, self.count)}


class BranchStopping(keras.callbacks.Callback):
    """Per-branch early stopping for a `branched_model`: Keras' `EarlyStopping` on each branch's
    entry of `val_branch_loss`, with its weights; a branch ends at its patience or its own epoch count,
    keeps its best (or last) weights from then on, and the fit stops once every branch has ended."""

    def __init__(self, heads: list, epochs: list, patience):
        super().__init__()
        self.heads, self.epochs, self.patience = list(heads), list(epochs), patience

    def on_train_begin(self, logs=None):
        self.branches = [_Branch(head) for head in self.heads]
        self.stoppers = [None if self.patience is None else
                         keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=self.patience,
                                                       restore_best_weights=True) for _ in self.heads]
        for stopper, branch in zip(self.stoppers, self.branches):
            if stopper is not None:
                stopper.set_model(branch)
                stopper.on_train_begin()
        self.ended, self.final, self._seen = [None] * len(self.heads), [None] * len(self.heads), 0

    def on_epoch_end(self, epoch, logs=None):
        self._seen = epoch + 1
        for k, (stopper, branch) in enumerate(zip(self.stoppers, self.branches)):
            if self.ended[k] is not None:
                continue
            if stopper is not None:
                stopper.on_epoch_end(epoch, {"val_loss": _entry((logs or {}).get("val_branch_loss"), k)})
            if branch.stop_training or epoch + 1 >= self.epochs[k]:
                self._end(k, epoch + 1)
        if all(ended is not None for ended in self.ended):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for k, ended in enumerate(self.ended):
            if ended is None:  # the fit stopped before this branch did
                self._end(k, self._seen)
        for head, weights in zip(self.heads, self.final):  # trained on after they ended: back to where they did
            head.set_weights(weights)

    def _end(self, k: int, epochs_run: int) -> None:
        """Branch k ends: it keeps its best epoch's weights as a fit alone ends (`EarlyStopping`
        restores them when it has any), else these; set at the end of the fit."""
        best = None if self.stoppers[k] is None else self.stoppers[k].best_weights
        self.ended[k], self.final[k] = epochs_run, best if best is not None else self.heads[k].get_weights()

    def log(self, k: int, history: dict) -> TrainingLog:
        """Branch k's `TrainingLog`, as `train_keras` gives one for a head trained alone."""
        run = self.ended[k]
        own = {f"{prefix}{metric}": [_entry(v, k) for v in history.get(f"{prefix}branch_{metric}", ())][:run]
               for prefix in ("", "val_") for metric in ("loss", "accuracy")}
        log = TrainingLog({key: values for key, values in own.items() if values}, stopped_early=run < self.epochs[k])
        stopper = self.stoppers[k]
        if stopper is not None and stopper.best_weights is not None:
            log.kept_epoch = stopper.best_epoch + 1
        return log


class _Branch:
    """What `EarlyStopping` reads and sets of a model, for one branch: its stop flag and weights."""

    def __init__(self, head):
        self.head, self.stop_training = head, False

    def get_weights(self):
        return self.head.get_weights()

    def set_weights(self, weights):
        self.head.set_weights(weights)


def _entry(values, k: int) -> float | None:
    return None if values is None else float(np.asarray(values).reshape(-1)[k])
