"""What `inspect` says about a candidate cut, after timm's `feature_info`: channels and stride.

The stride is how many input positions one feature position spans along the input's first
spatial axis (height; time for a sequence). It is measured, not read from op attributes: the
graph is imported twice more with that axis set to two large probe sizes (shape inference only,
nothing runs), and stride = Δ input size / Δ feature size. This works when the input's size is
unknown (`(None, None, None, 3)`), is independent of padding (`VALID` convolutions shrink 16 to 14
without striding), and gives no stride where the feature does not follow the input's size
(after global pooling). Where the graph first resizes its input to a fixed size (detection
preprocessing), the features do not follow the input's size either: their stride is counted
from that fixed size instead. When the probe import fails (a constant reshape that only fits
the original size), a known input size is divided by the feature's size instead.

The same kind of probe, with the batch size fixed, finds the tensors whose first axis looks
like the batch (unknown) but is not: a `tensordot` (a Keras `Dense` on a sequence) multiplies
a (batch × time, channels) reshape. They are no candidates.
"""
from __future__ import annotations

import fractions

import tensorflow as tf

from transfer.graph.analysis import GraphInfo, subgraph

PROBE_SIZES = (256, 512)
_SPATIAL_AXES = {3: (1,), 4: (1, 2)}  # sequences (batch, time, channels) and NHWC images
BATCH_PROBE = 3  # a first axis that is not 3 when the batch is, is no batch axis
_LIGHT_BYTES = 1024  # constants larger than this lose their bytes in the probe graphs
_RESIZE_OPS = frozenset({"ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea"})


def feature_info(graph_def, info: GraphInfo, tensors: list[tf.Tensor]) -> dict[str, dict]:
    """{tensor name: {"channels": int | None, "stride": int | float | None}} for `tensors`."""
    source = spatial_input(info)
    strides = _probed_strides(graph_def, source, tensors) if source is not None else {}
    if strides is None:
        strides = {t.name: _size_ratio(source, t) for t in tensors}
    return {t.name: {"channels": channels(t), "stride": strides.get(t.name)} for t in tensors}


def batch_mixed(graph_def, info: GraphInfo, tensors: list[tf.Tensor]) -> frozenset[str]:
    """Names of `tensors` whose unknown first axis is not the batch axis (see the module doc);
    empty when the graph's batch size is fixed or the probe import fails."""
    open_batch = [op.name for op in info.placeholders if op.outputs[0].shape.rank and op.outputs[0].shape[0] is None]
    unknown = [t for t in tensors if t.shape.rank and t.shape[0] is None]
    if not open_batch or not unknown:
        return frozenset()
    graph = _import_probe(_light_subgraph(graph_def, unknown), {name: {0: BATCH_PROBE} for name in open_batch})
    if graph is None:
        return frozenset()
    return frozenset(t.name for t in unknown if graph.get_tensor_by_name(t.name).shape[0] not in (None, BATCH_PROBE))


def channels(tensor: tf.Tensor) -> int | None:
    """The last axis of a tensor with a batch and at least one more axis (channels-last)."""
    shape = tensor.shape
    return shape[-1] if shape.rank is not None and shape.rank >= 2 else None


def spatial_input(info: GraphInfo) -> tf.Tensor | None:
    """The first placeholder shaped like a sequence or an image batch: what strides count in."""
    return next((op.outputs[0] for op in info.placeholders if op.outputs[0].shape.rank in _SPATIAL_AXES), None)


def _size_ratio(source: tf.Tensor, tensor: tf.Tensor) -> int | None:
    if tensor.shape.rank != source.shape.rank:
        return None
    size, feature = source.shape[1], tensor.shape[1]
    return size // feature if size and feature else None


def _probed_strides(graph_def, source: tf.Tensor, tensors: list[tf.Tensor]) -> dict | None:
    """Stride per tensor of the input's rank, from two imports at the probe sizes; None if either fails."""
    spatial = [t for t in tensors if t.shape.rank == source.shape.rank]
    if not spatial:
        return {}
    subgraph = _light_subgraph(graph_def, spatial)
    probes = [_probe_sizes(subgraph, source, probe, spatial) for probe in PROBE_SIZES]
    if None in probes:
        return None
    (sizes, resized), (sizes_2, resized_2) = probes
    fixed = next((a for a, b in zip(resized, resized_2) if a is not None and a == b), None)
    strides = {}
    for tensor in spatial:
        first, second = sizes[tensor.name], sizes_2[tensor.name]
        if first is not None and second is not None and second != first:
            strides[tensor.name] = _number(fractions.Fraction(PROBE_SIZES[1] - PROBE_SIZES[0], second - first))
        elif fixed is not None and first is not None and first == second:
            strides[tensor.name] = _number(fractions.Fraction(fixed, first))
    return strides


def _number(stride: fractions.Fraction) -> int | float:
    return int(stride) if stride.denominator == 1 else round(float(stride), 3)


def _probe_sizes(subgraph, source: tf.Tensor, probe: int, tensors: list[tf.Tensor]) -> tuple | None:
    """Each tensor's size along axis 1 when the input's spatial axes are `probe` long, and the
    heights the graph's resize ops produce then (in graph order)."""
    graph = _import_probe(subgraph, {source.op.name: {axis: probe for axis in _SPATIAL_AXES[source.shape.rank]}})
    if graph is None:
        return None
    resized = [op.outputs[0].shape[1] for op in graph.get_operations()
               if op.type in _RESIZE_OPS and op.outputs[0].shape.rank == 4]
    return {t.name: graph.get_tensor_by_name(t.name).shape[1] for t in tensors}, resized


def _import_probe(subgraph, sizes: dict[str, dict[int, int]]) -> tf.Graph | None:
    """`subgraph` imported with placeholder axes set to sizes ({placeholder: {axis: size}});
    None if shape inference refuses. `subgraph` is changed in place."""
    for node in subgraph.node:
        for axis, size in sizes.get(node.name, {}).items():
            node.attr["shape"].shape.dim[axis].size = size
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(subgraph, name="")
    except (ValueError, TypeError, tf.errors.OpError):
        return None
    return graph


def _light_subgraph(graph_def, tensors: list[tf.Tensor]):
    """What `tensors` need, light for shape inference: weights' bytes go (a float constant's
    shape is in its proto; only integer constants, shapes and axes, are read for their values),
    and recorded `_output_shapes`, which would contradict the probe sizes, too."""
    light = subgraph(graph_def, sorted({t.op.name for t in tensors}))
    for node in light.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
        if node.op == "Const" and tf.dtypes.as_dtype(node.attr["dtype"].type).is_floating:
            value = node.attr["value"].tensor
            if len(value.tensor_content) > _LIGHT_BYTES:
                value.ClearField("tensor_content")
    return light
