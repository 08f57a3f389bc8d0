"""How features of any rank become one vector per example: the one place that decides it.

`avg` and `max` reduce every axis between batch and channels (spatial or sequence positions);
`flatten` keeps the positions, at the price of a fixed feature shape and many more weights.
2-D features pass through unchanged. The Keras layer serves the Keras heads, `pool_array` the
scikit-learn probe; both compute the same thing.
"""
import math

import keras
import numpy as np
from keras import ops

from transfer.errors import TransferError

from .base import check_choice
from .protocol import Option

POOLINGS = ("avg", "max", "flatten")
POOLING = Option("pooling", "avg", "avg, max or flatten")  # the option of the heads that pool


def check_pooling(owner, pooling):
    """`pooling` if valid, else a one-line error that names `owner` and the valid poolings."""
    return check_choice(owner, "pooling", pooling, POOLINGS)


@keras.saving.register_keras_serializable(package="transfer")
class FeaturePooling(keras.layers.Layer):
    """(batch, ..., channels) features to (batch, features) vectors."""

    def __init__(self, pooling="avg", **kwargs):
        super().__init__(**kwargs)
        self.pooling = check_pooling("FeaturePooling", pooling)

    def build(self, input_shape):
        if self.pooling == "flatten" and None in tuple(input_shape)[1:]:
            raise TransferError(
                f"pooling='flatten' needs a fixed feature shape, got {tuple(input_shape)}; "
                f"use pooling='avg' or 'max'"
            )

    def call(self, inputs):
        return pool_tensor(inputs, self.pooling)

    def compute_output_shape(self, input_shape):
        if self.pooling == "flatten" and len(input_shape) > 2:
            return (input_shape[0], math.prod(input_shape[1:]))
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


def pool_tensor(features, pooling="avg"):
    """What `FeaturePooling` computes, on a tensor (also inside a `tf.function`: extraction
    pools the cuts in the backbone's trace)."""
    axes = tuple(range(1, len(features.shape) - 1))
    if not axes:
        return features
    if pooling == "flatten":
        return ops.reshape(features, (-1, math.prod(features.shape[1:])))
    return (ops.mean if pooling == "avg" else ops.max)(features, axis=axes)


def pool_array(features, pooling="avg"):
    """The numpy twin of `FeaturePooling`, for heads that are not Keras layers."""
    check_pooling("pool_array", pooling)
    features = np.asarray(features)
    axes = tuple(range(1, features.ndim - 1))
    if not axes:
        return features
    if pooling == "flatten":
        return features.reshape(len(features), -1)
    return (np.mean if pooling == "avg" else np.max)(features, axis=axes)
