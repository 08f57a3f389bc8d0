"""Which weight layers a partial thaw makes trainable, and the graph of its thawed suffix.

What counts as a weight layer (a weight-consuming op with the float constants that feed it,
grouped by name scope), the last N of them before the cut(s) (`layers_before`,
`choose_layers`), the boundary where the frozen prefix hands over (`plan_thaw`), and the
suffix as a pruned function whose inputs are the boundary tensors and the thawed constants
(`build_suffix`). Graph analysis only: the Keras layer that trains them is
`transfer.layers.thawing.ThawedFeatureLayer`; `inspect --layers` shows `describe_layers`.
"""
from __future__ import annotations

import dataclasses
import difflib
import re

import tensorflow as tf

from transfer import _compat
from transfer.errors import TransferError
from transfer.graph.analysis import NORM_OPS, GraphInfo, format_shape
from transfer.graph.backbone import Backbone


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
    path = _thawed_region(info, cuts, [w.op for w in weights])
    for op in sorted((info.by_name[n] for n in path), key=lambda op: info.position[op.name]):
        if (op.type in _CALLS or _compat.is_library_function(info.graph, op.type)
                or not any(t.dtype.is_floating for t in op.outputs)):
            continue
        try:
            _compat.gradient_function(op)
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
