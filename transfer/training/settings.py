"""How a head (and thawed layers) train: the defaults and checks of `fit`, `sweep` and the CLI, once.

`TrainingSettings` owns every training default and refuses a bad value in one line when it is
made, before any slow work. The CLI builds it from flags (its help shows these defaults),
`transfer.fit` takes it or the same names as keyword arguments, and a sweep checks each choice
of its axes with `check_setting`. No TensorFlow here: the CLI reads the defaults at once.
"""
from __future__ import annotations

import dataclasses

from typing import TYPE_CHECKING

from transfer.errors import TransferError, check_choice, check_number, flag_of
from transfer.choices import OPTIMIZERS

if TYPE_CHECKING:
    from transfer.training.thaw_schedule import ThawTraining

CLASS_WEIGHTS = (None, "balanced")
_NUMBERS = {  # name -> check_number's range
    "epochs": dict(minimum=1, integer=True),  # 0 would write an untrained model
    "batch_size": dict(minimum=1, integer=True),
    "lr": dict(minimum=0, above=True),
    "patience": dict(minimum=0, integer=True),
    "seed": dict(minimum=0, integer=True),
    "crop_padding": dict(minimum=0, integer=True),
    "thaw": dict(minimum=1, integer=True),
}


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    patience: int | None = 5  # early stopping on val_loss, best epoch restored; None: off
    class_weight: str | dict | None = None  # "balanced", or {class index: weight}
    seed: int = 0
    augment: bool = False  # random horizontal flips
    crop_padding: int = 0  # random shifts: pad by N pixels, crop back
    thaw: int | None = None  # also train the last N weight layers before the cut
    thaw_from: str | None = None  # ... or every weight layer from this scope to the cut
    # How thawed layers train (`transfer.training.thaw_schedule`):
    thaw_lr_scale: float | None = None
    thaw_weight_decay: float | None = None
    unfreeze_every: int | None = None
    head_epochs: int | None = None
    thaw_epochs: int | None = None

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if value is not None and name != "class_weight":
                check_setting(name, value)
        if not isinstance(self.class_weight, dict):
            check_choice("class_weight", self.class_weight, CLASS_WEIGHTS, flag=flag_of("class_weight"))
        if self.thaw is not None and self.thaw_from is not None:
            raise TransferError(f"thaw={self.thaw!r} and thaw_from={self.thaw_from!r} both choose the thawed "
                                "layers: give one (--thaw N or --thaw-from SCOPE)")
        self.thaw_training.check(thawing=self.thawing)

    @classmethod
    def of(cls, settings: TrainingSettings | None = None, **changes) -> TrainingSettings:
        """`settings` (default: the defaults) with `changes`, checked; an unknown name is a TypeError."""
        return dataclasses.replace(settings or cls(), **changes)

    @property
    def thawing(self) -> bool:
        return self.thaw is not None or self.thaw_from is not None

    @property
    def thaw_training(self) -> ThawTraining:
        from transfer.training.thaw_schedule import ThawTraining

        return ThawTraining(**{name: getattr(self, name) for name in ThawTraining.__dataclass_fields__})

    def to_config(self) -> dict:
        """As a run's config.json records it (the same names as the keyword arguments)."""
        return dataclasses.asdict(self)


FIELDS = tuple(field.name for field in dataclasses.fields(TrainingSettings))


def default(name: str):
    """A setting's default, e.g. for the CLI's help."""
    return TrainingSettings.__dataclass_fields__[name].default


def check_setting(name: str, value, owner: str = "") -> None:
    """One training value (`owner`: who gives it, e.g. "sweep"), in the house's one-line format."""
    shown = f"{owner}: {name}" if owner else name
    if name == "optimizer":
        check_choice(shown, value, OPTIMIZERS, flag=flag_of(name))
    elif name in _NUMBERS:
        check_number(shown, value, flag=flag_of(name), **_NUMBERS[name])
