"""Keras callbacks that decide, epoch by epoch, which thawed layers train.

They flip `trainable` on the thawed weights of a `ThawedFeatureLayer` and force a retrace
(`model.make_train_function(force=True)`): the TF trainer traces the train step with the
trainable weights of that moment and reads `model.train_function` anew at every step. Keras
optimizers refuse weights they were not built with, so at train begin these callbacks build
the optimizer with every thawed weight (`GroupedOptimizer` with the thawed weights as groups
knows them however it is built).
"""
from __future__ import annotations

import keras

from transfer import _compat
from transfer.errors import TransferError, check_number


def unfrozen_layers(total: int, epochs_in: int, every: int | None, start: int) -> int:
    """How many layers train `epochs_in` epochs into unfreezing: `start`, one more every `every`."""
    return total if every is None else min(total, start + epochs_in // every)


def train_layers(model, features, count: int) -> None:
    """Let the `count` thawed layers nearest the cut train; retrace the train step if that changed."""
    before = features.trainable_layer_count
    features.set_trainable_layers(count)
    if features.trainable_layer_count != before:
        model.make_train_function(force=True)


def build_optimizer(model, features) -> None:
    """Build the model's optimizer with every thawed weight, trainable now or not.

    Without a distribution strategy the TF trainer builds the optimizer at the first train
    step, with the weights trainable then; a layer unfrozen later would be refused.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        known = {id(v) for v in model.trainable_variables}
        optimizer.build(model.trainable_variables + [w for w in features.thawed_weights if id(w) not in known])
        return
    try:
        _compat.optimizer_check_known(optimizer, features.thawed_weights)  # Keras' own check, before any epoch
    except ValueError:
        raise TransferError("the optimizer was built without some thawed weights, so it cannot train them: "
                            "compile again (a new optimizer) or use transfer.GroupedOptimizer") from None


class GradualUnfreezing(keras.callbacks.Callback):
    """ULMFiT's gradual unfreezing: at the first epoch the last `start` thawed layers train with
    the head, and every `every` epochs one more layer, backwards from the cut, joins them."""

    def __init__(self, features, every: int = 1, start: int = 1):
        super().__init__()
        check_number("every", every, 1, integer=True)
        check_number("start", start, 0, integer=True, maximum=len(features.plan.layers))
        self.features, self.every, self.start = features, every, start
        self._first_epoch = None

    def on_train_begin(self, logs=None):
        build_optimizer(self.model, self.features)
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch  # counts from the fit's first epoch (`initial_epoch` too)
        total = len(self.features.plan.layers)
        train_layers(self.model, self.features, unfrozen_layers(total, epoch - self._first_epoch, self.every,
                                                                self.start))


class TwoStageSchedule(keras.callbacks.Callback):
    """The head alone for `head_epochs`, then the head with the thawed layers for `thaw_epochs`,
    in one `model.fit(epochs=schedule.epochs)` so that other callbacks see one run.

    With `patience`, each stage stops early on `monitor` by itself and ends on its best epoch's
    weights. With `unfreeze_every`, stage 2 unfreezes gradually from one layer. Put it first in
    the callback list: it adds `stage` (1 or 2) to each epoch's logs, for the history.
    """

    def __init__(self, features, head_epochs: int, thaw_epochs: int, patience: int | None = None,
                 monitor: str = "val_loss", unfreeze_every: int | None = None):
        super().__init__()
        check_number("head_epochs", head_epochs, 0, integer=True)
        check_number("thaw_epochs", thaw_epochs, 0, integer=True)
        if unfreeze_every is not None:
            check_number("unfreeze_every", unfreeze_every, 1, integer=True)
        self.features, self.head_epochs, self.thaw_epochs = features, head_epochs, thaw_epochs
        self.patience, self.monitor, self.unfreeze_every = patience, monitor, unfreeze_every
        self.stage, self._stage_start, self._stopper, self._switch = 1, None, None, False

    @property
    def epochs(self) -> int:
        """What to give `model.fit`: both stages at full length."""
        return self.head_epochs + self.thaw_epochs

    def on_train_begin(self, logs=None):
        build_optimizer(self.model, self.features)
        self._begin(1 if self.head_epochs else 2)

    def _begin(self, stage: int) -> None:
        self.stage, self._stage_start, self._switch = stage, None, False
        self._stopper = None
        if self.patience is not None:
            self._stopper = keras.callbacks.EarlyStopping(monitor=self.monitor, patience=self.patience,
                                                          restore_best_weights=True)
            self._stopper.set_model(self.model)
            self._stopper.on_train_begin()

    def _end_stage(self) -> None:
        if self._stopper is not None:
            self._stopper.on_train_end()  # back to the stage's best epoch

    def on_epoch_begin(self, epoch, logs=None):
        if self._switch:
            self._end_stage()
            self._begin(2)
        if self._stage_start is None:
            self._stage_start = epoch
        total = len(self.features.plan.layers)
        count = 0 if self.stage == 1 else unfrozen_layers(total, epoch - self._stage_start, self.unfreeze_every, 1)
        train_layers(self.model, self.features, count)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = self.stage
        stopped = False
        if self._stopper is not None:
            already = self.model.stop_training
            self._stopper.on_epoch_end(epoch, logs)
            stopped = self.model.stop_training and not already
            self.model.stop_training = already
        length = self.head_epochs if self.stage == 1 else self.thaw_epochs
        if stopped or epoch + 1 - self._stage_start >= length:
            if self.stage == 1 and self.thaw_epochs:
                self._switch = True  # at the next epoch's start, so that this epoch's callbacks see its weights
            else:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        self._end_stage()
