"""`fit`'s options for how thawed layers train, checked before any slow work and turned into
what `model.fit` takes: an optimizer (`GroupedOptimizer`: the thawed layers' own learning-rate
scale and weight decay) and callbacks (gradual unfreezing, the two-stage schedule).
"""
from __future__ import annotations

import dataclasses


from transfer.training.callbacks import GradualUnfreezing, TwoStageSchedule
from transfer.errors import TransferError, check_number, flag_of
from transfer.training.optimizers import GroupedOptimizer, optimizer_named


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What `train_keras` runs: the optimizer (or its name), extra callbacks (first in the
    list), the epochs to give `model.fit`, and the patience left to its own early stopping."""

    optimizer: object
    callbacks: list
    epochs: int
    patience: int | None


@dataclasses.dataclass(frozen=True)
class ThawTraining:
    thaw_lr_scale: float | None = None
    thaw_weight_decay: float | None = None
    unfreeze_every: int | None = None
    head_epochs: int | None = None
    thaw_epochs: int | None = None

    def check(self, thawing: bool) -> "ThawTraining":
        """One line for the first bad option, naming its value and the valid range."""
        given = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
        if given and not thawing:
            name, value = next(iter(given.items()))
            raise TransferError(f"{name}={value!r} ({flag_of(name)}) shapes how thawed layers train: "
                                f"add --thaw N or --thaw-from SCOPE")
        for name, minimum, above, integer in (("thaw_lr_scale", 0, True, False), ("thaw_weight_decay", 0, False, False),
                                              ("unfreeze_every", 1, False, True), ("head_epochs", 0, False, True),
                                              ("thaw_epochs", 0, False, True)):
            if name in given:
                check_number(name, given[name], minimum, above=above, integer=integer, flag=flag_of(name))
        return self

    def plan(self, feature_layer, optimizer: str, lr: float, epochs: int, patience, validated: bool,
             step_scales: dict | None = None) -> TrainingPlan:
        """The optimizer and callbacks for `feature_layer` (a ThawedFeatureLayer when thawing);
        `step_scales`: thawed layer index -> its measured learning-rate scale (`thaw_steps`)."""
        reduced = any(scale < 1 for scale in (step_scales or {}).values())
        if not any(dataclasses.asdict(self).values()) and not reduced:
            return TrainingPlan(optimizer, [], epochs, patience)  # plain --thaw: one optimizer, as before
        callbacks = []
        if self.head_epochs is not None or self.thaw_epochs is not None:
            schedule = TwoStageSchedule(feature_layer, self.head_epochs or 0,
                                        epochs if self.thaw_epochs is None else self.thaw_epochs,
                                        patience=patience if validated else None, unfreeze_every=self.unfreeze_every)
            callbacks, epochs, patience = [schedule], schedule.epochs, None  # the schedule stops each stage
        elif self.unfreeze_every is not None:
            callbacks = [GradualUnfreezing(feature_layer, every=self.unfreeze_every, start=1)]
        return TrainingPlan(self.optimizer(feature_layer, optimizer, lr, step_scales), callbacks, epochs, patience)

    def optimizer(self, feature_layer, name: str, lr: float, step_scales: dict | None = None) -> GroupedOptimizer:
        """One group per thawed layer (its own Adam step count, starting when it first trains),
        at `lr * thaw_lr_scale` times its measured step scale, with `thaw_weight_decay`; the head
        is the main group at `lr`."""
        indices = feature_layer.weight_layer_indices
        scale = 1.0 if self.thaw_lr_scale is None else self.thaw_lr_scale
        group = {} if self.thaw_weight_decay is None else {"weight_decay": self.thaw_weight_decay}
        groups = [{**group, "lr_scale": scale * (step_scales or {}).get(index, 1.0),
                   "variables": [w for w, i in zip(feature_layer.thawed_weights, indices) if i == index]}
                  for index in sorted(set(indices))]
        return GroupedOptimizer(optimizer_named(name, lr), groups)
