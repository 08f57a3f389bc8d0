"""Every TensorFlow and Keras private API transfer uses, one small entry each, and nowhere else.

Each entry names what it wraps, why no public API does it, and the versions it was checked on
(`checked_on`); `tests/test_internals.py` probes each one on the installed versions, so that an
upgrade that breaks one fails there, naming the entry, and not somewhere deep in a fit. The same
test refuses `tensorflow.python`, `keras.src` and these private names in any other module.

TensorFlow and Keras are imported inside the entries, never at import time: the CLI's fast path
(`--help`, `cache ls`) imports nothing of TensorFlow. This module imports nothing of transfer.
"""
from __future__ import annotations

import contextlib

CHECKED_ON = "TF 2.21, Keras 3.15"


def _internal(wraps: str, checked_on: str = CHECKED_ON):
    """Mark a function as the entry for the private API `wraps`, checked on `checked_on`."""
    def mark(function):
        function.wraps, function.checked_on = wraps, checked_on
        return function
    return mark


# -- TensorFlow: graphs and functions ---------------------------------------------------------

@_internal("tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2")
def freeze_variables(function):
    """A ConcreteFunction with its variables turned into Consts and its `StatefulPartitionedCall`
    bodies inlined (the result's `.graph` holds every intermediate tensor, cuttable). TF2 has no
    public freezer: `tf.compat.v1.graph_util.convert_variables_to_constants` needs a Session and
    leaves the called bodies hidden. Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(function)


@_internal("tensorflow.python.framework.function_def_to_graph.function_def_to_graph")
def function_body_graph(function_def, input_shapes):
    """A FunctionDef of a graph's library as a FuncGraph (inside the default graph, whose library
    resolves its calls), for shape inference over a function body before anything runs. No public
    API builds a graph from one FunctionDef. Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.framework import function_def_to_graph

    return function_def_to_graph.function_def_to_graph(function_def, input_shapes=input_shapes)


@_internal("tensorflow.python.framework.op_def_registry.get")
def is_registered_op(op_type: str) -> bool:
    """Whether `op_type` is a primitive op of this TensorFlow (a function attribute may name one).
    No public API lists the registered op types (`tf.raw_ops` misses some). Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op_type) is not None


@_internal("tf.Graph._is_function")
def is_library_function(graph, op_type: str) -> bool:
    """Whether an op's type names a function of `graph`'s library (a call, not a primitive op),
    without serializing the graph to read its library. Checked on TF 2.21, Keras 3.15."""
    return graph._is_function(op_type)


@_internal("tensorflow.python.framework.ops.get_gradient_function")
def gradient_function(op):
    """The gradient TensorFlow would use for `op` (None for an op without inputs); raises
    LookupError where there is none. No public API asks before a tape fails mid-training.
    Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.framework import ops

    return ops.get_gradient_function(op)


@_internal("tensorflow.python.eager.wrap_function.WrappedFunction and VariableHolder")
def wrapped_function(graph):
    """A TF1-style wrapped function over a graph that `tf.compat.v1.wrap_function` made, so that it
    can be `prune`d again without importing the GraphDef again; the public `wrap_function` only
    wraps a Python function. Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.eager import wrap_function

    return wrap_function.WrappedFunction(graph, wrap_function.VariableHolder())


@_internal("tensorflow.python.util.deprecation.silence")
def deprecation_silenced():
    """A context in which TensorFlow prints no deprecation notice (`tf.compat.v1.graph_util.
    extract_sub_graph`, the public way to prune a GraphDef, prints one); no public switch does
    that. Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.util import deprecation

    return deprecation.silence()


@_internal("tensorflow.python.saved_model.load_v1_in_v2._EagerSavedModelLoader")
def v1_saved_model_loader(path: str):
    """The loader TensorFlow itself uses for TF1 SavedModels inside a wrapped function, for
    SavedModels whose object graph `tf.saved_model.load` cannot revive (older Keras writers, e.g.
    optimizer slot variables). Relied on: `.get_meta_graph_def_from_tags(tags)` returns the
    MetaGraphDef that `.load(tags=tags)` then loads (edits to it count), and `.load` returns an
    object with `.signatures`. `tf.compat.v1.saved_model.load` needs a Session. Checked on TF 2.21,
    Keras 3.15."""
    from tensorflow.python.saved_model import load_v1_in_v2

    return load_v1_in_v2._EagerSavedModelLoader(path)


# -- TensorFlow: the gradient registry that pins traced steps (tensorflow/tensorflow#97697) -----

@_internal("tensorflow.python.framework.ops._gradient_registry._registry")
def gradient_registry() -> dict | None:
    """TF's global gradient registry, the dict itself (name -> {"type": function, "location": ...}),
    or None where TensorFlow no longer keeps one; no public API removes an entry.
    Checked on TF 2.21, Keras 3.15."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


@_internal("an entry of tensorflow.python.framework.registry.Registry: {'type': function, 'location': ...}")
def registered_gradient(entry):
    """The gradient function of one `gradient_registry()` entry. Checked on TF 2.21, Keras 3.15."""
    return entry.get("type")


@_internal("the names tf.custom_gradient registers its gradients under: 'CustomGradient-<uid>' "
           "(tensorflow/python/ops/custom_gradient.py)")
def is_custom_gradient_name(name: str) -> bool:
    """Whether a `gradient_registry()` name is one that `tf.custom_gradient` registered.
    Checked on TF 2.21, Keras 3.15."""
    return name.startswith("CustomGradient-")


_KERAS_STEP_GRAPHS = frozenset({"one_step_on_data", "one_step_on_data_distributed", "multi_step_on_iterator"})


@_internal("the names of the tf.functions Keras traces its train/test/predict steps in "
           "(keras/src/backend/tensorflow/trainer.py)")
def is_keras_step_graph_name(name) -> bool:
    """Whether a FuncGraph's name is that of a step Keras' `model.fit`/`evaluate`/`predict` traced.
    Checked on TF 2.21, Keras 3.15."""
    return name in _KERAS_STEP_GRAPHS


# -- Keras ------------------------------------------------------------------------------------

@_internal("keras.src.saving.serialization_lib.in_safe_mode")
def keras_safe_mode():
    """Keras' safe mode of the load in progress: True, False, or None outside a load (Keras passes
    `safe_mode` to `from_config` only where a class asks for it). No public API reads it.
    Checked on TF 2.21, Keras 3.15."""
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode()


@_internal("keras.layers.Layer._tracker.unlock() / .lock()")
@contextlib.contextmanager
def tracking_unlocked(layer):
    """A context in which a built Keras layer may add weights (Keras locks a built layer's state;
    a layer whose weights come with a graph read late, on load, makes them then). No public API
    unlocks it. Checked on TF 2.21, Keras 3.15."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


@_internal("keras.Model._symbolic_build(data_batch=...)")
def symbolic_build(model, data_batch) -> None:
    """Build a compiled model's metric and optimizer variables from one batch, as `model.fit`
    does before its first step (a training loop run outside `fit` needs them made in the
    strategy's scope). No public API builds them. Checked on TF 2.21, Keras 3.15."""
    model._symbolic_build(data_batch=data_batch)


@_internal("keras.src.trainers.data_adapters.tf_dataset_adapter.make_class_weight_map_fn")
def class_weight_map_fn(class_weight: dict):
    """The `tf.data` map `model.fit` applies for `class_weight`: (x, y[, w]) -> (x, y, w), for a
    training loop that keeps `fit`'s contract outside `fit`; not exported publicly.
    Checked on TF 2.21, Keras 3.15."""
    from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn

    return make_class_weight_map_fn(class_weight)


@_internal("keras.optimizers.Optimizer._var_key")
def optimizer_variable_key(optimizer, variable):
    """The key a Keras optimizer files a variable under (the same for a variable and its
    distributed replicas under a strategy, unlike `id`). Checked on TF 2.21, Keras 3.15."""
    return optimizer._var_key(variable)


@_internal("keras.optimizers.Optimizer._check_variables_are_known")
def optimizer_check_known(optimizer, variables) -> None:
    """Keras' own check that a built optimizer can train `variables`: raises ValueError naming an
    unknown one. Checked on TF 2.21, Keras 3.15."""
    optimizer._check_variables_are_known(variables)


@_internal("keras.optimizers.Optimizer._trainable_variables")
def optimizer_built_variables(optimizer) -> list:
    """The variables a Keras optimizer was built with, what `apply(grads)` without variables
    steps on. Checked on TF 2.21, Keras 3.15."""
    return optimizer._trainable_variables
