"""Freeze TF2 functions (SavedModel signatures, Keras models) into plain GraphDefs.

`convert_variables_to_constants_v2` inlines the `StatefulPartitionedCall` bodies, so every
intermediate tensor of the result can be cut just like in a `.pb`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from transfer import _compat
from transfer.errors import TransferError
from transfer.graph.analysis import subgraph


@dataclasses.dataclass
class FrozenGraph:
    graph_def: tf.compat.v1.GraphDef
    inputs: dict[str, str]  # user-facing input name -> placeholder op name
    outputs: dict[str, str]  # user-facing output name -> tensor name


def freeze_function(function) -> FrozenGraph:
    """Freeze a ConcreteFunction; keep only what its outputs need (no stray VarHandleOps).

    Each output keeps its own key and tensor (a TF1-loaded signature's outputs are often
    `StatefulPartitionedCall:0`, `:1`, … of one op), and the shape the function declares where
    the frozen graph's shape inference knows less (a Keras `Dense` on a sequence loses the time
    size in its `Tensordot` reshapes)."""
    frozen = _compat.freeze_variables(function)
    arg_names = _argument_names(function)
    inputs = {name: t.op.name for name, t in zip(arg_names, frozen.inputs) if t.dtype != tf.resource}
    keys = _output_keys(function)
    outputs = {key: t.name for key, t in zip(keys, frozen.outputs)}
    graph_def = frozen.graph.as_graph_def()
    keep = list(inputs.values()) + [name.split(":")[0] for name in outputs.values()]
    graph_def = subgraph(graph_def, keep)
    _declare_output_shapes(graph_def, frozen.graph, list(zip(frozen.outputs, function.outputs)))
    return FrozenGraph(graph_def, inputs, outputs)


def _output_keys(function) -> list[str]:
    """The output keys in the order of `function.outputs`, matched by tensor (a loaded TF1
    signature's dict does not follow sorted key order)."""
    structured = function.structured_outputs
    if not isinstance(structured, dict):
        return [f"output_{i}" for i in range(len(function.outputs))]
    position = {tensor.name: i for i, tensor in enumerate(function.outputs)}
    by_position = {position.get(getattr(tensor, "name", None)): key for key, tensor in structured.items()}
    if None in by_position or len(by_position) != len(function.outputs):
        return sorted(structured)  # tf.nest flattens dicts in sorted key order
    return [by_position[i] for i in range(len(function.outputs))]


def _declare_output_shapes(graph_def, graph, declared: list) -> None:
    """Record on each output node (`_output_shapes`, which import uses) the merge of the shape
    inferred in `graph` and the one the function declared; `declared`: (frozen, declared) tensors."""
    nodes = {node.name: node for node in graph_def.node}
    refined = {}
    for frozen_tensor, declared_tensor in declared:
        try:
            refined[frozen_tensor.name] = frozen_tensor.shape.merge_with(declared_tensor.shape)
        except ValueError:
            continue  # the declaration contradicts the graph: trust the graph
    for op in {graph.get_tensor_by_name(name).op for name in refined}:
        shapes = [refined.get(t.name, t.shape) for t in op.outputs]
        if op.name in nodes and shapes != [t.shape for t in op.outputs]:
            attr = nodes[op.name].attr["_output_shapes"].list
            del attr.shape[:]
            attr.shape.extend(shape.as_proto() for shape in shapes)


def _argument_names(function) -> list[str]:
    args, kwargs = function.structured_input_signature
    specs = list(tf.nest.flatten(args)) + [kwargs[k] for k in sorted(kwargs)]
    return [spec.name or f"input_{i}" for i, spec in enumerate(specs)]


def freeze_keras_model(model, head=None, cut_name: str | None = None) -> FrozenGraph:
    """Trace a Keras model in inference mode and freeze it; inputs keep the model's input names.
    With `head` (a layer or model on the model's output), the graph goes on through it, as a
    pretrained network's graph keeps its classifier; `cut_name` names the model's output at the
    graph's top level: a cut (`--cut NAME`) that does not depend on how Keras names its ops."""
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
    single = len(specs) == 1
    named = []  # the op the cut became: TensorFlow renames it when another op has the name

    @tf.function
    def serve(*inputs):
        outputs = model(inputs[0] if single else list(inputs), training=False)
        if cut_name is not None:
            outputs = tf.identity(outputs, name=cut_name)
            named.append(outputs.op.name)
        return outputs if head is None else head(outputs)

    frozen = freeze_function(serve.get_concrete_function(*specs))
    if named and named[0] != cut_name:
        raise TransferError(f"cut_name {cut_name!r} is the name of another op of the graph (the cut would be "
                            f"{named[0]!r}); choose another name")
    return frozen
