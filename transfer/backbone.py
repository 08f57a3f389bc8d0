"""A frozen graph cut at chosen tensors, as a TF2 callable: input(s) -> feature(s).

The graph is imported once into `tf.compat.v1.wrap_function` and pruned to the cut, so a call
runs only the ops the features need (DESIGN: "Frozen graph as a TF2 callable").
"""
from __future__ import annotations

import tensorflow as tf

from transfer import cuts as cut_lib
from transfer.errors import TransferError
from transfer.graph import GraphInfo, format_shape, import_graph_def, rewrap
from transfer.loading import LoadedGraph, load_graph
from transfer.safety import check_ops


class Backbone:
    """Callable feature extractor. Build it with `Backbone.load(path, cut=...)`."""

    def __init__(self, loaded: LoadedGraph, cut="auto", inputs=None, allow_ops=(), *, _info: GraphInfo | None = None):
        self.loaded = loaded
        self.allow_ops = tuple(allow_ops)
        # `_info` (from `recut`): the graph is imported already, its weights are not copied again.
        wrapped = import_graph_def(loaded.graph_def, str(loaded.path)) if _info is None else rewrap(_info.graph)
        self.info = _info or GraphInfo(wrapped.graph)
        self.info.require_placeholder(str(loaded.path))
        self.cuts = [cut_lib.resolve_cut(self.info, spec, self.outputs) for spec in cut_lib.split_cut_specs(cut)]
        self.inputs = self._resolve_inputs(inputs)
        input_names = frozenset(t.op.name for t in self.inputs)
        needed = self.info.ancestors([c.tensor.op for c in self.cuts], stop_at=input_names)
        check_ops(needed, {f.signature.name: f for f in loaded.graph_def.library.function}, self.allow_ops)
        self._function = wrapped.prune(feeds=list(self.inputs), fetches=[c.tensor for c in self.cuts])

    @classmethod
    def load(cls, path, cut="auto", inputs=None, signature=None, allow_ops=()) -> "Backbone":
        """Load a `.pb`/`.pbtxt`, SavedModel directory or `.keras`/`.h5` file and cut it."""
        return cls(load_graph(path, signature), cut=cut, inputs=inputs, allow_ops=allow_ops)

    def recut(self, cut, inputs=None) -> "Backbone":
        """The same graph cut elsewhere, sharing this backbone's import and `GraphInfo` (a
        ThawedFeatureLayer's prefix): only the new cut's pruned function is made."""
        return Backbone(self.loaded, cut=cut, inputs=inputs, allow_ops=self.allow_ops, _info=self.info)

    # -- what it is --------------------------------------------------------------------------

    @property
    def path(self):
        return self.loaded.path

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    @property
    def outputs(self) -> dict[str, tf.Tensor]:
        """The graph's outputs by name: the signature's (by output key) when the file names
        them, else the unconsumed ops' (by op name)."""
        return self.info.output_tensors(self.loaded.outputs)

    @property
    def input_specs(self) -> list[tf.TensorSpec]:
        return [tf.TensorSpec(t.shape, t.dtype, name=t.op.name) for t in self.inputs]

    @property
    def feature_specs(self) -> dict[str, tf.TensorSpec]:
        return {c.spec: tf.TensorSpec(c.tensor.shape, c.tensor.dtype, name=c.name) for c in self.cuts}

    @property
    def multi_cut(self) -> bool:
        return len(self.cuts) > 1

    def __repr__(self) -> str:
        cuts = ", ".join(f"{c.spec}={c.name} {format_shape(c.tensor.shape)}" for c in self.cuts)
        return f"Backbone({str(self.path)!r}, cuts: {cuts})"

    def as_layer(self, **kwargs):
        """This backbone as a non-trainable Keras layer (`transfer.FeatureLayer`)."""
        from transfer.layer import FeatureLayer

        return FeatureLayer(self, **kwargs)

    # -- running ---------------------------------------------------------------------------

    def __call__(self, inputs):
        """Features for a batch: one tensor, or a dict keyed by cut spec when several cuts."""
        outputs = self._function(*self._feeds(inputs))
        if self.multi_cut:
            return {c.spec: out for c, out in zip(self.cuts, outputs)}
        return outputs[0]

    def check_input_shapes(self, inputs) -> None:
        """Raise if any input (tensor-like with `.shape`) cannot feed its placeholder."""
        for placeholder, value in zip(self.inputs, self._ordered(inputs)):
            check_shape(placeholder.op.name, placeholder.shape, tf.TensorShape(value.shape))

    def _feeds(self, inputs) -> list[tf.Tensor]:
        return [self._conform(placeholder, value) for placeholder, value in zip(self.inputs, self._ordered(inputs))]

    def _ordered(self, inputs) -> list:
        """The inputs as a list in placeholder order, from a tensor, a list or a dict by name."""
        if isinstance(inputs, dict):
            missing = [n for n in self._input_keys if n not in inputs]
            if missing:
                raise TransferError(f"missing input(s) {', '.join(missing)}; the backbone takes {', '.join(self._input_keys)}")
            values = [inputs[n] for n in self._input_keys]
        elif isinstance(inputs, (list, tuple)) and len(self.inputs) > 1:
            values = list(inputs)
        else:
            values = [inputs]
        if len(values) != len(self.inputs):
            raise TransferError(f"the backbone takes {len(self.inputs)} input(s) ({', '.join(self._input_keys)}), got {len(values)}")
        return values

    @property
    def _input_keys(self) -> list[str]:
        return [t.op.name for t in self.inputs]

    @staticmethod
    def _conform(placeholder: tf.Tensor, value) -> tf.Tensor:
        """Check rank and known sizes against the placeholder; cast to its dtype."""
        value = tf.convert_to_tensor(value)
        check_shape(placeholder.op.name, placeholder.shape, value.shape)
        return value if value.dtype == placeholder.dtype else tf.cast(value, placeholder.dtype)

    # -- resolving inputs ------------------------------------------------------------------

    def _resolve_inputs(self, inputs) -> list[tf.Tensor]:
        needed = {c.spec: self.info.placeholders_needed([c.tensor.op]) for c in self.cuts}
        if inputs is None:
            chosen = {p.name: p for ops in needed.values() for p in ops}
            tensors = [op.outputs[0] for op in sorted(chosen.values(), key=lambda op: self.info.position[op.name])]
        else:
            names = inputs.split(",") if isinstance(inputs, str) else list(inputs)
            tensors = [self._input_tensor(name) for name in names]
        fed = {t.op.name for t in tensors}
        all_inputs = ", ".join(p.name for p in self.info.placeholders)
        for spec, placeholders in needed.items():
            if not placeholders or (inputs is not None and not fed & {p.name for p in placeholders}):
                given = ", ".join(sorted(fed)) or all_inputs
                raise TransferError(f"cut {spec!r} is not reachable from the input {given}: it does not depend on it")
            unfed = [p.name for p in placeholders if p.name not in fed]
            if unfed:
                raise TransferError(f"cut {spec!r} also needs placeholder(s) {', '.join(unfed)}, which are not fed; "
                                    f"pass inputs={[*sorted(fed), *unfed]}")
        return tensors

    def _input_tensor(self, name: str) -> tf.Tensor:
        op_name = self.loaded.inputs.get(name, name).split(":")[0]
        op = self.info.by_name.get(op_name)
        if op is None or op.type != "Placeholder":
            valid = sorted({*self.loaded.inputs, *(p.name for p in self.info.placeholders)})
            raise TransferError(f"unknown input {name!r}; the graph's inputs are: {', '.join(valid)}")
        return op.outputs[0]


def check_shape(name: str, expected: tf.TensorShape, got: tf.TensorShape) -> None:
    """Raise unless `got` fits `expected` (same rank; equal wherever both sizes are known)."""
    if expected.rank is None or got.rank is None:
        return
    if not expected.is_compatible_with(got):
        raise TransferError(f"input {name!r} expects shape {format_shape(expected)}, got {format_shape(got)}")
