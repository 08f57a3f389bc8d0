"""Assemble raw inputs -> preprocessing -> FeatureLayer -> head into one Keras model.

Preprocessing lives inside the model so that what is saved and exported takes raw images (or,
for non-image inputs, the arrays the backbone takes, through an identity layer): the exported
SavedModel and frozen `.pb` need no separate preprocessing step.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from transfer.datasets.preprocessing import Preprocessing
from transfer.layers.feature_layer import FeatureLayer


@keras.saving.register_keras_serializable(package="transfer")
class PreprocessingLayer(keras.layers.Layer):
    """`transfer.datasets.Preprocessing` as a layer (resize, channels, range, dtype)."""

    def __init__(self, size=None, channels=None, dtype_out="float32", scale="none", **kwargs):
        super().__init__(trainable=False, **{k: v for k, v in kwargs.items() if k != "trainable"})
        self.preprocessing = Preprocessing(size=None if size is None else tuple(size), channels=channels,
                                           dtype=dtype_out, scale=scale)

    def call(self, images):
        return self.preprocessing(images)

    def compute_output_spec(self, images):
        height, width = self.preprocessing.size or images.shape[1:3]
        channels = self.preprocessing.channels or images.shape[-1]
        return keras.KerasTensor((images.shape[0], height, width, channels), dtype=self.preprocessing.dtype)

    def get_config(self):
        settings = self.preprocessing.to_dict()
        return {**super().get_config(), "size": settings["size"], "channels": settings["channels"],
                "dtype_out": settings["dtype"], "scale": settings["scale"]}


def build_classifier(features: FeatureLayer, head, kind, name: str = "transfer_classifier") -> keras.Model:
    """Raw examples as `kind` (`transfer.data.input_kind`) describes them -> head output."""
    raw = keras.Input(kind.shape, dtype=kind.dtype.name, name=kind.name)
    return keras.Model(raw, head(_as_head_input(features(kind.layer()(raw)))), name=name)


def _as_head_input(features):
    """Several cuts (a dict by cut) as a head of several inputs takes them: a list in cut order."""
    return list(features.values()) if isinstance(features, dict) else features


def raw_input_spec(model: keras.Model) -> tf.TensorSpec:
    """What a model made by `build_classifier` takes: what its exports take, under the same name."""
    raw = model.inputs[0]
    return tf.TensorSpec(raw.shape, raw.dtype, name=model.layers[0].name)


def head_model(feature_shapes, head, suffix=None) -> keras.Model:
    """Cached features -> head: what trains when the backbone does not run. With `suffix` (a
    thaw), the inputs are the frozen prefix's outputs and the thawed suffix runs before the head."""
    inputs = [keras.Input(tuple(shape)) for shape in feature_shapes]
    given = inputs if len(inputs) > 1 else inputs[0]
    return keras.Model(given, head(given if suffix is None else _as_head_input(suffix(given))))


def model_parts(model: keras.Model):
    """(preprocessing, feature layer, head) of a model made by `build_classifier`."""
    _, preprocessing, features, head = model.layers
    return preprocessing, features, head
