"""`DataSpec`: which data, split how, prepared how: made once, checked when made.

What `transfer.datasets.load` and the preprocessing take, as one small frozen value (as
`TrainingSettings` is for training). `data` is a spec string (`transfer.datasets.load`) or
`DataSplits` already loaded; only a spec string can be written down (`to_dict`) and loaded again
in another process (`from_dict`). Only cheap checks here, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from transfer.errors import TransferError, check_keywords, check_number


@dataclasses.dataclass(frozen=True)
class DataSpec:
    data: object  # a spec string (`transfer.datasets.load`), or DataSplits
    data_dir: str | None = None  # where sources that download keep their files (TFDS)
    validation_split: float = 0.2  # share of each class held out when the source has no validation split
    per_class: int | None = None  # train on this many examples per class (the rest become test)
    seed: int = 0  # the split's (and the shuffles') seed
    preprocessing: object = None  # a Preprocessing, its dict, or a JSON file (default: beside the backbone)
    scale: str | None = None  # the preprocessing's scale, replaced

    def __post_init__(self):
        if isinstance(self.data, Path):
            object.__setattr__(self, "data", str(self.data))
        if isinstance(self.data, str) and not self.data:
            raise TransferError("data='' must be a data spec (e.g. digits, folder:DIR, npz:FILE) or DataSplits")
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        split = self.validation_split
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
            raise TransferError(f"validation_split={self.validation_split!r} must be in [0, 1)")
        if self.per_class is not None and (isinstance(self.per_class, bool) or not isinstance(self.per_class, int)
                                           or self.per_class < 1):
            raise TransferError(f"per_class={self.per_class!r} must be a positive integer")
        check_number("seed", self.seed, 0, integer=True, flag="--seed")
        if self.scale is not None and not isinstance(self.scale, str):
            raise TransferError(f"scale={self.scale!r} (--scale) must be a scale name")

    @classmethod
    def of(cls, spec, **changes) -> DataSpec:
        """`spec` (or a data spec string, or DataSplits) with `changes`, checked; an unknown name is a
        one-line TransferError."""
        check_keywords("data spec", changes, FIELDS)
        if isinstance(spec, cls):
            return dataclasses.replace(spec, **changes)
        return cls(spec, **changes)

    @property
    def named(self) -> bool:
        """The data come from a spec string: they can be loaded again elsewhere."""
        return isinstance(self.data, str)

    def load(self):
        """The `DataSplits` (loaded from the spec string, or as given)."""
        from transfer import datasets

        if isinstance(self.data, datasets.DataSplits):
            return self.data
        return datasets.load(self.data, data_dir=self.data_dir, validation_split=self.validation_split,
                             per_class=self.per_class, seed=self.seed)

    def to_dict(self) -> dict:
        """Plain JSON data; only data named by a spec string can be written down."""
        if not self.named:
            raise TransferError("data loaded in memory (DataSplits) cannot be written down: give a data spec")
        values = {name: getattr(self, name) for name in FIELDS}
        if self.preprocessing is not None and not isinstance(self.preprocessing, (str, dict)):
            values["preprocessing"] = self.preprocessing.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> DataSpec:
        check_keywords("data spec", values, FIELDS)
        return cls(**values)


FIELDS = tuple(field.name for field in dataclasses.fields(DataSpec))
