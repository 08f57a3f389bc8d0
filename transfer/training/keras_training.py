"""A Keras head trained with `model.fit`: compiled, early-stopped on val_loss with the best epoch
restored, stopped with one line when the loss diverges, under the strategy the model was made
in, refit once more where the head asks; what the run did (`TrainingLog`)."""
from __future__ import annotations

import dataclasses

import keras
import numpy as np

from transfer.errors import TransferError
from transfer.training.distribute import fit_model
from transfer.heads.protocol import traits_of
from transfer.training.optimizers import optimizer_named
from transfer.training.trace_memory import forgetting_step_gradients


class Diverged(TransferError):
    """Training's loss became non-finite or grew by orders of magnitude: nothing is written."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training at the first batch whose running loss is not finite or exceeds `GROWTH`
    times the first batch's (and 10): a thaw whose features are tiny can go from 1.4 to 4.9e6 in
    one epoch, and what it ends with would be exported at chance accuracy."""

    GROWTH = 100.0

    def __init__(self):
        super().__init__()
        self.first, self.reason = None, None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.mean(loss))
        if self.first is None:
            self.first = loss
        if not np.isfinite(loss) or loss > max(self.GROWTH * self.first, 10.0):
            self.reason = f"the training loss went from {self.first:.3g} to {loss:.3g}"
            self.model.stop_training = True


@dataclasses.dataclass
class TrainingLog:
    """What `model.fit` did: the history, and which epoch's weights the model ended with."""

    history: dict  # metric name -> one value per epoch
    stopped_early: bool = False
    kept_epoch: int | None = None  # 1-based; early stopping restored this epoch's weights (lowest val_loss)

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", ()))

    def summary(self) -> str:
        """One line for the user, e.g. "early stopping after epoch 14 of 20; kept epoch 9 (lowest val_loss)"."""
        trained = f"trained {self.epochs_run} epoch{'s' if self.epochs_run != 1 else ''}"
        if self.kept_epoch is None:
            return trained + (" (stopped by a callback)" if self.stopped_early else "")
        ended = f"early stopping after epoch {self.epochs_run}" if self.stopped_early else trained
        return f"{ended}; kept the weights of epoch {self.kept_epoch} (lowest val_loss)"


def train_keras(model, head, train, validation, *, epochs: int, lr: float, optimizer, patience,
                callbacks=(), class_weight=None, verbose=0) -> TrainingLog:
    """Compile and `model.fit` with early stopping on val_loss (best epoch restored), under the
    strategy the model was made in (`transfer.training.distribute.fit_model`)."""
    if isinstance(optimizer, str):  # else an optimizer made for the run (thaw options)
        optimizer = optimizer_named(optimizer, lr)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=traits_of(head).logits and head.logits),
                  metrics=["accuracy"])
    guard = StopOnDivergence()
    callbacks, stopper = [guard, *callbacks], None
    if patience is not None and validation is not None:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        callbacks.append(stopper)
    with forgetting_step_gradients():
        history = fit_model(model, train, validation=validation, epochs=epochs, callbacks=callbacks,
                            class_weight=class_weight, verbose=verbose)
    if guard.reason is not None:
        raise Diverged(f"training diverged: {guard.reason} (epoch {len(history.epoch) or 1}); nothing is written. "
                       "Try a lower --lr (with a thaw: --thaw-lr-scale 0.1 or less, or --thaw-weight-decay)")
    log = TrainingLog({key: [float(v) for v in values] for key, values in history.history.items()})
    log.stopped_early = log.epochs_run < epochs  # by early stopping, or by a user's callback
    if stopper is not None and stopper.best_weights is not None:  # Keras restores them at the end of training
        log.kept_epoch = stopper.best_epoch + 1
    return log


def class_weights(train) -> dict:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.concatenate([y for _, y in train.as_numpy_iterator()])
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}


def trained_with_refit(head, train_once) -> list:
    """`train_once()` (a new optimizer each call), and once more after `head.begin_refit()` when
    the head has a refit step (`multilayer` with refit > 0: Head2Toe's fit of the kept features
    without penalty): the training logs, the last one the model's as it ends."""
    logs = [train_once()]
    if traits_of(head).refits and head.refit:
        head.begin_refit()
        logs.append(train_once())
    return logs
