"""A frozen graph cut at chosen tensors, as a TF2 callable: input(s) -> feature(s).

The graph is imported once into `tf.compat.v1.wrap_function` and pruned to the cut, so a call
runs only the ops the features need (README "Architecture": the frozen graph as a TF2 callable).
"""
from __future__ import annotations

import copy
import functools
import warnings

import tensorflow as tf

from transfer.graph import cuts as cut_lib
from transfer.errors import TransferError, TransferWarning
from transfer.graph.feeding import FedGraph, feed_graph, json_value
from transfer.graph.analysis import format_shape, rewrap
from transfer.graph.loading import LoadedGraph, load_graph
from transfer.graph.memory import check_cut_memory, memory_limit
from transfer.graph.safety import check_ops


class Backbone:
    """Callable feature extractor. Build it with `Backbone.load(path, cut=...)`.

    `inputs`: where the graph is fed, at placeholders or at any other tensors (`"Mul"`: their
    batch dimension is opened, `transfer.graph.feeding`); default: the placeholders the cuts need.
    `feeds`: constants for other placeholders (`{"keep_prob": 1.0}`).
    `max_memory`: what one example's tensors may take at once (`"16G"`; default: half the memory
    available), checked on the graph's static shapes before anything runs (`transfer.graph.memory`).
    """

    def __init__(self, loaded: LoadedGraph, cut="auto", inputs=None, allow_ops=(), feeds=None, *,
                 max_memory=None, _fed: FedGraph | None = None):
        self.loaded = loaded
        self.allow_ops = tuple(allow_ops)
        self.max_memory = max_memory
        self.requested_inputs = None if inputs is None else input_names(inputs)
        # `_fed` (from `recut`): the graph is imported already, its weights are not copied again.
        fed = _fed or feed_graph(loaded.graph_def, str(loaded.path), self.requested_inputs, feeds, loaded.inputs)
        self.graph_def, self.info, self.feeds = fed.graph_def, fed.info, fed.feeds
        self.info.require_placeholder(str(loaded.path))
        self.cuts = self._resolve_cuts(cut_lib.split_cut_specs(cut))
        self._feature_dtypes = [feature_dtype(c) for c in self.cuts]
        self.inputs = self._resolve_inputs(self.requested_inputs)
        for c in self.cuts:
            self._check_batch(c)
        needed = self._needed_ops(self.inputs)  # what both checks walk
        self._check_ops(needed)
        self._check_memory(needed)
        self._wrapped = fed.wrapped

    @classmethod
    def load(cls, path, cut="auto", inputs=None, signature=None, allow_ops=(), feeds=None,
             max_memory=None) -> "Backbone":
        """Load a `.pb`/`.pbtxt`, SavedModel directory or `.keras`/`.h5` file and cut it."""
        return cls(load_graph(path, signature, allow_ops), cut=cut, inputs=inputs, allow_ops=allow_ops, feeds=feeds,
                   max_memory=max_memory)

    def recut(self, cut, inputs=None) -> "Backbone":
        """The same graph cut elsewhere, sharing this backbone's import and `GraphInfo` (a
        ThawedFeatureLayer's prefix): only the new cut's pruned function is made. It is fed where
        this backbone is (`inputs`: elsewhere)."""
        fed = FedGraph(self.graph_def, self.info, rewrap(self.info.graph), self.feeds)
        inputs = self.requested_inputs if inputs is None else inputs
        return Backbone(self.loaded, cut=cut, inputs=inputs, allow_ops=self.allow_ops, max_memory=self.max_memory,
                        _fed=fed)

    def subset(self, specs: list[str]) -> "Backbone":
        """Some of this backbone's cuts (by spec), fed exactly as it is: nothing resolved or
        checked again (seconds for a hundred cuts of a large graph), only the pruned function
        made anew. What a pass over the cuts not cached yet computes."""
        by_spec = {cut.spec: (cut, dtype) for cut, dtype in zip(self.cuts, self._feature_dtypes)}
        unknown = [spec for spec in specs if spec not in by_spec]
        if unknown or not specs:
            raise TransferError(f"cannot take cuts {unknown or specs} of a backbone cut at "
                                f"{', '.join(by_spec)}")
        part = copy.copy(self)
        part.__dict__.pop("pruned_function", None)  # made for the cuts it has
        part.cuts, part._feature_dtypes = map(list, zip(*(by_spec[spec] for spec in specs)))
        return part

    # -- what it is --------------------------------------------------------------------------

    @property
    def path(self):
        return self.loaded.path

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    @functools.cached_property
    def outputs(self) -> dict[str, tf.Tensor]:
        """The graph's outputs by name: the signature's (by output key) when the file names
        them, else the unconsumed ops' (by op name); when fed at `inputs`, those computed from
        them (what `auto` walks back from)."""
        declared = {key: name for key, name in self.loaded.outputs.items() if name.split(":")[0] in self.info.by_name}
        outputs = self.info.output_tensors(declared)
        if self.requested_inputs is None:
            return outputs
        fed = {self.loaded.inputs.get(name, name) for name in self.requested_inputs}
        reached = {key: t for key, t in outputs.items() if any(a.name in fed for a in self.info.ancestors([t.op]))}
        return reached or outputs

    @property
    def input_specs(self) -> list[tf.TensorSpec]:
        return [tf.TensorSpec(t.shape, t.dtype, name=t.op.name) for t in self.inputs]

    @property
    def feature_specs(self) -> dict[str, tf.TensorSpec]:
        return {c.spec: tf.TensorSpec(c.tensor.shape, dtype, name=c.name)
                for c, dtype in zip(self.cuts, self._feature_dtypes)}

    @functools.cached_property
    def pruned_function(self):
        """The ConcreteFunction inputs -> cut tensors that a call runs (what other engines convert);
        made on first use: pruning a large graph takes seconds, and a backbone only recut never runs.
        Its input signature lets a call bind its arguments at once: without one, TensorFlow first
        fails to bind them and formats the whole batch into the error it then drops (~12 ms a
        batch of 32 images of 64x64)."""
        signature = (tuple(tf.TensorSpec(t.shape, t.dtype) for t in self.inputs), {})
        return self._wrapped.prune(feeds=list(self.inputs), fetches=[c.tensor for c in self.cuts],
                                   input_signature=signature)

    @property
    def feed_values(self) -> dict:
        """The constants fed to placeholders, as JSON (what a config records)."""
        return {name: json_value(value) for name, value in self.feeds.items()}

    @property
    def feeding(self) -> dict:
        """Where and with what the graph is fed, as a run's config.json records it."""
        return {"inputs": self.requested_inputs, "feeds": self.feed_values, "allow_ops": list(self.allow_ops)}

    def image_input_hint(self) -> str | None:
        """Where to feed instead when an input is no batch of images (a JPEG string, say)."""
        hints = [self.info.image_input_hint(t) for t in self.inputs]
        return next((h for h in hints if h), None)

    @property
    def multi_cut(self) -> bool:
        return len(self.cuts) > 1

    def __repr__(self) -> str:
        cuts = ", ".join(f"{c.spec}={c.name} {format_shape(c.tensor.shape)}" for c in self.cuts)
        return f"Backbone({str(self.path)!r}, cuts: {cuts})"

    # -- running ---------------------------------------------------------------------------

    def __call__(self, inputs):
        """Features for a batch: one tensor, or a dict keyed by cut spec when several cuts."""
        return self.as_features(self.pruned_function(*self._feeds(inputs)))

    def as_features(self, outputs) -> object:
        """The cut tensors (one per cut, in cut order) as this backbone's features: each cast to
        its feature dtype (an int or bool cut to float32), one tensor or a dict by cut spec (what
        a thawed suffix computing the same cuts returns too)."""
        outputs = [tf.cast(out, dtype) if out.dtype != dtype else out
                   for out, dtype in zip(outputs, self._feature_dtypes, strict=True)]
        if self.multi_cut:
            return {c.spec: out for c, out in zip(self.cuts, outputs)}
        return outputs[0]

    def check_input_shapes(self, inputs) -> None:
        """Raise if any input (tensor-like with `.shape`) cannot feed its placeholder."""
        for placeholder, value in zip(self.inputs, self.ordered_inputs(inputs)):
            check_shape(placeholder.op.name, placeholder.shape, tf.TensorShape(value.shape))

    def _feeds(self, inputs) -> list[tf.Tensor]:
        return [self._conform(placeholder, value)
                for placeholder, value in zip(self.inputs, self.ordered_inputs(inputs))]

    def ordered_inputs(self, inputs) -> list:
        """The inputs as a list in placeholder order (what any engine running this backbone's
        graph is fed)."""
        return order_inputs(inputs, self._input_keys)

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

    def _resolve_cuts(self, specs: list[str]) -> list[cut_lib.Cut]:
        """The cuts in the order given, `candidates` expanded in graph order; a tensor named twice
        (by two spellings) is cut once."""
        cuts = {}
        for spec in specs:
            for name in (self.candidate_cuts() if spec == cut_lib.CANDIDATES else [spec]):
                cut = self._resolve_cut(name)
                cuts.setdefault(cut.tensor.name, cut)
        return list(cuts.values())

    def candidate_cuts(self) -> list[str]:
        """The tensor names `transfer inspect` lists as candidate cuts, in graph order, that the
        fed inputs reach and that take batches: what `--cut candidates` expands to."""
        from transfer.graph.feature_info import batch_mixed

        aliases = {self.loaded.inputs.get(name, name) for name in self.requested_inputs or ()}
        fed = [op for op in self.info.placeholders if not aliases or op.name in aliases]
        fed_names = {op.name for op in fed}
        tensors = self.info.candidate_cuts
        mixed = batch_mixed(self.graph_def, self.info, tensors)
        found = [t.name for t in tensors if t.name not in mixed
                 and {op.name for op in self.info.placeholders_needed([t.op])} <= fed_names
                 and not self.info.batch_fixing_tensor([op.outputs[0] for op in fed], t)]
        if not found:
            raise TransferError(f"cut {cut_lib.CANDIDATES!r}: the graph has no candidate cut that its inputs reach "
                                "(`transfer inspect --all` lists every tensor)")
        return found

    def _resolve_cut(self, spec: str) -> cut_lib.Cut:
        try:
            return cut_lib.resolve_cut(self.info, spec, self.outputs)
        except TransferError:
            # Fed past it: the op was in the file, but feeding at `inputs` dropped it.
            if not self.requested_inputs or spec.split(":")[0] not in {n.name for n in self.loaded.graph_def.node}:
                raise
            raise TransferError(f"cut {spec!r} comes before the input(s) {', '.join(self.requested_inputs)} where "
                                "the graph is fed: nothing fed there reaches it; cut after the input(s)") from None

    def _resolve_inputs(self, names) -> list[tf.Tensor]:
        needed = {c.spec: self.info.placeholders_needed([c.tensor.op]) for c in self.cuts}
        if names is None:
            tensors = self._default_inputs(needed)
        else:
            tensors = [self._input_tensor(name) for name in names]
        fed = {t.op.name for t in tensors}
        all_inputs = ", ".join(p.name for p in self.info.placeholders)
        for spec, placeholders in needed.items():
            if not placeholders or (names is not None and not fed & {p.name for p in placeholders}):
                given = ", ".join(sorted(fed)) or all_inputs
                raise TransferError(f"cut {spec!r} is not reachable from the input {given}: it does not depend on it")
            unfed = [p.name for p in placeholders if p.name not in fed]
            if unfed:
                raise TransferError(f"cut {spec!r} also needs placeholder(s) {', '.join(unfed)}, which are not fed; "
                                    f"pass inputs={[*sorted(fed), *unfed]}, or a constant with --feed {unfed[0]}=VALUE")
        used = {p.name for placeholders in needed.values() for p in placeholders}
        unused = [t.op.name for t in tensors if t.op.name not in used]
        if unused:
            raise TransferError(f"input {unused[0]!r} is fed, but no cut ({', '.join(needed)}) depends on it")
        return tensors

    def _default_inputs(self, needed) -> list[tf.Tensor]:
        """The placeholders the cuts need; a scalar one beside a batch input (`keep_prob`,
        `is_training`) is no data input: it must be given a constant."""
        chosen = {p.name: p for ops in needed.values() for p in ops}
        ops = sorted(chosen.values(), key=lambda op: self.info.position[op.name])
        scalars = [op for op in ops if op.outputs[0].shape.rank == 0]
        if scalars and len(scalars) < len(ops):
            tensor = scalars[0].outputs[0]
            raise TransferError(f"placeholder {tensor.op.name!r} ({tensor.dtype.name} {format_shape(tensor.shape)}) "
                                f"is not fed: give it a value with --feed {tensor.op.name}=VALUE "
                                f"(feeds={{{tensor.op.name!r}: VALUE}})")
        return [op.outputs[0] for op in ops]

    def _input_tensor(self, name: str) -> tf.Tensor:
        op = self.info.by_name.get(self.loaded.inputs.get(name, name))
        if op is None or op.type != "Placeholder":
            valid = sorted({*self.loaded.inputs, *(p.name for p in self.info.placeholders)})
            raise TransferError(f"unknown input {name!r}; the graph's inputs are: {', '.join(valid)}")
        return op.outputs[0]

    def _needed_ops(self, fed_at) -> list[tf.Operation]:
        """The ops the cuts need when the graph is fed at the tensors `fed_at`."""
        return self.info.ancestors([c.tensor.op for c in self.cuts], stop_at=frozenset(t.op.name for t in fed_at))

    @functools.cached_property
    def _library(self) -> dict:
        """The graph's functions by name: what the op and memory checks walk into."""
        return {f.signature.name: f for f in self.graph_def.library.function}

    def _check_ops(self, needed: list[tf.Operation]) -> None:
        """The safety check of the ops the cuts need. When feeding where the image enters the
        network would leave the refused ops out (a JPEG decoder), the error says so too."""
        try:
            self._check_needed_ops(needed)
        except TransferError as error:
            hint = self._hint_past_refused_ops()
            if hint is None:
                raise
            raise TransferError(f"{error}; or {hint}") from None

    def _check_needed_ops(self, needed: list[tf.Operation]) -> None:
        check_ops(needed, self._library, self.allow_ops, source=str(self.loaded.source or self.loaded.path))

    def _check_memory(self, needed: list[tf.Operation]) -> None:
        """One line, before anything runs, if the cuts' tensors for one example (static shapes)
        take more memory at once than allowed."""
        limit, reason = memory_limit(self.max_memory)
        check_cut_memory(self.info.graph, self._library, needed, limit, reason,
                         str(self.loaded.source or self.loaded.path))

    def _hint_past_refused_ops(self) -> str | None:
        """The image-input hint, when feeding where it says leaves every refused op out."""
        for tensor in self.inputs:
            hint, entry = self.info.image_input_hint(tensor), self.info.image_entry(tensor.op)
            if hint and entry is not None:
                try:
                    self._check_needed_ops(self._needed_ops([entry]))
                    return hint
                except TransferError:
                    continue
        return None

    def _check_batch(self, cut) -> None:
        """One line, at construction, if an op between the inputs and the cut fixes batch 1."""
        found = self.info.batch_fixing_tensor(self.inputs, cut.tensor)
        if found:
            fixed, before = found
            name = before.op.name if before.value_index == 0 else before.name
            raise TransferError(
                f"cut {cut.spec!r}: op {fixed.op.name!r} ({fixed.op.type}) fixes the batch to 1 "
                f"({format_shape(fixed.shape)}) "
                f"after {name!r} {format_shape(before.shape)}; cut at {name!r} (--cut {name}) to take batches")


def input_names(inputs) -> list[str]:
    """`"a,b:0"` or `["a", "b:0"]` -> `["a", "b"]` (`:0` is the op's own name)."""
    names = [n.strip() for n in (inputs.split(",") if isinstance(inputs, str) else inputs)]
    if not names or not all(names):
        raise TransferError(f"empty input name in {inputs!r}: give op or tensor names, e.g. --inputs Mul")
    return [n[:-2] if n.endswith(":0") else n for n in names]


def feature_dtype(cut) -> tf.DType:
    """Heads learn from numbers: a float cut as it is; an int or bool one cast to float32 (with a
    warning); a string, resource, variant, complex or quantized one refused."""
    dtype = cut.tensor.dtype
    if dtype.is_floating:
        return dtype
    if (dtype.is_integer and not dtype.is_quantized) or dtype == tf.bool:
        warnings.warn(f"cut {cut.spec!r} ({cut.name}) is {dtype.name}; its values are cast to float32", TransferWarning,
                      stacklevel=2)
        return tf.float32
    raise TransferError(f"cut {cut.spec!r} ({cut.name}) is a {dtype.name} tensor; features must be numbers "
                        "(float, int or bool): choose another cut (`transfer inspect` lists the candidates)")


def order_inputs(inputs, names: list[str]) -> list:
    """A tensor, a list, or a dict by input name as a list in the order of `names`."""
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise TransferError(f"missing input(s) {', '.join(missing)}; the backbone takes {', '.join(names)}")
        values = [inputs[n] for n in names]
    elif isinstance(inputs, (list, tuple)) and len(names) > 1:
        values = list(inputs)
    else:
        values = [inputs]
    if len(values) != len(names):
        raise TransferError(f"the backbone takes {len(names)} input(s) ({', '.join(names)}), got {len(values)}")
    return values


def check_shape(name: str, expected: tf.TensorShape, got: tf.TensorShape) -> None:
    """Raise unless `got` fits `expected` (same rank; equal wherever both sizes are known)."""
    if expected.rank is None or got.rank is None:
        return
    if not expected.is_compatible_with(got):
        raise TransferError(f"input {name!r} expects shape {format_shape(expected)}, got {format_shape(got)}")
