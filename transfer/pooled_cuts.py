"""Cuts pooled over positions inside the backbone's traced function, before they are cached.

Many candidate cuts are per-channel affine functions of other cuts: a Keras batch norm is
`x * scale + offset` of the convolution's output, a bias add `x + bias`. The average over
positions commutes with those (`mean(x * s + o) = mean(x) * s + o`), so when both cuts are
extracted, the affine one's average is derived from the other's instead of computed. That is
not only fewer reductions: every fetched tensor is one grappler can no longer fuse away (a
convolution, its bias, batch norm and ReLU become one kernel only when nothing else reads the
steps between). Measured on ResNet50's 177 candidate cuts: 1.37x the deepest cut's time a batch
with every cut fetched, 1.17x with the 53 batch-norm outputs derived (`bench/cuts.py`).
The derived averages equal the computed ones up to float rounding (~1e-7 relative).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from transfer.graph import import_graph_def, subgraph

# Element-wise ops that are affine in their one input-dependent operand (the other constant).
_AFFINE_OPS = frozenset({"Mul", "Add", "AddV2", "Sub", "BiasAdd"})


def pool_positions(features, pool: str):
    """Every axis between batch and channels reduced (`avg` or `max`), of one tensor or a dict."""
    if isinstance(features, dict):
        return {key: pool_positions(value, pool) for key, value in features.items()}
    axes = list(range(1, len(features.shape) - 1))
    if not axes:
        return features
    return (tf.reduce_mean if pool == "avg" else tf.reduce_max)(features, axis=axes)


@dataclasses.dataclass(frozen=True)
class _Step:
    """One affine op between a source cut and a derived one: `op(mean, constant)`."""

    op: str
    constant: np.ndarray  # per channel (or one value), as it broadcasts against the average
    constant_first: bool  # `constant - x` rather than `x - constant`

    def apply(self, mean: tf.Tensor) -> tf.Tensor:
        constant = tf.constant(self.constant, mean.dtype)
        if self.op == "Mul":
            return mean * constant
        if self.op == "Sub":
            return constant - mean if self.constant_first else mean - constant
        return mean + constant


@dataclasses.dataclass
class DerivedAverages:
    """Which of a backbone's cuts to compute, and how the others' averages follow from theirs."""

    computed: list[str]  # cut specs the backbone must fetch
    derived: dict  # cut spec -> (source cut spec, [_Step, ...] from the source to it)

    def complete(self, averages: dict) -> dict:
        """The averages of the computed cuts -> the averages of every cut."""
        completed = dict(averages)
        for spec, (source, steps) in self.derived.items():
            mean = completed[source]
            for step in steps:
                mean = step.apply(mean)
            completed[spec] = mean
        return completed


def derived_averages(backbone) -> DerivedAverages:
    """The plan for averaging `backbone`'s cuts: a cut reached from another extracted cut
    through per-channel affine ops only is derived (its chain's constants read once)."""
    info = backbone.info
    by_name = {cut.tensor.name: cut.spec for cut in backbone.cuts}
    chains = {}
    for cut in backbone.cuts:
        chain = _affine_chain(info, cut.tensor, set(by_name) - {cut.tensor.name})
        if chain is not None:
            chains[cut.spec] = (by_name[chain[0].name], chain[1])
    derived = {spec: _sourced(spec, chains) for spec in chains}
    if not derived:
        return DerivedAverages([cut.spec for cut in backbone.cuts], {})
    constants = [t for _, steps in derived.values() for _, t, _ in steps]
    values = dict(zip([t.name for t in constants], _constant_values(backbone.graph_def, constants)))
    plan = {spec: (source, [_Step(op, _per_channel(values[t.name]), first) for op, t, first in steps])
            for spec, (source, steps) in derived.items()}
    return DerivedAverages([cut.spec for cut in backbone.cuts if cut.spec not in plan], plan)


def _affine_chain(info, tensor: tf.Tensor, others: set) -> tuple | None:
    """(the other cut `tensor` is an affine function of, [(op, constant, constant first)] from
    that cut to `tensor`), or None when it is not one."""
    steps = []
    while tensor.name not in others:
        op = tensor.op
        if op.type not in _AFFINE_OPS or not tensor.dtype.is_floating or tensor.shape.rank is None:
            return None
        if op.type == "BiasAdd" and op.get_attr("data_format") not in (b"NHWC", "NHWC"):
            return None
        varying = [t for t in op.inputs if not info.is_constant(t)]
        if len(varying) != 1 or len(op.inputs) != 2 or varying[0].shape != tensor.shape:
            return None
        constant = next(t for t in op.inputs if info.is_constant(t))
        if not _per_channel_shape(constant.shape, tensor.shape):
            return None
        steps.append((op.type, constant, op.inputs[0].name == constant.name))
        tensor = varying[0]
    return tensor, steps[::-1]


def _per_channel_shape(constant: tf.TensorShape, features: tf.TensorShape) -> bool:
    """Whether a constant of this shape is the same at every position (it varies along channels
    at most), so that averaging over positions commutes with it."""
    dims = constant.as_list() if constant.rank is not None else None
    if dims is None or None in dims or len(dims) > features.rank:
        return False
    return all(d == 1 for d in dims[:-1]) and (not dims or dims[-1] in (1, features[-1]))


def _sourced(spec: str, chains: dict) -> tuple:
    """A derived cut's chain followed back to a computed cut (a source may be derived itself)."""
    source, steps = chains[spec]
    while source in chains:
        source, earlier = chains[source]
        steps = earlier + steps
    return source, steps


def _constant_values(graph_def, tensors: list) -> list[np.ndarray]:
    """The values of constant (input-independent) tensors of the graph, computed once from the
    nodes they need alone (pruning the whole graph takes seconds on a large network)."""
    names = list(dict.fromkeys(t.name for t in tensors))
    needed = subgraph(graph_def, list(dict.fromkeys(name.split(":")[0] for name in names)))
    with tf.compat.v1.Session(graph=import_graph_def(needed, wrapped=False)) as session:
        found = dict(zip(names, session.run(names)))
    return [found[t.name] for t in tensors]


def _per_channel(value: np.ndarray) -> np.ndarray:
    return value.reshape(-1) if value.size > 1 else value.reshape(())
