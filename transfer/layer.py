"""`FeatureLayer`: a frozen graph, cut at a tensor, as a non-trainable Keras layer.

Unlike `keras.layers.TFSMLayer`, it cuts anywhere, reads `.pb` files too, and comes back from
a `.keras` file in safe mode: its config names the backbone file and a content fingerprint,
and the graph's ops were checked (`transfer.safety`) before anything runs.
"""
from __future__ import annotations

import keras

from transfer.backbone import Backbone
from transfer.errors import TransferError


@keras.saving.register_keras_serializable(package="transfer")
class FeatureLayer(keras.layers.Layer):
    """Features of `backbone` (a path, `example:NAME`, or a loaded `Backbone`) at `cut`.

    Returns one tensor, or a dict keyed by cut when `cut` names several (`"a,b"`).
    `fingerprint`, when given (a saved layer's config does), must match the file's content.
    """

    def __init__(self, backbone, cut="auto", inputs=None, signature=None, fingerprint=None,
                 allow_ops=(), feeds=None, **kwargs):
        kwargs.pop("trainable", None)  # a frozen graph has nothing to train; thaw is separate
        super().__init__(trainable=False, **kwargs)
        if not isinstance(backbone, Backbone):
            backbone = Backbone.load(backbone, cut=cut, inputs=inputs, signature=signature, allow_ops=allow_ops,
                                     feeds=feeds)
        self._backbone = backbone
        source = backbone.loaded.source
        if fingerprint is not None and fingerprint != self._backbone.fingerprint:
            raise TransferError(
                f"backbone {source} changed since this layer was saved: fingerprint "
                f"{self._backbone.fingerprint[:12]} != saved {fingerprint[:12]}; restore the original "
                "file or rebuild the layer on the new one")
        specs = [c.spec for c in backbone.cuts]
        self._config = {  # derived from the backbone, so a passed-in Backbone is described right
            # A shipped example is named as such so the config survives reinstalling the package.
            "backbone": source,
            "cut": ",".join(specs),
            "inputs": None if backbone.requested_inputs is None else ",".join(backbone.requested_inputs),
            "signature": backbone.loaded.signature,
            "fingerprint": backbone.fingerprint,
            "allow_ops": list(backbone.allow_ops),
            "feeds": backbone.feed_values,
        }

    @property
    def backbone(self) -> Backbone:
        return self._backbone

    def call(self, inputs):
        return self._backbone(inputs)

    def compute_output_spec(self, inputs):
        self._backbone.check_input_shapes(inputs)
        batch = _batch_size(inputs)
        specs = {
            key: keras.KerasTensor((batch, *spec.shape[1:]) if spec.shape.rank else spec.shape,
                                   dtype=spec.dtype.name)
            for key, spec in self._backbone.feature_specs.items()
        }
        return specs if self._backbone.multi_cut else next(iter(specs.values()))

    def compute_output_shape(self, input_shape):
        spec = self.compute_output_spec(keras.KerasTensor(input_shape))
        return {k: v.shape for k, v in spec.items()} if isinstance(spec, dict) else spec.shape

    def get_config(self):
        return {**super().get_config(), **self._config}

    @classmethod
    def from_config(cls, config, safe_mode=None):
        if config.get("allow_ops") and _in_safe_mode(safe_mode):
            raise TransferError(
                f"this FeatureLayer runs ops that safe mode refuses ({', '.join(config['allow_ops'])}); "
                "load with keras.models.load_model(..., safe_mode=False) if you trust the graph")
        return cls(**config)


def _batch_size(inputs):
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else (
        inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
    return first.shape[0] if first.shape else None


def _in_safe_mode(safe_mode) -> bool:
    if safe_mode is not None:
        return bool(safe_mode)
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode() is not False
