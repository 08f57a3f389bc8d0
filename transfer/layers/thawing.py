"""Partial thaw: the float constants of the last N weight layers before the cut(s) become trainable.

The graph is split at the thaw boundary (README "Partial thaw"). The frozen prefix (input -> the
tensors that enter the thawed region) is an ordinary pruned Backbone, run without gradient;
the thawed suffix is the GraphDef imported again with `input_map` replacing those boundary
tensors and every thawed weight constant by inputs of a wrapped function, pruned to the cut.
Keras weights, initialised from the constants' values, are passed in at call time, so
gradients reach exactly them. Batch-norm moving statistics stay constant unless asked.

Several cuts (a head that reads them all, `multilayer`): the layers before the cuts are those
any cut depends on, counted back from the deepest; a cut that no thawed layer reaches is
handed over by the frozen prefix as it is, so the layer returns every cut, as `FeatureLayer` does.
"""
from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from transfer import _compat
from transfer.errors import TransferError
from transfer.graph.backbone import Backbone
from transfer.graph.thaw_plan import build_suffix, layers_before, plan_thaw
from transfer.layers.feature_layer import FeatureLayer, feature_output_spec


@keras.saving.register_keras_serializable(package="transfer")
class ThawedFeatureLayer(FeatureLayer):
    """A FeatureLayer whose last `last` weight layers (or all from `from_scope`) are trainable."""

    def __init__(self, backbone, cut="auto", last=None, from_scope=None, batch_norm_statistics=False, **kwargs):
        super().__init__(backbone, cut=cut, **kwargs)
        self.trainable = True
        self._config.update({"last": last, "from_scope": from_scope, "batch_norm_statistics": batch_norm_statistics})
        self.thawed_weights, self._saved_values = [], None
        if not self.awaits_graph:  # a saved layer whose file is gone thaws once its graph is read back
            self._thaw()

    def _thaw(self) -> None:
        self.plan = plan_thaw(self.backbone, self._config["last"], self._config["from_scope"],
                              self._config["batch_norm_statistics"])
        self._prefix = self.backbone.recut([t.name for t in self.plan.boundary],
                                           inputs=[t.op.name for t in self.backbone.inputs])
        self._suffix = build_suffix(self.backbone, self.plan)
        self.thawed_weights = [self.add_weight(shape=tuple(w.shape), name=_weight_name(w),
                                       initializer=keras.initializers.Constant(_value(w)), trainable=True)
                       for w in self.plan.weights]

    def load_own_variables(self, store):
        if not self.awaits_graph:
            return super().load_own_variables(store)
        self._saved_values = [np.array(store[str(i)]) for i in range(len(store))]  # the weights come with the graph

    def load_assets(self, dir_path):
        if not self.awaits_graph:
            return
        super().load_assets(dir_path)
        with _compat.tracking_unlocked(self):  # Keras locks a built layer's state; these weights are its own, made late
            self._thaw()
        for weight, value in zip(self.thawed_weights, self._saved_values or []):
            weight.assign(value)

    def call(self, inputs):
        return self.from_boundary(self.prefix(inputs))

    def prefix(self, inputs) -> list:
        """The frozen part: images -> the tensors entering the thawed region (cacheable)."""
        handed = self._prefix(inputs)
        handed = [handed[t.name] for t in self.plan.boundary] if self._prefix.multi_cut else [handed]
        return [tf.stop_gradient(t) for t in handed]  # the frozen prefix needs no backward pass

    def from_boundary(self, boundary):
        """The thawed part: prefix outputs -> features, differentiable in the thawed weights; one
        tensor, or a dict keyed by cut with several, as `FeatureLayer` returns them."""
        return self.backbone.as_features(self._suffix(*boundary, *[tf.convert_to_tensor(w)
                                                                   for w in self.thawed_weights]))

    def restore_pretrained(self) -> None:
        """Set the thawed weights back to the graph's constants, all trainable (a sweep's next
        setting starts there, whatever schedule the last one ran)."""
        for weight, constant in zip(self.thawed_weights, self.plan.weights):
            weight.assign(_value(constant))
        self.set_trainable_layers(len(self.plan.layers))

    @property
    def prefix_backbone(self) -> Backbone:
        """The frozen prefix as a Backbone cut at the boundary: what a feature cache extracts."""
        unbatched = [t.name for t in self.plan.boundary if not t.dtype.is_floating or not t.shape.rank]
        if unbatched:
            raise TransferError(f"the thaw boundary includes {', '.join(unbatched)}, which is not a float tensor per "
                                "example, so the prefix cannot be cached: drop --cache-dir or thaw other layers")
        return self._prefix

    def recut(self, cuts) -> FeatureLayer:
        """This layer on some of its cuts, with the trained values of the thawed weights those cuts
        depend on; a plain FeatureLayer when no thawed layer reaches them. In graph order the
        thawed layers are the last ones, so those the kept cuts depend on are the last of theirs."""
        backbone = self.backbone.recut(cuts)
        thawed = {layer.scope for layer in self.plan.layers}
        count = sum(layer.scope in thawed for layer in layers_before(backbone.info, [c.tensor for c in backbone.cuts]))
        if not count:
            return FeatureLayer(backbone, name=self.name)
        layer = ThawedFeatureLayer(backbone, last=count, batch_norm_statistics=self._config["batch_norm_statistics"],
                                   name=self.name)
        trained = {constant.name: weight for constant, weight in zip(self.plan.weights, self.thawed_weights)}
        for constant, weight in zip(layer.plan.weights, layer.thawed_weights):
            weight.assign(trained[constant.name])
        return layer

    def suffix(self) -> "ThawedSuffix":
        return ThawedSuffix(self, name="thawed_suffix")

    @property
    def description(self) -> str:
        scopes = ", ".join(layer.scope for layer in self.plan.layers)
        params = sum(int(np.prod(w.shape)) for w in self.plan.weights)
        return f"thawed {len(self.plan.layers)} layer(s) ({scopes}): {len(self.plan.weights)} tensors, {params} weights"

    @property
    def weight_layer_indices(self) -> list[int]:
        """The layer index (1 = nearest the cut) of each of `thawed`: what unfreezing schedules count."""
        return [min(layer.index for layer in self.plan.layers if any(c.name == w.name for c in layer.constants))
                for w in self.plan.weights]

    def set_trainable_layers(self, count: int) -> None:
        """Let only the `count` thawed layers nearest the cut train (0: the head alone).

        A Keras model reads `trainable` when it traces its train step: retrace after a change
        (`model.make_train_function(force=True)`, what `transfer.GradualUnfreezing` does).
        """
        total = len(self.plan.layers)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= total:
            raise TransferError(f"cannot train {count!r} thawed layer(s): valid is 0 to {total}")
        for weight, index in zip(self.thawed_weights, self.weight_layer_indices):
            weight.trainable = index <= count

    @property
    def trainable_layer_count(self) -> int:
        """How many thawed layers, counted from the cut, train now."""
        indices = zip(self.thawed_weights, self.weight_layer_indices)
        return max((index for weight, index in indices if weight.trainable), default=0)


class ThawedSuffix(keras.layers.Layer):
    """The thawed part alone (prefix outputs -> features), sharing its weights with `whole`:
    a head and the thawed layers train from cached prefix outputs, the prefix never runs."""

    def __init__(self, whole: ThawedFeatureLayer, **kwargs):
        super().__init__(**kwargs)
        self.whole = whole  # the ThawedFeatureLayer this suffix is part of

    def build(self, input_shape):
        pass  # the weights are the thawed layer's, created with it

    def call(self, boundary):
        return self.whole.from_boundary(list(boundary) if isinstance(boundary, (list, tuple)) else [boundary])

    def compute_output_spec(self, boundary):
        first = boundary[0] if isinstance(boundary, (list, tuple)) else boundary
        return feature_output_spec(self.whole.backbone, first.shape[0])


def _value(constant: tf.Tensor) -> np.ndarray:
    return tf.make_ndarray(constant.op.get_attr("value"))


def _weight_name(constant: tf.Tensor) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", constant.op.name)[-60:]


def thaw(backbone, last=None, from_scope=None, cut="auto", batch_norm_statistics=False, **kwargs) -> ThawedFeatureLayer:
    """`backbone` (path or Backbone) as a Keras layer with its last `last` weight layers trainable."""
    return ThawedFeatureLayer(backbone, cut=cut, last=last, from_scope=from_scope,
                              batch_norm_statistics=batch_norm_statistics, **kwargs)
