"""Partial thaw: the float constants of the last N weight layers before the cut(s) become trainable.

DESIGN's technique: the graph is split at the thaw boundary. The frozen prefix (input -> the
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

import dataclasses
import difflib
import re

import keras
import numpy as np
import tensorflow as tf

from transfer.graph.backbone import Backbone
from transfer.errors import TransferError
from transfer.graph.analysis import NORM_OPS, GraphInfo, format_shape
from transfer.layers.feature_layer import FeatureLayer, feature_output_spec


@dataclasses.dataclass
class WeightLayer:
    """A weight layer of the graph, as `inspect --layers` shows it."""

    index: int  # 1 = the last weight layer before the cut (the deepest, in graph order, before several)
    scope: str
    ops: list  # weight-consuming tf.Operations
    constants: list  # float Const outputs that feed its weights (statistics included)
    statistics: list  # of those, batch-norm moving means and variances

    def is_statistic(self, constant: tf.Tensor) -> bool:
        return constant.name in {s.name for s in self.statistics}  # names: `in` on tensors compares values

    @property
    def parameters(self) -> int:
        return int(sum(c.shape.num_elements() or 0 for c in self.constants))


def layers_before(info: GraphInfo, cuts: list[tf.Tensor]) -> list[WeightLayer]:
    """The weight layers any of the cuts depends on, numbered backwards in graph order."""
    needed = {op.name for op in info.ancestors([cut.op for cut in cuts])}
    found = [(scope, ops) for scope, ops in info.weight_layers if any(op.name in needed for op in ops)]
    layers = []
    for index, (scope, ops) in enumerate(reversed(found), start=1):
        constants = _dedupe(c for op in ops for t in info.weight_inputs(op) for c in _constant_sources(t))
        statistics = _statistics(info, ops)
        layers.append(WeightLayer(index, scope, ops, constants, [c for c in constants if c.name in statistics]))
    return layers


def _constant_sources(tensor: tf.Tensor) -> list[tf.Tensor]:
    """The float, non-scalar Const outputs a constant tensor is computed from."""
    found, stack, seen = [], [tensor.op], set()
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type == "Const":
            output = op.outputs[0]
            if output.dtype.is_floating and output.shape.rank:
                found.append(output)
        else:
            stack.extend(t.op for t in op.inputs)
    return found


def _statistics(info: GraphInfo, ops) -> set[str]:
    """Names of the moving mean/variance constants of a batch-norm layer.

    TF1 graphs: inputs 3 and 4 of FusedBatchNorm*. Keras 3 graphs decompose batch norm as
    x * (rsqrt(var + eps) * gamma) + (beta - mean * rsqrt(var + eps) * gamma): the variance is
    what feeds the Rsqrt, the mean what is multiplied and then subtracted from beta.
    """
    names = set()
    for op in ops:
        if op.type in NORM_OPS:
            names |= {c.name for t in op.inputs[3:5] for c in _constant_sources(t)}
        for tensor in op.inputs:
            if not info.is_constant(tensor):
                continue
            for inner in info.ancestors([tensor.op]):
                if inner.type == "Rsqrt":
                    names |= {c.name for c in _constant_sources(inner.inputs[0])}
                if inner.type == "Sub" and len(inner.inputs) == 2 and inner.inputs[1].op.type == "Mul":
                    for factor in inner.inputs[1].op.inputs:  # mean * (rsqrt(...) * gamma): not the rsqrt side
                        if not any(a.type == "Rsqrt" for a in info.ancestors([factor.op])):
                            names |= {c.name for c in _constant_sources(factor)}
    return names


def _dedupe(tensors) -> list:
    return list({t.name: t for t in tensors}.values())


def choose_layers(layers: list[WeightLayer], last: int | None = None,
                  from_scope: str | None = None, before: str = "the cut") -> list[WeightLayer]:
    """The last `last` layers, or every layer from the one whose scope matches `from_scope`.
    `before`: what the layers come before, as errors name it."""
    if not layers:
        raise TransferError(f"the graph has no weight layers before {before}: nothing to thaw")
    if (last is None) == (from_scope is None):
        raise TransferError("thaw needs exactly one of last=N (--thaw N) or from_scope (--thaw-from SCOPE)")
    if last is not None:
        if not isinstance(last, int) or last < 1 or last > len(layers):
            raise TransferError(f"cannot thaw {last} layer(s): there are {len(layers)} weight layers before {before} "
                                f"(valid: 1 to {len(layers)}; `transfer inspect --layers` lists them)")
        return layers[:last]
    matches = [layer for layer in layers if layer.scope == from_scope or layer.scope.endswith("/" + from_scope)
               or re.sub(r"_\d+$", "", layer.scope.rpartition("/")[2]) == from_scope]
    if not matches:
        close = difflib.get_close_matches(from_scope, [layer.scope for layer in layers], n=3, cutoff=0.3)
        raise TransferError(f"no weight layer before {before} has scope {from_scope!r}; closest: "
                            f"{', '.join(close) or 'none'} (`transfer inspect --layers` lists them)")
    return layers[:max(layer.index for layer in matches)]


@dataclasses.dataclass
class ThawPlan:
    layers: list[WeightLayer]
    weights: list[tf.Tensor]  # Const outputs that become trainable weights
    boundary: list[tf.Tensor]  # what the frozen prefix hands to the thawed suffix (cuts it computes included)


def plan_thaw(backbone: Backbone, last=None, from_scope=None, batch_norm_statistics: bool = False) -> ThawPlan:
    info, cuts = backbone.info, [c.tensor for c in backbone.cuts]
    before = "the cut" if len(cuts) == 1 else f"the cuts ({', '.join(c.spec for c in backbone.cuts)})"
    chosen = choose_layers(layers_before(info, cuts), last, from_scope, before)
    weights = _dedupe(c for layer in chosen for c in layer.constants
                      if batch_norm_statistics or not layer.is_statistic(c))
    region = _thawed_region(info, cuts, [op for layer in chosen for op in layer.ops])
    check_differentiable(info, cuts, weights)
    entering = [t for name in region for t in info.by_name[name].inputs
                if t.op.name not in region and not info.is_constant(t)]
    frozen_cuts = [cut for cut in cuts if cut.op.name not in region]  # no thawed layer reaches them: the prefix's
    boundary = _dedupe([*entering, *frozen_cuts])
    return ThawPlan(chosen, weights, sorted(boundary, key=lambda t: info.position[t.op.name]))


def _thawed_region(info: GraphInfo, cuts: list[tf.Tensor], weight_ops) -> set[str]:
    """Input-dependent ops downstream of a thawed weight op and upstream of a cut."""
    upstream = {op.name for op in info.ancestors([cut.op for cut in cuts])}
    region, stack = set(), [op.name for op in weight_ops]
    while stack:
        name = stack.pop()
        if name in region or name not in upstream:
            continue
        region.add(name)
        stack.extend(user.name for user in info.consumers.get(name, []))
    return region


_CALLS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})  # TF differentiates function bodies


def check_differentiable(info: GraphInfo, cuts: list[tf.Tensor], weights: list[tf.Tensor]) -> None:
    """Raise, before any training, if an op that gradients must pass from the thawed weights to
    a cut has no gradient in TensorFlow (training would stop with a LookupError mid-epoch)."""
    from tensorflow.python.framework import ops as tf_ops

    path = _thawed_region(info, cuts, [w.op for w in weights])
    for op in sorted((info.by_name[n] for n in path), key=lambda op: info.position[op.name]):
        if op.type in _CALLS or info.graph._is_function(op.type) or not any(t.dtype.is_floating for t in op.outputs):
            continue
        try:
            tf_ops.get_gradient_function(op)
        except LookupError:
            raise TransferError(
                f"cannot thaw through op {op.name!r} ({op.type}): TensorFlow has no gradient for it and it lies "
                "between the thawed layers and a cut; thaw only the layers after it, or cut before it") from None


def build_suffix(backbone: Backbone, plan: ThawPlan):
    """boundary tensors + weights -> every cut (a list), as a pruned function that gradients pass
    through. A cut that is itself a boundary tensor comes back as that input: `import_graph_def`
    returns the mapped tensor for a name in `input_map`."""
    names = [t.name for t in plan.boundary] + [w.name for w in plan.weights]
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in plan.boundary] + [tf.TensorSpec(w.shape, w.dtype)
                                                                        for w in plan.weights]
    cuts = [c.name for c in backbone.cuts]
    graph_def = backbone.graph_def  # as fed (`transfer.graph.feeding`): placeholders given constants are Consts

    def body(*tensors):
        return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(names, tensors)),
                                              return_elements=cuts, name="")

    wrapped = tf.compat.v1.wrap_function(body, specs)
    return wrapped.prune(feeds=wrapped.inputs, fetches=wrapped.outputs)


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
        self._tracker.unlock()  # Keras locks a built layer's state; these weights are its own, made late
        try:
            self._thaw()
        finally:
            self._tracker.lock()
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


def describe_layers(backbone: Backbone) -> list[dict]:
    """`transfer inspect --layers`: what counts as a layer, numbered backwards from the cut (from
    the deepest of several cuts: what --thaw N counts)."""
    rows = []
    for layer in layers_before(backbone.info, [c.tensor for c in backbone.cuts]):
        rows.append({"index": layer.index, "scope": layer.scope, "ops": [op.type for op in layer.ops],
                     "weights": [format_shape(c.shape) for c in layer.constants if not layer.is_statistic(c)],
                     "statistics": [format_shape(c.shape) for c in layer.statistics],
                     "parameters": layer.parameters})
    return rows
