"""The tf.data pipelines of raw examples, made batchable as the run's input kind says: one place,
so that training, extraction and evaluation see the same examples in the same order."""
from __future__ import annotations

import tensorflow as tf

from transfer.data.input_kind import InputKind


class Batches:
    """The tf.data pipelines: examples made batchable as `kind` says (images resized to the
    backbone's size, float32; arrays cast to the input's dtype)."""

    def __init__(self, splits, kind: InputKind, batch_size: int, seed: int, augmentation):
        self.splits, self.batch_size, self.seed, self.augmentation = splits, batch_size, seed, augmentation
        self.kind = kind

    def training(self) -> tf.data.Dataset:
        size = self.splits.sizes.get("train") or 10_000
        stream = self.splits.train.shuffle(min(size, 10_000), seed=self.seed, reshuffle_each_iteration=True)
        return self._batched(stream, self.augmentation)

    def evaluation(self, role: str, skip: int = 0, take: int = -1, batch_size: int | None = None):
        """Unshuffled batches of one split, optionally of examples [skip, skip + take) only
        (where the source allows, the others are not read: a pipeline's shard), of this
        pipeline's batch size or `batch_size`."""
        stream = self.splits.window(role, skip, take)
        return None if stream is None else self._batched(stream, None, batch_size)

    def _batched(self, stream, augmentation, batch_size: int | None = None) -> tf.data.Dataset:
        batched = self.kind.batchable(stream, augmentation).batch(batch_size or self.batch_size)
        return batched.prefetch(tf.data.AUTOTUNE)
