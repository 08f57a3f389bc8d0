"""Where a graph is fed: its GraphDef rewritten before import so that it is fed where the user says.

A tensor fed as an input (`--inputs Mul`) becomes a Placeholder of its dtype whose batch
dimension is open, so that shape inference runs again after it when the graph is imported (a
static batch of 1 in the file does not stick). A placeholder given a constant (`--feed
keep_prob=1.0`) becomes a Const. Whatever only fed the replaced ops (a JPEG decoder before
`Mul`) is dropped, so it is neither run, nor checked, nor taken for an output.
"""
from __future__ import annotations

import dataclasses
import difflib
import json

import numpy as np
import tensorflow as tf

from transfer.errors import TransferError
from transfer.graph.analysis import GraphInfo, format_shape, import_graph_def, subgraph

FEEDABLE = ("Placeholder", "PlaceholderWithDefault")


@dataclasses.dataclass
class FedGraph:
    """A backbone's graph as imported: the file's GraphDef, rewritten where it is fed."""

    graph_def: tf.compat.v1.GraphDef
    info: GraphInfo
    wrapped: object  # the wrapped function `prune` cuts
    feeds: dict  # placeholder name -> the constant it was replaced by (np.ndarray)


def feed_graph(graph_def, source: str, inputs: list[str] | None = None, feeds: dict | None = None,
               aliases: dict | None = None) -> FedGraph:
    """Import `graph_def`; when fed at tensors that are no open-batch placeholders (`inputs`, op
    names or `aliases` of them) or given constants (`feeds`), rewrite it and import that."""
    wrapped = import_graph_def(graph_def, source)
    info = GraphInfo(wrapped.graph)
    constants = dict(_checked_feed(info, name, value) for name, value in (feeds or {}).items())
    fed = [input_tensor(info, (aliases or {}).get(name, name), name) for name in inputs or ()]
    both = sorted({t.op.name for t in fed} & set(constants))
    if both:
        raise TransferError(f"{both[0]!r} is both an input and fed a constant (--feed); give it one role")
    opened = {t.op.name: tf.TensorSpec(open_batch(t.shape), t.dtype) for t in fed
              if t.op.type != "Placeholder" or open_batch(t.shape) != t.shape}
    if opened or constants:
        graph_def = feed_graph_def(graph_def, opened, constants)
        wrapped = import_graph_def(graph_def, source)
        info = GraphInfo(wrapped.graph)
    return FedGraph(graph_def, info, wrapped, constants)


def input_tensor(info: GraphInfo, name: str, given: str | None = None) -> tf.Tensor:
    """The tensor named by `name` (`Mul`, `Mul:0`): any op's first output; unknown names get the
    closest op names."""
    given = given or name
    op_name, _, index = name.partition(":")
    op = info.by_name.get(op_name)
    if op is None:
        close = difflib.get_close_matches(op_name, list(info.by_name), n=5, cutoff=0.6)
        inputs = ", ".join(p.name for p in info.placeholders) or "none"
        hint = f"; closest tensors: {', '.join(close)}" if close else ""
        raise TransferError(f"unknown input {given!r}; the graph's inputs are: {inputs}{hint}")
    if index not in ("", "0") or not op.outputs:
        raise TransferError(f"input {given!r}: feed at an op's first output ({op.name}:0) or at the op it goes into")
    return op.outputs[0]


def _checked_feed(info: GraphInfo, name: str, value) -> tuple[str, np.ndarray]:
    """(placeholder op name, the value as its dtype) for `--feed name=value`."""
    op = info.by_name.get(name.split(":")[0])
    if op is None or op.type not in FEEDABLE:
        names = [p.name for p in info.operations if p.type in FEEDABLE]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise TransferError(f"--feed {name}: no such placeholder{hint}; the graph's placeholders are: "
                            f"{', '.join(names) or 'none'}")
    tensor = op.outputs[0]
    return op.name, feed_value(op.name, value, tensor.dtype, tensor.shape)


def open_batch(shape: tf.TensorShape) -> tf.TensorShape:
    """`shape` with its first (batch) dimension unknown; scalars and unknown ranks stay."""
    if not shape.rank:
        return shape
    return tf.TensorShape([None, *shape.as_list()[1:]])


def feed_graph_def(graph_def, placeholders: dict[str, tf.TensorSpec], constants: dict[str, np.ndarray]):
    """A copy of `graph_def` where each op named in `placeholders` is a Placeholder of that spec
    and each op named in `constants` a Const of that value; only what the graph's original
    outputs (unconsumed nodes) still reach is kept."""
    sinks = _unconsumed(graph_def)
    rewritten = tf.compat.v1.GraphDef()
    rewritten.CopyFrom(graph_def)
    for node in rewritten.node:
        if "_output_shapes" in node.attr:  # recorded static shapes: stale once the batch is open
            del node.attr["_output_shapes"]
        if node.name in placeholders:
            _become(node, "Placeholder", dtype=placeholders[node.name].dtype)
            node.attr["shape"].shape.CopyFrom(placeholders[node.name].shape.as_proto())
        elif node.name in constants:
            dtype = tf.as_dtype(node.attr["dtype"].type)
            _become(node, "Const", dtype=dtype)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(constants[node.name], dtype))
    return subgraph(rewritten, sinks)


def _become(node, op_type: str, dtype: tf.DType) -> None:
    node.op = op_type
    del node.input[:]
    node.ClearField("attr")  # also the `_output_shapes` that would pin the old static shape
    node.attr["dtype"].type = dtype.as_datatype_enum


def _unconsumed(graph_def) -> list[str]:
    consumed = {name.lstrip("^").split(":")[0] for node in graph_def.node for name in node.input}
    return [node.name for node in graph_def.node if node.name not in consumed]


def feed_value(name: str, value, dtype: tf.DType, shape: tf.TensorShape) -> np.ndarray:
    """`value` (a Python value, an array, or the text of `--feed NAME=VALUE`) as an array of
    the placeholder's dtype; one line naming the value and what the placeholder takes if not."""
    if isinstance(value, str) and dtype != tf.string:
        value = _parse_text(value)
    array = np.asarray(value)
    if array.dtype.kind not in _KINDS[_kind(dtype)]:
        example = _EXAMPLES[_kind(dtype)]
        raise TransferError(f"feed {name}={_shown(value)} is not a {dtype.name} value; placeholder {name!r} "
                            f"takes {dtype.name} of shape {format_shape(shape)} (--feed {name}={example})")
    if not shape.is_compatible_with(array.shape):
        raise TransferError(f"feed {name}={_shown(value)} has shape {format_shape(tf.TensorShape(array.shape))}; "
                            f"placeholder {name!r} takes {dtype.name} of shape {format_shape(shape)}")
    return array.astype(object if dtype == tf.string else dtype.as_numpy_dtype)


def json_value(array: np.ndarray):
    """A fed constant as JSON (config.json, a layer's config), which `feed_value` reads back."""
    value = array.tolist()
    return value.decode() if isinstance(value, bytes) else value


_KINDS = {"bool": "b", "integer": "iu", "float": "iuf", "string": "USO"}
_EXAMPLES = {"bool": "true", "integer": "1", "float": "1.0", "string": "TEXT"}


def _kind(dtype: tf.DType) -> str:
    if dtype == tf.bool:
        return "bool"
    if dtype == tf.string:
        return "string"
    return "integer" if dtype.is_integer else "float"


def _parse_text(text: str):
    """JSON (`1.0`, `true`, `[1, 2]`), also `True`/`False` as Python writes them; else the text."""
    for candidate in (text, text.lower()):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return text


def _shown(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
