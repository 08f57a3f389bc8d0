"""Let the graphs Keras' `model.fit` traces die with the model (TF bug tensorflow/tensorflow#97697).

`transfer.fit` and sweeps use `forgetting_step_gradients` around every `model.fit`; in your own
script, pass `transfer.ReleaseTracedSteps()` to `model.fit` for the same effect. Without it,
every fit on a FeatureLayer keeps the backbone's weights alive in TF's runtime (~0.75 GB per
fit on a 90 MiB ResNet50): see experiments/README.md, "Memory".
"""
from __future__ import annotations

import contextlib

import keras

from transfer import _compat


@contextlib.contextmanager
def forgetting_step_gradients():
    """Let the graphs `model.fit` traces die with the model (TF bug tensorflow/tensorflow#97697).

    Keras' optimizer sums gradients with the distribution strategy's `all_reduce`, a
    `tf.custom_gradient`; in graph mode each trace registers its gradient function in TF's global
    gradient registry, never removed, and its closure holds tensors of the traced step. That pins
    the step's FuncGraph and every function it calls: the backbone's pruned function, weights
    included, stays in the eager context (~0.75 GB per fit on a 90 MiB ResNet50). The traced step
    already holds its gradient ops, so once fit returns those entries serve nothing: drop the ones
    this fit added whose tensors live in a Keras step graph (none where TF no longer captures them).
    """
    registry = _compat.gradient_registry()
    before = set(registry) if registry is not None else None
    try:
        yield
    finally:
        if before is not None:
            for name in [n for n in registry if n not in before and _compat.is_custom_gradient_name(n)]:
                if any(_in_keras_step(graph) for graph in _closure_graphs(_compat.registered_gradient(registry[name]))):
                    registry.pop(name, None)


def _closure_graphs(function, depth: int = 3):
    """The graphs of the symbolic tensors a function's closure holds (through nested closures)."""
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(value) and depth:
            yield from _closure_graphs(value, depth - 1)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            graph = getattr(item, "graph", None) if hasattr(item, "op") else None
            if graph is not None:
                yield graph


def _in_keras_step(graph) -> bool:
    while graph is not None:
        if _compat.is_keras_step_graph_name(getattr(graph, "name", None)):
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


class ReleaseTracedSteps(keras.callbacks.Callback):
    """`forgetting_step_gradients` as a callback, for your own `model.fit` on a FeatureLayer."""

    def on_train_begin(self, logs=None):
        self._forgetting = forgetting_step_gradients()
        self._forgetting.__enter__()

    def on_train_end(self, logs=None):
        self._forgetting.__exit__(None, None, None)
