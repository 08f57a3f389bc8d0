"""Features already extracted (the cache's, or in memory) as tf.data splits: what cached training
and sweeps train heads on."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

SHUFFLE_BYTES = 2**30  # the most features a training shuffle buffer holds


class _Later:
    """A stream not made yet: `FeatureSplits.of_entries` defers each split's `tf.data` pipeline."""

    def __init__(self, make):
        self.make = make


class _Stream:
    """A split's stream, made on first use when it was given as `_Later`: a cut sweep opens every
    cut's cached splits, and on ResNet50's 177 cuts the 354 `tf.data` pipelines took 8-12 s to
    make, where the ridge ranking reads the files (`FeatureSplits.arrays`) and only the few best
    cuts are ever streamed."""

    def __set_name__(self, owner, name):
        self.slot = f"_{name}"

    def __get__(self, splits, owner=None):
        if splits is None:
            raise AttributeError(self.slot)  # dataclasses: no default for this field
        value = splits.__dict__[self.slot]
        if isinstance(value, _Later):
            value = splits.__dict__[self.slot] = value.make()
        return value

    def __set__(self, splits, value):
        splits.__dict__[self.slot] = value


@dataclasses.dataclass
class FeatureSplits:
    """Features already extracted by a backbone (the cache's, or in memory): what cached training
    and sweeps train heads on."""

    train: tf.data.Dataset = _Stream()  # unbatched (features, int32 label) pairs
    validation: tf.data.Dataset | None = _Stream()
    test: tf.data.Dataset | None = _Stream()
    feature_shapes: list  # one example's shape per tensor, e.g. [(4, 4, 32)]; several: one per cut, or
    class_names: list     # a thawed suffix's inputs (each example is then a tuple of tensors)
    entries: dict | None = None  # {role: [cache Entry, ...]} when the splits come from the cache (`arrays`)

    @classmethod
    def of_entries(cls, entries: dict, class_names: list) -> FeatureSplits:
        """`{role: [Entry, ...]}` (one entry per tensor, `FeatureCache.extract`) as streamed splits."""
        streams = {role: _Later(functools.partial(_zipped_entries, listed)) for role, listed in entries.items()}
        shapes = [shape for entry in entries["train"] for shape in entry.feature_shapes]
        return cls(streams["train"], streams.get("validation"), streams.get("test"), shapes, class_names, entries)

    def has(self, role: str) -> bool:
        """Whether the split `role` exists, without making its stream."""
        return self.__dict__[f"_{role}"] is not None

    def arrays(self, role: str) -> tuple:
        """A split's (features, labels) whole in memory, for a probe that is not trained in batches:
        read from the cache's files when the split has one entry there (on ResNet50's 177 pooled
        cuts ~6x faster than through the stream's unbatch and batch), else from the stream."""
        listed = (self.entries or {}).get(role)
        if listed is not None and len(listed) == 1:
            return listed[0].arrays()
        batches = list(getattr(self, role).batch(4096).as_numpy_iterator())
        return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])

    def training(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Shuffled batches; the shuffle buffer holds at most ~1 GiB of features."""
        return self.train.shuffle(self._buffer(), seed=seed).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def shuffle_bytes(self) -> int:
        """The most memory `training`'s shuffle buffer takes (what several streams of it add up to)."""
        return self._buffer() * self._example_bytes()

    def kept_in_memory(self) -> FeatureSplits:
        """These splits, each kept in memory after its first pass when it is no bigger than the
        training shuffle buffer (which holds the training split whole then anyway): later epochs
        read no file (the cache's streams go through Python). Same examples, same order."""
        def kept(stream):
            size = None if stream is None else int(stream.cardinality())
            return stream.cache() if size is not None and 0 <= size <= self._buffer() else stream

        return dataclasses.replace(self, train=kept(self.train), validation=kept(self.validation),
                                   test=kept(self.test))

    def _buffer(self) -> int:
        return max(1, min(10_000, SHUFFLE_BYTES // self._example_bytes()))

    def _example_bytes(self) -> int:
        return sum(4 * int(np.prod([size or 1 for size in shape])) for shape in self.feature_shapes)

    def evaluation(self, role: str, batch_size: int = 256) -> tf.data.Dataset | None:
        stream = getattr(self, role)
        return None if stream is None else stream.batch(batch_size).prefetch(tf.data.AUTOTUNE)



def _zipped_entries(entries: list) -> tf.data.Dataset:
    return _zipped([entry.dataset() for entry in entries])


def _zipped(streams: list) -> tf.data.Dataset:
    """(features, label) streams of the same examples as one stream of ((features, ...), label)."""
    if len(streams) == 1:
        return streams[0]
    return tf.data.Dataset.zip(tuple(streams)).map(lambda *pairs: (tuple(f for f, _ in pairs), pairs[0][1]))
