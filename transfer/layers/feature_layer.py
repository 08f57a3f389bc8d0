"""`FeatureLayer`: a frozen graph, cut at a tensor, as a non-trainable Keras layer.

Unlike `keras.layers.TFSMLayer`, it cuts anywhere, reads `.pb` files too, and comes back from
a `.keras` file in safe mode: its config names the backbone file and a content fingerprint,
and the graph's ops were checked (`transfer.graph.safety`) before anything runs. A `.keras` file
also embeds the graph (Keras assets), so the model loads where the backbone file is gone.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import keras
import tensorflow as tf

from transfer import _compat
from transfer.graph.backbone import Backbone, check_shape, input_names, order_inputs
from transfer.errors import TransferError, TransferWarning
from transfer.graph.loading import MissingBackbone, describe_loaded, fingerprint_bytes, load_embedded
from transfer.graph.spec import BackboneSpec

EMBEDDED_GRAPH, EMBEDDED_DESCRIPTION = "backbone.pb", "backbone.json"


class BackboneChanged(TransferError):
    """The backbone file's content is not what the layer was saved with."""


@keras.saving.register_keras_serializable(package="transfer")
class FeatureLayer(keras.layers.Layer):
    """Features of `backbone` (a path, `example:NAME`, or a loaded `Backbone`) at `cut`.

    Returns one tensor, or a dict keyed by cut when `cut` names several (`"a,b"`).
    `fingerprint`, when given (a saved layer's config does), must match the file's content.
    `max_memory`: as for `Backbone.load` (kept in the config, so a saved layer loads with it).
    """

    def __init__(self, backbone, cut="auto", inputs=None, signature=None, fingerprint=None,
                 allow_ops=(), feeds=None, max_memory=None, **kwargs):
        kwargs.pop("trainable", None)  # a frozen graph has nothing to train; thaw is separate
        embedded = kwargs.pop("embedded", None)  # a saved layer's specs: enough until its graph is read back
        super().__init__(trainable=False, **kwargs)
        if not isinstance(backbone, Backbone):
            spec = BackboneSpec(backbone, cut=cut, signature=signature, inputs=inputs, feeds=feeds,
                                allow_ops=allow_ops, max_memory=max_memory)
            backbone = _open_backbone(spec, fingerprint, embedded)
        self._backbone = backbone
        if fingerprint is not None and fingerprint != backbone.fingerprint:
            raise BackboneChanged(
                f"backbone {backbone.loaded.source} changed since this layer was saved: fingerprint "
                f"{backbone.fingerprint[:12]} != saved {fingerprint[:12]}; restore the original "
                "file or rebuild the layer on the new one")
        self._config = {  # derived from the backbone, so a passed-in Backbone is described right
            # A shipped example is named as such so the config survives reinstalling the package.
            "backbone": backbone.loaded.source,
            "cut": ",".join(c.spec for c in backbone.cuts),
            "inputs": None if backbone.requested_inputs is None else ",".join(backbone.requested_inputs),
            "signature": backbone.loaded.signature,
            "fingerprint": backbone.fingerprint,
            "allow_ops": list(backbone.allow_ops),
            "feeds": backbone.feed_values,
            "max_memory": backbone.max_memory,
        }

    @property
    def backbone(self) -> Backbone:
        return self._backbone

    @property
    def awaits_graph(self) -> bool:
        """True between loading a saved layer whose backbone file is gone and reading its
        embedded graph back (Keras does that right after the model is rebuilt)."""
        return isinstance(self._backbone, _AwaitedBackbone)

    def call(self, inputs):
        return self._backbone(inputs)

    def recut(self, cuts) -> "FeatureLayer":
        """This layer on other cuts of its graph (those a head kept: `training.keep_selected_cuts`)."""
        return FeatureLayer(self._backbone.recut(cuts), name=self.name)

    def compute_output_spec(self, inputs):
        self._backbone.check_input_shapes(inputs)
        return feature_output_spec(self._backbone, _batch_size(inputs))

    # -- the graph inside the .keras file ----------------------------------------------------

    def save_assets(self, dir_path):
        """Keras calls this when saving a `.keras` file: the frozen GraphDef goes in with it."""
        data = self._backbone.loaded.graph_def.SerializeToString()
        (Path(dir_path) / EMBEDDED_GRAPH).write_bytes(data)
        description = {**describe_loaded(self._backbone.loaded), "sha256": fingerprint_bytes(data)}
        (Path(dir_path) / EMBEDDED_DESCRIPTION).write_text(json.dumps(description))

    def load_assets(self, dir_path):
        """Keras calls this after rebuilding a loaded model: read the embedded graph if the layer
        is waiting for it. It is checked like a file (`transfer.graph.safety`) before anything runs."""
        if not self.awaits_graph:
            return
        graph, description = Path(dir_path) / EMBEDDED_GRAPH, Path(dir_path) / EMBEDDED_DESCRIPTION
        if not graph.is_file() or not description.is_file():
            raise TransferError(f"backbone {self._config['backbone']} does not exist and the model file embeds "
                                "no graph (saved by an older transfer); restore the backbone file")
        described = json.loads(description.read_text())
        loaded = load_embedded(graph.read_bytes(), described, described.get("sha256"))
        awaited = self._backbone
        backbone = awaited.spec.load(loaded)
        if backbone.fingerprint != awaited.fingerprint or backbone.feature_specs.keys() != awaited.feature_specs.keys():
            raise TransferError(f"the graph embedded for backbone {self._config['backbone']} does not match the "
                                "layer's config; the model file is inconsistent")
        self._backbone = backbone

    def compute_output_shape(self, input_shape):
        spec = self.compute_output_spec(keras.KerasTensor(input_shape))
        return {k: v.shape for k, v in spec.items()} if isinstance(spec, dict) else spec.shape

    def get_config(self):
        return {**super().get_config(), **self._config, "embedded": _specs_of(self._backbone)}

    @classmethod
    def from_config(cls, config, safe_mode=None):
        if config.get("allow_ops") and _in_safe_mode(safe_mode):
            raise TransferError(
                f"this FeatureLayer runs ops that safe mode refuses ({', '.join(config['allow_ops'])}); "
                "load with keras.models.load_model(..., safe_mode=False) if you trust the graph")
        return cls(**config)


def _open_backbone(spec: BackboneSpec, fingerprint, embedded):
    """The backbone file, or (a saved layer whose file is gone or changed) a stand-in that
    carries its specs until `load_assets` reads the graph the `.keras` file embeds."""
    try:
        backbone = spec.load()
    except MissingBackbone:
        if embedded is None:
            raise
        return _AwaitedBackbone(spec, fingerprint, embedded)
    if embedded is not None and fingerprint is not None and fingerprint != backbone.fingerprint:
        warnings.warn(f"backbone {spec.path} changed since this layer was saved; using the graph the model file "
                      "embeds", TransferWarning, stacklevel=2)
        return _AwaitedBackbone(spec, fingerprint, embedded)
    return backbone


def feature_output_spec(backbone, batch):
    """What a layer returning `backbone`'s features gives for a batch: one KerasTensor, or a dict
    keyed by cut spec (in cut order) when several cuts."""
    specs = {key: keras.KerasTensor((batch, *spec.shape[1:]) if spec.shape.rank else spec.shape, dtype=spec.dtype.name)
             for key, spec in backbone.feature_specs.items()}
    return specs if backbone.multi_cut else next(iter(specs.values()))


def _specs_of(backbone) -> dict:
    as_list = lambda spec: {"shape": spec.shape.as_list() if spec.shape.rank is not None else None,  # noqa: E731
                            "dtype": spec.dtype.name, "name": spec.name}
    return {"inputs": [as_list(s) for s in backbone.input_specs],
            "features": {key: as_list(s) for key, s in backbone.feature_specs.items()}}


class _AwaitedBackbone:
    """What a saved FeatureLayer knows of its backbone before its embedded graph is read: the
    names, input and feature specs that rebuilding the Keras model needs. It runs nothing."""

    def __init__(self, spec: BackboneSpec, fingerprint, embedded: dict):
        tensor = lambda s: tf.TensorSpec(s["shape"], s["dtype"], name=s["name"])  # noqa: E731
        self.spec = spec  # what `load_assets` cuts the embedded graph with
        self.input_specs = [tensor(s) for s in embedded["inputs"]]
        self.feature_specs = {key: tensor(s) for key, s in embedded["features"].items()}
        self.cuts = [SimpleNamespace(spec=key) for key in self.feature_specs]
        self.multi_cut = len(self.cuts) > 1
        self.fingerprint, self.allow_ops, self.max_memory = fingerprint, spec.allow_ops, spec.max_memory
        self.requested_inputs = None if spec.inputs is None else input_names(spec.inputs)
        self.feed_values = dict(spec.feeds or {})
        self.loaded = SimpleNamespace(source=spec.path, signature=spec.signature)

    def check_input_shapes(self, inputs) -> None:
        for spec, value in zip(self.input_specs, order_inputs(inputs, [s.name for s in self.input_specs])):
            check_shape(spec.name, spec.shape, tf.TensorShape(value.shape))

    def __call__(self, inputs):
        raise TransferError(f"backbone {self.loaded.source} is not loaded: its file is gone and the graph "
                            "embedded in the model file was not read (load the model with keras.models.load_model)")


def _batch_size(inputs):
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else (
        inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
    return first.shape[0] if first.shape else None


def _in_safe_mode(safe_mode) -> bool:
    if safe_mode is not None:
        return bool(safe_mode)
    return _compat.keras_safe_mode() is not False
