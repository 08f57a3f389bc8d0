"""The examples an INT8 quantization is calibrated and checked on: a seeded sample of the training
split only (never validation or test, whose features the quantized model then extracts),
prepared exactly as extraction feeds them (`Inputs.prepared`).

The sample is `CALIBRATION` examples for NNCF's statistics and `HELD_BACK` others for the
fidelity check (`transfer.features.openvino_engine.fidelity`); a small training split is shared
between them (a quarter held back; under 4 examples, the calibration ones are checked). Nothing
is read until a quantization needs it: a run that finds the quantized model on disk never reads
the sample, only its identity (the model's key).
"""
from __future__ import annotations

import functools

import numpy as np

from transfer.errors import TransferError

# 64 calibration examples: NNCF's calibration pass costs ~2.5x an FP32 pass over them (300, its
# default, was ~20 s of a first run on ResNet50), and 64 keep every probe in experiments/README.md
# within 1 point of FP32 (32 did not: 1.3 points on one). 64 held back for the check.
CALIBRATION, HELD_BACK = 64, 64


def check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TransferError(f"calibration_size={size!r} (--calibration-size) must be a whole number of training "
                            "examples, at least 1")


class Calibration:
    """The calibration batches and the held-back batch of `inputs`' training split (an `Inputs`)."""

    def __init__(self, inputs, calibration: int = CALIBRATION, held_back: int = HELD_BACK):
        self.inputs = inputs
        total = _training_size(inputs)
        self.held = min(held_back, total // 4)
        self.size = max(1, min(calibration, total - self.held))
        self.seed = inputs.batches.seed
        self.identity = {"data": inputs.splits.identity, "role": "train", "seed": self.seed, "size": self.size,
                         "held_back": self.held, "input": inputs.kind.recipe()}
        self.indices = np.random.default_rng(self.seed).permutation(total)[:self.size + self.held]

    @property
    def batches(self) -> list:
        """The calibration examples, prepared, in batches of the extraction's batch size."""
        examples, size = self._examples[:self.size], self.inputs.batches.batch_size
        return [self.inputs.prepared(examples[start:start + size]) for start in range(0, len(examples), size)]

    @property
    def held_back(self):
        """The held-back examples, prepared, as one batch (under 4 training examples, none is
        held back: the calibration ones are checked)."""
        return self.inputs.prepared(self._examples[self.size:] if self.held else self._examples)

    @functools.cached_property
    def _examples(self) -> np.ndarray:
        """The chosen training examples (raw), calibration ones first, read in one pass."""
        wanted = {int(index): order for order, index in enumerate(self.indices)}
        chosen, seen = [None] * len(wanted), 0
        for examples, _ in self.inputs.batches.evaluation("train"):
            for offset, example in enumerate(np.asarray(examples)):
                if seen + offset in wanted:
                    chosen[wanted[seen + offset]] = example
            seen += len(examples)
            if seen > max(wanted):
                break
        return np.stack(chosen)


def _training_size(inputs) -> int:
    size = inputs.splits.sizes.get("train")
    if size is None:
        size = sum(len(labels) for _, labels in inputs.batches.evaluation("train"))
    return int(size)
