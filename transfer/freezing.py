"""Freeze TF2 functions (SavedModel signatures, Keras models) into plain GraphDefs.

`convert_variables_to_constants_v2` inlines the `StatefulPartitionedCall` bodies, so every
intermediate tensor of the result can be cut just like in a `.pb`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2


@dataclasses.dataclass
class FrozenGraph:
    graph_def: tf.compat.v1.GraphDef
    inputs: dict[str, str]  # user-facing input name -> placeholder op name
    outputs: dict[str, str]  # user-facing output name -> tensor name


def freeze_function(function) -> FrozenGraph:
    """Freeze a ConcreteFunction; keep only what its outputs need (no stray VarHandleOps)."""
    frozen = convert_variables_to_constants_v2(function)
    arg_names = _argument_names(function)
    inputs = {name: t.op.name for name, t in zip(arg_names, frozen.inputs) if t.dtype != tf.resource}
    structured = function.structured_outputs
    if isinstance(structured, dict):
        out_names = sorted(structured)  # tf.nest flattens dicts in sorted key order
    else:
        out_names = [f"output_{i}" for i in range(len(frozen.outputs))]
    outputs = {name: t.name for name, t in zip(out_names, frozen.outputs)}
    graph_def = frozen.graph.as_graph_def()
    keep = list(inputs.values()) + [name.split(":")[0] for name in outputs.values()]
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, keep)
    return FrozenGraph(graph_def, inputs, outputs)


def _argument_names(function) -> list[str]:
    args, kwargs = function.structured_input_signature
    specs = list(tf.nest.flatten(args)) + [kwargs[k] for k in sorted(kwargs)]
    return [spec.name or f"input_{i}" for i, spec in enumerate(specs)]


def freeze_keras_model(model) -> FrozenGraph:
    """Trace a Keras model in inference mode and freeze it; inputs keep the model's input names."""
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
    single = len(specs) == 1

    @tf.function
    def serve(*inputs):
        return model(inputs[0] if single else list(inputs), training=False)

    return freeze_function(serve.get_concrete_function(*specs))
