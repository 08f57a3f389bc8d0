"""How features of any rank become one vector per example: the one place that decides it.

`avg` and `max` reduce every axis between batch and channels (spatial or sequence positions);
`flatten` keeps the positions, at the price of a fixed feature shape and many more weights;
`grid2` keeps a little of the layout at 4x the channels: positions averaged in 2 bins per axis
(a 2x2 grid of a map, 2 segments of a sequence), the bins as adaptive average pooling draws
them. 2-D features pass through unchanged. The Keras layer serves the Keras heads, `pool_array` the
scikit-learn probe; both compute the same thing.
"""
import math

import keras
import numpy as np
from keras import ops

from transfer.errors import TransferError

from .base import check_choice
from .protocol import Option

POOLINGS = ("avg", "max", "flatten", "grid2")
POOLING = Option("pooling", "avg", "avg, max, flatten or grid2")  # the option of the heads that pool


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
        if self.pooling in ("flatten", "grid2") and None in tuple(input_shape)[1:]:
            raise TransferError(
                f"pooling='flatten' needs a fixed feature shape, got {tuple(input_shape)}; "
                f"use pooling='avg' or 'max'"
            )

    def call(self, inputs):
        return pool_tensor(inputs, self.pooling)

    def compute_output_shape(self, input_shape):
        if self.pooling == "flatten" and len(input_shape) > 2:
            return (input_shape[0], math.prod(input_shape[1:]))
        if self.pooling == "grid2":
            return (input_shape[0], input_shape[-1] * 2 ** (len(input_shape) - 2))
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
    if pooling == "grid2":
        return grid_cells(features, 2, ops)
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
    if pooling == "grid2":
        return grid_cells(features, 2, np)
    return (np.mean if pooling == "avg" else np.max)(features, axis=axes)


def grid_cells(features, grid: int, module=np):
    """(batch, ..., channels) -> (batch, cells x channels): every axis between batch and channels
    averaged into `grid` bins (`bins`), cell by cell in row-major order, each cell's channels
    together; `module` is numpy or keras.ops (the same code for arrays and tensors)."""
    axes = range(1, len(features.shape) - 1)
    cells = [features]
    for axis in axes:  # pool one axis at a time into `grid` bins, each kept as its own cell
        size = features.shape[axis]
        cells = [module.mean(module.take(cell, np.arange(start, stop), axis=axis), axis=axis, keepdims=True)
                 for cell in cells for start, stop in bins(size, grid)]
    return module.concatenate([module.reshape(cell, (-1, features.shape[-1])) for cell in cells], axis=-1)


def grid_map(features, grid: int = 2, module=ops):
    """(batch, ..., channels) -> (batch, grid, ..., grid, channels): `grid_cells` with the layout
    kept, what a `--pool grid2` cache stores. A head's `grid2` pooling gives the same cells from
    it as from the whole map, and its `avg` the mean of the cells: the whole map's average when
    every side is even or 1 (`averages_exactly`), else near it (odd sides' bins overlap)."""
    rank = len(features.shape)
    if rank <= 2:
        return features
    sides = tuple(features.shape)[1:-1]
    if module is ops and len(sides) <= 3 and all(side is not None and side % grid == 0 for side in sides):
        # Even bins are an average pooling of stride = size, a fused kernel, where `grid_cells`
        # gathers each cell apart: 0.5 against 1.4 ms for a batch of 32 16x16x256 maps.
        size = tuple(side // grid for side in sides)
        return ops.average_pool(features, size, size, "valid")
    return module.reshape(grid_cells(features, grid, module), (-1, *[grid] * (rank - 2), features.shape[-1]))


def grid_map_shape(shape, grid: int = 2) -> tuple:
    """One example's shape after `grid_map` of a (batch, ...) tensor of `shape`."""
    shape = tuple(shape)
    return shape[1:] if len(shape) <= 2 else (*[grid] * (len(shape) - 2), shape[-1])


def averages_exactly(shape, grid: int = 2) -> bool:
    """Whether the mean of `grid_map`'s cells is the average over every position of a (batch, ...)
    tensor of `shape`: its bins then split each side evenly."""
    return all(size is not None and (size == 1 or size % grid == 0) for size in tuple(shape)[1:-1])


def bins(size: int, grid: int) -> list:
    """[start, stop) of each of `grid` bins over `size` positions (they overlap when size < grid)."""
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]
