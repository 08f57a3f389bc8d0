"""How a run's raw examples reach the backbone's input: as images, or as arrays as they are.

The choice is made once per run (`transfer.data.input_kind.input_kind`, README "Non-image inputs"),
recorded in config.json, and then asked of this object by everything that touches raw
examples: the tf.data pipelines, the Keras model's first layer, the feature cache's key, the
exports, `evaluate` and `predict`. No other module branches on what the input is.

- `ImageInput`: pictures, resized to the backbone's size, channels matched, scaled (`Preprocessing`).
- `ArrayInput`: anything else (waveforms, spectrograms, token ids, vectors): cast to the input's
  dtype, nothing else. Shape and dtype are checked against the backbone's input up front.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transfer.datasets.preprocessing import Augmentation, Preprocessing, preprocess
from transfer.errors import TransferError
from transfer.graph.backbone import Backbone
from transfer.layers.model import PreprocessingLayer


class ImageInput:
    """Examples are images (H, W) or (H, W, C); the model takes float32 (H, W, C) batches."""

    images = True
    name = "images"
    dtype = tf.float32

    def __init__(self, preprocessing: Preprocessing, shape):
        self.preprocessing, self.shape = preprocessing, tuple(shape)  # None where sizes vary

    def check(self, shape, dtype, where: str) -> None:
        """Any size and channel count will be made to fit; only the rank and numbers are needed."""
        if len(shape) not in (2, 3) or not (dtype.is_floating or dtype.is_integer):
            raise TransferError(f"the run takes images (height, width[, channels]); {where} gives "
                                f"{dtype.name} examples of shape {_shape(shape)}")

    def batchable(self, dataset: tf.data.Dataset, augmentation: Augmentation | None) -> tf.data.Dataset:
        """Unbatched (image, label) pairs resized to the backbone's size (so they batch), float32."""
        with_channels = dataset.map(lambda x, y: (x if x.shape.rank == 3 else x[..., None], y))
        return preprocess(with_channels, Preprocessing(size=self.preprocessing.size), augmentation)

    def prepare(self, batch):
        """A batch of raw images as the backbone's input (what the model's first layer does)."""
        return self.preprocessing(tf.cast(batch, tf.float32))

    def layer(self) -> keras.layers.Layer:
        settings = self.preprocessing.to_dict()
        return PreprocessingLayer(settings["size"], settings["channels"], settings["dtype"], settings["scale"],
                                  name="preprocessing")

    def conform(self, array: np.ndarray, where: str) -> tf.Tensor:
        """One image or a batch (gray without a channel axis too) at the model's size."""
        array = array[..., None] if array.ndim in (2, 3) and array.shape[-1] not in (1, 3, 4) else array
        batch = tf.cast(array[None] if array.ndim == 3 else array, tf.float32)
        height, width, channels = self.shape
        to_model = Preprocessing(size=None if height is None else (height, width), channels=channels)
        return to_model.geometry(batch)

    def recipe(self) -> dict:
        """What of the input decides the features (a feature cache key ingredient)."""
        return self.preprocessing.to_dict()

    def to_config(self) -> dict:
        return {"input_kind": "images", "input_shape": list(self.shape), "preprocessing": self.preprocessing.to_dict()}


class ArrayInput:
    """Examples are arrays of the backbone input's own per-example shape; the model takes them as
    the backbone does (same shape, same dtype): the data are cast to that dtype, nothing else."""

    images = False
    name = "inputs"
    preprocessing = None

    def __init__(self, shape, dtype, input_name: str):
        self.shape, self.dtype, self.input_name = tuple(shape), tf.as_dtype(dtype), input_name

    @classmethod
    def of(cls, spec: tf.TensorSpec, example_shape) -> "ArrayInput":
        """The arrays that the backbone input `spec` (with its batch axis) takes; an input of
        unknown rank takes the data's `example_shape`."""
        if spec.shape.rank is None:
            return cls(example_shape, spec.dtype, spec.name)
        return cls(spec.shape.as_list()[1:] if spec.shape.rank else (), spec.dtype, spec.name)

    def check(self, shape, dtype, where: str) -> None:
        """One line naming the input, what it expects and what the data give, unless they fit."""
        shape, dtype = tuple(shape), tf.as_dtype(dtype)
        fits = len(shape) == len(self.shape) and all(want is None or want == got
                                                      for want, got in zip(self.shape, shape))
        if not (fits and _castable(dtype, self.dtype)):
            hint = "; add the channel axis (x[..., None])" if (*shape, 1) == self.shape else ""
            raise TransferError(f"input {self.input_name!r} expects {self.dtype.name} examples of shape "
                                f"{_shape(self.shape)}, got {dtype.name} {_shape(shape)} from {where}{hint}")

    def refuse(self, setting: str) -> None:
        """Image settings (scale presets, preprocessing files, augmentation) have no meaning here."""
        raise TransferError(f"{setting} applies to image inputs; input {self.input_name!r} takes {self.dtype.name} "
                            f"arrays of shape {_shape(self.shape)} as they are: drop it (scale the arrays "
                            "themselves if needed)")

    def batchable(self, dataset: tf.data.Dataset, augmentation=None) -> tf.data.Dataset:
        return dataset.map(lambda x, y: (tf.cast(x, self.dtype), y), tf.data.AUTOTUNE)

    def prepare(self, batch):
        return batch

    def layer(self) -> keras.layers.Layer:
        return keras.layers.Identity(name="preprocessing")

    def conform(self, array: np.ndarray, where: str) -> tf.Tensor:
        """One example or a batch, checked and cast to the input's dtype."""
        batch = array[None] if array.ndim == len(self.shape) else array
        self.check(batch.shape[1:], tf.as_dtype(batch.dtype), where)
        return tf.cast(batch, self.dtype)

    def recipe(self) -> dict:
        return {"input_kind": "arrays", "dtype": self.dtype.name}

    def to_config(self) -> dict:
        return {"input_kind": "arrays", "input_shape": list(self.shape), "input_dtype": self.dtype.name,
                "input_name": self.input_name, "preprocessing": None}


InputKind = ImageInput | ArrayInput


def from_config(config: dict) -> InputKind:
    """The input kind of a run's config.json (runs written before non-image inputs took images)."""
    if config.get("input_kind", "images") == "images":
        return ImageInput(Preprocessing.from_dict(config["preprocessing"]), config["input_shape"])
    return ArrayInput(config["input_shape"], config["input_dtype"], config["input_name"])


def _castable(got: tf.DType, want: tf.DType) -> bool:
    """Any number feeds a float input; only integers feed an integer input (floats would truncate)."""
    if got == want:
        return True
    if want.is_floating:
        return got.is_floating or got.is_integer
    return want.is_integer and got.is_integer


def _shape(shape) -> str:
    return "(" + ", ".join(str(size) for size in shape) + ("," if len(shape) == 1 else "") + ")"


# -- the decision ------------------------------------------------------------------------------


def input_kind(backbone: Backbone, splits, preprocessing=None, scale=None, where: str = "the data") -> InputKind:
    """Images or arrays, decided once (README "Non-image inputs").

    Images: the data are pictures (image files, a TFDS Image feature, digits), or the backbone
    takes images (rank 4 with 1 or 3 channels, float or uint8) and each example looks like one
    ((height, width) or (height, width, channels)); they are resized, channel-matched and scaled,
    so data of exactly the input's shape pass unchanged. Anything else passes as it is, after a
    check of its shape and dtype against the input's.
    """
    (spec,) = backbone.input_specs
    looks_like_image = len(splits.example_shape) == 2 or (
        len(splits.example_shape) == 3 and splits.example_shape[-1] in (1, 2, 3, 4))
    if splits.images or (takes_images(spec) and looks_like_image):
        prep = resolve_preprocessing(backbone, preprocessing, scale)
        kind = ImageInput(prep, model_input_shape(splits, prep))
    else:
        kind = ArrayInput.of(spec, splits.example_shape)
        if preprocessing is not None:
            kind.refuse("preprocessing settings (--preprocessing)")
        if scale not in (None, "none"):
            kind.refuse(f"--scale {scale!r}")
    try:
        kind.check(splits.example_shape, splits.example_dtype, where)
    except TransferError as error:
        hint = backbone.image_input_hint()  # a JPEG string, a scalar, a batch of 1: where to feed instead
        raise TransferError(f"{error}; {hint}" if hint else str(error)) from None
    return kind


def takes_images(spec: tf.TensorSpec) -> bool:
    """A batch of images: (batch, height, width, 1 or 3 channels), float or uint8 pixels."""
    return (spec.shape.rank == 4 and spec.shape[-1] in (1, 3, None)
            and (spec.dtype.is_floating or spec.dtype == tf.uint8))


def resolve_preprocessing(backbone: Backbone, preprocessing=None, scale: str | None = None) -> Preprocessing:
    """Explicit settings, else the JSON beside the backbone, else what the graph's input says."""
    if isinstance(preprocessing, (str, Path)):
        preprocessing = Preprocessing.from_json(preprocessing)
    elif isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if preprocessing is None and backbone.path.exists():
        preprocessing = Preprocessing.beside(backbone.path)
    if preprocessing is None:
        (spec,) = backbone.input_specs
        hint = backbone.image_input_hint()  # a JPEG string, a scalar, a batch of 1: where to feed instead
        if spec.shape.rank != 4 or hint:
            raise TransferError(f"fit needs a backbone that takes images (batch, height, width, channels); "
                                f"its input {spec.name!r} has shape {spec.shape}" + (f"; {hint}" if hint else ""))
        preprocessing = Preprocessing.for_input(spec.shape.as_list(), "uint8" if spec.dtype == tf.uint8 else "float32")
    if scale is not None:
        preprocessing = dataclasses.replace(preprocessing, scale=scale)
    return preprocessing


def model_input_shape(splits, prep: Preprocessing) -> tuple:
    """The data's image shape when it already has the backbone's size; else any size is accepted."""
    height, width, *channels = splits.example_shape
    channels = channels[0] if channels else 1  # gray (height, width) gets a channel axis
    if prep.size is None or (height, width) == tuple(prep.size):
        return (height, width, channels)
    return (None, None, channels)
