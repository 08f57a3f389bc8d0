"""Cuts pooled over positions inside the backbone's traced function, before they are cached.

Many candidate cuts are linear in other cuts, the same at every position: a Keras batch norm is
`x * scale + offset` of its convolution's output, a bias add `x + bias`, a residual connection
`x + y` of two maps, a 1x1 convolution of stride 1 `x @ kernel` at each position. The average
over positions commutes with those (`mean(x * s + o) = mean(x) * s + o`, `mean(x + y) =
mean(x) + mean(y)`, `mean(x @ k) = mean(x) @ k`), so when the cuts they are made of are
extracted too, their averages are derived from those instead of computed. That is not only
fewer reductions: every fetched tensor is one grappler can no longer fuse away (a convolution,
its bias, batch norm and ReLU become one kernel only when nothing else reads the steps
between). On ResNet50's 177 candidate cuts, 69 are derived (the 53 batch norms and the 16
residual sums; `bench/cuts.py` has the figures). The derived averages equal the computed ones up
to float rounding (~5e-7 relative).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from transfer.graph.analysis import import_graph_def, subgraph
from transfer.heads.pooling import grid_map, pool_tensor

# Ops that are affine in their one input-dependent operand (the other constant), the same at every
# position: element-wise ones and 1x1 convolutions; the sums also when both are input-dependent.
_AFFINE_OPS = frozenset({"Mul", "Add", "AddV2", "Sub", "BiasAdd", "Conv2D"})


def pool_positions(features, pool: str):
    """Every axis between batch and channels reduced (`avg` or `max`) as a head's `FeaturePooling`
    does, or averaged into a 2x2 grid of cells that keeps its layout (`grid2`: `grid_map`), of
    one tensor or a dict of them."""
    if isinstance(features, dict):
        return {key: pool_positions(value, pool) for key, value in features.items()}
    return grid_map(features, 2) if pool == "grid2" else pool_tensor(features, pool)


@dataclasses.dataclass(frozen=True)
class _Affine:
    """`op(inner, constant)`, the constant the same at every position: its average is
    `op(average of inner, constant)`."""

    op: str
    # A tf.Tensor of the graph while planning, then its value (per channel, or one; a 1x1 kernel as
    # a matrix) as an eager tensor, which a trace captures as an input: as a constant in the traced
    # graph, ResNet50's 1x1 kernels (~40 MB) cost ~1.5 s of graph optimisation on its first call.
    constant: object
    constant_first: bool  # `constant - x` rather than `x - constant`
    inner: object  # an expression: a cut spec, _Affine or _Sum

    def average(self, mean: tf.Tensor) -> tf.Tensor:
        constant = self.constant if self.constant.dtype == mean.dtype else tf.cast(self.constant, mean.dtype)
        if self.op == "Conv2D":  # a 1x1 convolution: the same matrix product at every position
            return tf.matmul(mean, constant)
        if self.op == "Mul":
            return mean * constant
        if self.op == "Sub":
            return constant - mean if self.constant_first else mean - constant
        return mean + constant

    def __str__(self) -> str:
        return f"{self.op}({self.inner})"


@dataclasses.dataclass(frozen=True)
class _Sum:
    """`left + right` (or `left - right`) of two maps of one shape: a residual connection."""

    left: object
    right: object
    subtract: bool

    def __str__(self) -> str:
        return f"({self.left} {'-' if self.subtract else '+'} {self.right})"


@dataclasses.dataclass
class DerivedAverages:
    """Which of a backbone's cuts to compute, and how the others' averages follow from theirs."""

    computed: list[str]  # cut specs the backbone must fetch
    derived: dict  # cut spec -> its expression in other cuts (a spec, _Affine or _Sum)

    def complete(self, averages: dict) -> dict:
        """The averages of the computed cuts -> the averages of every cut."""
        completed = dict(averages)

        def evaluate(expression):
            if isinstance(expression, str):
                if expression not in completed:  # a derived cut that another is derived from
                    completed[expression] = evaluate(self.derived[expression])
                return completed[expression]
            if isinstance(expression, _Sum):
                left, right = evaluate(expression.left), evaluate(expression.right)
                return left - right if expression.subtract else left + right
            return expression.average(evaluate(expression.inner))

        for spec in self.derived:
            evaluate(spec)
        return completed


_MAX_OPS = 64  # ops walked back from one cut before giving up: a few per derivable cut


def derived_averages(backbone) -> DerivedAverages:
    """The plan for averaging `backbone`'s cuts: a cut that per-channel affine ops and sums make
    out of other extracted cuts is derived (its constants read once from the graph)."""
    info = backbone.info
    specs = {cut.tensor.name: cut.spec for cut in backbone.cuts}
    derived = {}
    for cut in backbone.cuts:
        expression = _linear(info, cut.tensor, specs, cut.tensor.name, [_MAX_OPS])
        if expression is not None:
            derived[cut.spec] = expression
    if not derived:
        return DerivedAverages([cut.spec for cut in backbone.cuts], {})
    constants = [a.constant for expression in derived.values() for a in _affines(expression)]
    values = dict(zip([t.name for t in constants], _constant_values(backbone.graph_def, constants)))
    plan = {spec: _with_values(expression, values) for spec, expression in derived.items()}
    return DerivedAverages([cut.spec for cut in backbone.cuts if cut.spec not in plan], plan)


def _linear(info, tensor: tf.Tensor, specs: dict, own: str, budget: list):
    """`tensor` as an expression in the other cuts (`specs`: tensor name -> spec) through ops
    that commute with averaging over positions, or None when it is not one."""
    if tensor.name in specs and tensor.name != own:
        return specs[tensor.name]
    budget[0] -= 1
    op = tensor.op
    if budget[0] < 0 or op.type not in _AFFINE_OPS or len(op.inputs) != 2 or not tensor.dtype.is_floating:
        return None
    if tensor.shape.rank is None or (op.type == "BiasAdd" and op.get_attr("data_format") not in (b"NHWC", "NHWC")):
        return None
    if op.type == "Conv2D":
        return _pointwise_conv(info, op, specs, own, budget)
    varying = [t for t in op.inputs if not info.is_constant(t)]
    if any(t.shape != tensor.shape for t in varying):  # broadcast over positions: not per channel
        return None
    if len(varying) == 2:
        if op.type not in ("Add", "AddV2", "Sub"):  # x * y is no linear function of x and y
            return None
        left, right = (_linear(info, t, specs, own, budget) for t in op.inputs)
        return None if left is None or right is None else _Sum(left, right, op.type == "Sub")
    constant = next(t for t in op.inputs if info.is_constant(t))
    if not _per_channel_shape(constant.shape, tensor.shape):
        return None
    inner = _linear(info, varying[0], specs, own, budget)
    return None if inner is None else _Affine(op.type, constant, op.inputs[0].name == constant.name, inner)


def _pointwise_conv(info, op, specs: dict, own: str, budget: list):
    """A 1x1 convolution of stride 1 over channels last, its kernel constant: at every position
    the same matrix product, so its average is the input's average times the kernel."""
    image, kernel = op.inputs
    dims = kernel.shape.as_list() if kernel.shape.rank == 4 else None
    if (dims is None or dims[:2] != [1, 1] or None in dims or not info.is_constant(kernel)
            or info.is_constant(image) or list(op.get_attr("strides")) != [1, 1, 1, 1]
            or op.get_attr("padding") not in (b"SAME", b"VALID") or op.get_attr("data_format") != b"NHWC"):
        return None
    inner = _linear(info, image, specs, own, budget)
    return None if inner is None else _Affine("Conv2D", kernel, False, inner)


def _affines(expression) -> list:
    if isinstance(expression, _Sum):
        return _affines(expression.left) + _affines(expression.right)
    if isinstance(expression, _Affine):
        return [expression, *_affines(expression.inner)]
    return []


def _with_values(expression, values: dict):
    """The expression with each constant tensor replaced by its value, per channel."""
    if isinstance(expression, _Sum):
        return _Sum(_with_values(expression.left, values), _with_values(expression.right, values), expression.subtract)
    if isinstance(expression, _Affine):
        value = values[expression.constant.name]
        value = value.reshape(value.shape[-2:]) if expression.op == "Conv2D" else _per_channel(value)
        return _Affine(expression.op, tf.constant(value), expression.constant_first,
                       _with_values(expression.inner, values))
    return expression


def _per_channel_shape(constant: tf.TensorShape, features: tf.TensorShape) -> bool:
    """Whether a constant of this shape is the same at every position (it varies along channels
    at most), so that averaging over positions commutes with it."""
    dims = constant.as_list() if constant.rank is not None else None
    if dims is None or None in dims or len(dims) > features.rank:
        return False
    return all(d == 1 for d in dims[:-1]) and (not dims or dims[-1] in (1, features[-1]))


def _constant_values(graph_def, tensors: list) -> list[np.ndarray]:
    """The values of constant (input-independent) tensors of the graph, computed once from the
    nodes they need alone (pruning the whole graph takes seconds on a large network), and not
    optimised first: run once, grappler's passes cost more than they save (ResNet50's 136
    constants: 0.15 s instead of 0.5-0.8 s)."""
    names = list(dict.fromkeys(t.name for t in tensors))
    needed = subgraph(graph_def, list(dict.fromkeys(name.split(":")[0] for name in names)))
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    with tf.compat.v1.Session(graph=import_graph_def(needed, wrapped=False), config=config) as session:
        found = dict(zip(names, session.run(names)))
    return [found[t.name] for t in tensors]


def _per_channel(value: np.ndarray) -> np.ndarray:
    return value.reshape(-1) if value.size > 1 else value.reshape(())
