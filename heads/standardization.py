"""Standardized head inputs: features at any scale become zero mean, unit variance per channel.

A network's intermediate activations can sit anywhere (mean 0.05 or 500); a head trained with
the usual optimizer settings learns on unit-scale inputs only. So every Keras head starts with a
`Standardization` layer whose per-channel mean and variance (over every axis but the last) are
*adapted* once on training features, saved with the model and frozen into its exports.

`Moments` accumulates those statistics over batches (float64, Chan's parallel update), so a
training loop can adapt on a stream it never holds in memory; `feature_batches` reads what a user
hands to `Head.adapt`: one array, or batches of features from a tf.data.Dataset or any iterable.
"""
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from transfer.errors import TransferError, check_int
from transfer.text import printable

ARRAY_CHUNK_VALUES = 1 << 22  # values per batch when `adapt` is given whole arrays (32 MiB in float64)


@keras.saving.register_keras_serializable(package="transfer")
class Standardization(keras.layers.Layer):
    """(x - mean) / sqrt(variance) per channel (the last axis), with mean and variance adapted.

    Before `adapt` (or `set_statistics`) mean is 0 and variance 1: the identity. `count` holds how
    many values per channel the statistics came from (0: never adapted), and is saved with them.
    """

    def __init__(self, **kwargs):
        super().__init__(trainable=False, **{k: v for k, v in kwargs.items() if k != "trainable"})

    def build(self, input_shape):
        channels = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(channels,), initializer="zeros", trainable=False)
        self.variance = self.add_weight(name="variance", shape=(channels,), initializer="ones", trainable=False)
        self.count = self.add_weight(name="count", shape=(), initializer="zeros", trainable=False)

    def call(self, inputs):
        return (inputs - ops.cast(self.mean, inputs.dtype)) * ops.rsqrt(ops.cast(self.variance, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    @property
    def adapted(self) -> bool:
        """True once statistics were set; read eagerly, also while Keras traces a training step."""
        if not self.built:
            return False
        with tf.init_scope():
            return float(ops.convert_to_numpy(self.count)) > 0

    def set_statistics(self, moments: "Moments") -> None:
        """Take `moments`' mean and variance. A constant channel (no spread, or none that float32
        features can hold) is only centred, as scikit-learn's StandardScaler does."""
        if not self.built:
            self.build((None, moments.channels))
        if moments.channels != self.mean.shape[0]:
            raise TransferError(f"standardization: features have {moments.channels} channels, "
                                f"the head was built for {self.mean.shape[0]}")
        variance = moments.variance
        constant = (variance <= np.finfo("float32").tiny) | (np.sqrt(variance) <= 1e-6 * np.abs(moments.mean))
        self.mean.assign(moments.mean.astype("float32"))
        self.variance.assign(np.where(constant, 1.0, variance).astype("float32"))
        self.count.assign(float(moments.count))


class Moments:
    """Per-channel count, mean and variance of batches of features, merged batch by batch."""

    def __init__(self):
        self.count, self.mean, self.sum_squares = 0, None, None

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def variance(self) -> np.ndarray:
        return self.sum_squares / self.count

    def update(self, batch) -> None:
        values = np.asarray(batch, dtype="float64")
        values = values.reshape(-1, values.shape[-1])
        if not len(values):
            return
        if not np.all(np.isfinite(values)):
            raise TransferError("standardization: the features hold NaN or infinite values; "
                                "check the cut and the input scale")
        count, mean = len(values), values.mean(axis=0)
        squares = ((values - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.sum_squares = count, mean, squares
            return
        if len(mean) != self.channels:
            raise TransferError(f"standardization: a batch of features has {len(mean)} channels, "
                                f"the ones before had {self.channels}")
        total = self.count + count
        delta = mean - self.mean
        self.sum_squares = self.sum_squares + squares + delta**2 * self.count * count / total
        self.mean = self.mean + delta * count / total
        self.count = total


def feature_batches(data, steps=None, several=False):
    """Batches of features from what `Head.adapt` takes.

    `data`: an array or tensor (batch, ..., channels) (for a head on several inputs, a list of
    them), or batches of those from a tf.data.Dataset or any iterable; an element that is a
    (features, labels) pair gives its features. `steps`: at most that many batches.
    """
    if steps is not None:
        steps = check_int("adapt", "steps", steps)
    if several and _is_features(data, False):
        data = [data]  # one input of a head that takes several
    if _is_features(data, several):
        arrays = [np.asarray(x) for x in data] if several else [np.asarray(data)]
        chunk_size = max(1, ARRAY_CHUNK_VALUES // max(1, sum(x[:1].size for x in arrays)))
        for start in range(0, len(arrays[0]), chunk_size):
            if steps is not None and start // chunk_size >= steps:
                return
            chunk = [x[start:start + chunk_size] for x in arrays]
            yield chunk if several else chunk[0]
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TransferError(f"adapt takes features (an array, or batches of them), got {type(data).__name__}")
    for number, element in enumerate(data):
        if steps is not None and number >= steps:
            return
        yield _features_of(element, several)


def _is_features(data, several: bool) -> bool:
    """An array-like of features (or, for `several` inputs, a list of them), not a stream of batches."""
    if several:
        return isinstance(data, (list, tuple)) and all(hasattr(x, "shape") for x in data) and len(data) > 0
    return hasattr(data, "shape") and hasattr(data, "dtype") and not isinstance(data, tf.data.Dataset)


def _features_of(element, several: bool):
    """A stream element: features, or a (features, labels) pair."""
    if isinstance(element, dict):
        raise TransferError("adapt takes features or (features, labels) pairs, got a dict")
    if several:
        if isinstance(element, (list, tuple)) and element and isinstance(element[0], (list, tuple)):
            element = element[0]
        return [np.asarray(x) for x in element] if isinstance(element, (list, tuple)) else [np.asarray(element)]
    if isinstance(element, (list, tuple)):
        element = element[0]
    return np.asarray(element)


def warn_not_adapted(owner: str) -> None:
    """What a head says when it trains on statistics it never learned (identity standardization)."""
    warnings.warn(f"{printable(owner)}: its input standardization was never adapted, so features pass unchanged; "
                  "call head.adapt(training_features) before training, or build the head with standardize=False",
                  StandardizationWarning, stacklevel=3)


class StandardizationWarning(UserWarning):
    """A head trains with an input standardization that was never adapted."""
