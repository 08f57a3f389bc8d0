"""What a frozen graph holds: inputs, outputs, weight layers, candidate cuts, the ops a cut needs.

`GraphInfo` reads an imported `tf.Graph` (import gives shape inference for free) and answers
structural questions. It knows nothing of Keras, cuts given as text, or files.
"""
from __future__ import annotations

import collections
import functools

import tensorflow as tf

from transfer import _compat
from transfer.errors import TransferError

# Ops that consume learned weights: a "weight layer" is one of these fed by a float constant.
MATRIX_OPS = frozenset({
    "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul",
    "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
})
NORM_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
# Elementwise ops that hold weights when one operand is constant (bias, decomposed batch norm).
AFFINE_OPS = frozenset({"BiasAdd", "Add", "AddV2", "Mul", "Sub"})
# Sub-scopes that belong to their parent layer (Keras decomposes BatchNormalization there).
_MERGED_SUBSCOPES = frozenset({"batchnorm", "BatchNorm"})
# Ops that never make a useful cut: bookkeeping, constants and shape arithmetic.
_NOT_CUTS = frozenset({"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert",
                       "VarHandleOp", "VariableV2", "ReadVariableOp", "Shape", "Size", "Rank"})
# TF1 control flow: a while loop's frame is entered by `Enter` and left by `Exit`. (A `Merge`
# is loop plumbing when a `NextIteration` feeds it; a `tf.cond`'s Merge is the branch's result.)
_LOOP_OPS = frozenset({"Enter", "RefEnter", "Exit", "RefExit", "Switch", "RefSwitch",
                       "NextIteration", "RefNextIteration", "LoopCond", "ControlTrigger"})


def parent_scope(name: str) -> str:
    """`a/b/op` -> `a/b`; a top-level op has scope ''."""
    return name.rpartition("/")[0]


def layer_scope(name: str) -> str:
    """The name scope of the layer that owns an op (`x/bn/batchnorm/mul` -> `x/bn`)."""
    scope = parent_scope(name)
    while scope.rpartition("/")[2] in _MERGED_SUBSCOPES:
        scope = parent_scope(scope)
    return scope


def format_shape(shape: tf.TensorShape) -> str:
    if shape.rank is None:
        return "<unknown rank>"
    sizes = ", ".join("None" if d is None else str(d) for d in shape.as_list())
    return f"({sizes},)" if shape.rank == 1 else f"({sizes})"


class GraphInfo:
    """Structural queries over an imported graph; everything is computed once, on demand."""

    def __init__(self, graph: tf.Graph):
        self.graph = graph
        self.operations = graph.get_operations()  # import order is topological
        self.by_name = {op.name: op for op in self.operations}
        self.position = {op.name: i for i, op in enumerate(self.operations)}
        self._fixes_by_fed: dict[tuple, dict] = {}

    # -- basic structure -------------------------------------------------------------------

    @functools.cached_property
    def consumers(self) -> dict[str, list[tf.Operation]]:
        found = collections.defaultdict(list)
        for op in self.operations:
            for tensor in op.inputs:
                found[tensor.op.name].append(op)
            for control in op.control_inputs:
                found[control.name].append(op)
        return found

    @functools.cached_property
    def placeholders(self) -> list[tf.Operation]:
        return [op for op in self.operations if op.type == "Placeholder"]

    def require_placeholder(self, source: str) -> None:
        if not self.placeholders:
            raise TransferError(f"{source} has no Placeholder: the graph has no input to feed")

    @functools.cached_property
    def outputs(self) -> list[tf.Operation]:
        """Ops whose result nobody consumes: what the graph was built to compute (loop
        bookkeeping left unconsumed, such as a while loop's counter, is not)."""
        return [op for op in self.operations
                if op.outputs and op.name not in self.consumers and op.type not in _NOT_CUTS
                and self.depends_on_input(op) and not self.is_loop_plumbing(op)]

    def output_tensors(self, declared: dict[str, str] | None = None) -> dict[str, tf.Tensor]:
        """The graph's outputs by name: a file's declared ones (a signature's, by output key;
        several may be outputs of one op), else the unconsumed ops' first outputs by op name."""
        if declared:
            return {key: self.graph.get_tensor_by_name(name) for key, name in declared.items()}
        return {op.name: op.outputs[0] for op in self.outputs}

    @functools.cached_property
    def _input_dependent(self) -> frozenset[str]:
        """Names of ops whose value changes with some placeholder (the rest is constant)."""
        dependent = set()
        for op in self.operations:
            if op.type == "Placeholder" or any(t.op.name in dependent for t in op.inputs):
                dependent.add(op.name)
        return frozenset(dependent)

    @functools.cached_property
    def _loop_depth(self) -> dict[str, int]:
        """How many TF1 while-loop frames each op sits in (`Enter` opens one, `Exit` closes it)."""
        depth: dict[str, int] = {}
        for op in self.operations:
            inner = max((depth.get(t.op.name, 0) for t in op.inputs), default=0)
            depth[op.name] = inner + 1 if op.type in ("Enter", "RefEnter") else (
                max(inner - 1, 0) if op.type in ("Exit", "RefExit") else inner)
        return depth

    def is_loop_plumbing(self, op: tf.Operation) -> bool:
        """Control flow, TensorArrays and everything inside a loop body: nothing a feature is."""
        if op.type in ("Merge", "RefMerge"):
            return any(t.op.type in ("NextIteration", "RefNextIteration") for t in op.inputs)
        return op.type in _LOOP_OPS or op.type.startswith("TensorArray") or self._loop_depth[op.name] > 0

    @functools.cached_property
    def batch_sizes(self) -> frozenset:
        """The placeholders' batch dimensions (None when unknown): what a batch-carrying tensor starts with."""
        return frozenset(op.outputs[0].shape[0] for op in self.placeholders if op.outputs[0].shape.rank)

    def carries_batch(self, tensor: tf.Tensor) -> bool:
        if tensor.shape.rank is None or tensor.shape.rank == 0:
            return False
        return not self.batch_sizes or tensor.shape[0] in self.batch_sizes

    def depends_on_input(self, op: tf.Operation) -> bool:
        return op.name in self._input_dependent

    def is_constant(self, tensor: tf.Tensor) -> bool:
        return tensor.op.name not in self._input_dependent

    def op_counts(self) -> collections.Counter:
        return collections.Counter(op.type for op in self.operations)

    # -- what a cut needs ------------------------------------------------------------------

    def ancestors(self, ops: list[tf.Operation], stop_at: frozenset[str] = frozenset()) -> list[tf.Operation]:
        """Every op needed to compute `ops` (data and control inputs), not walking past `stop_at`."""
        seen, stack = set(), list(ops)
        while stack:
            op = stack.pop()
            if op.name in seen:
                continue
            seen.add(op.name)
            if op.name in stop_at:
                continue
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
        return sorted((self.by_name[n] for n in seen), key=lambda op: self.position[op.name])

    def placeholders_needed(self, ops: list[tf.Operation]) -> list[tf.Operation]:
        needed = frozenset().union(*(self._placeholders_reaching[op.name] for op in ops))
        return [op for op in self.placeholders if op.name in needed]

    @functools.cached_property
    def _placeholders_reaching(self) -> dict[str, frozenset[str]]:
        """Each op's placeholders (through data and control inputs), from one pass in graph order:
        walking each cut's ancestors instead took ~1 s for ResNet50's 177 candidate cuts."""
        reaching: dict[str, frozenset[str]] = {}
        for op in self.operations:
            found = frozenset([op.name]) if op.type == "Placeholder" else frozenset()
            for source in (*(t.op for t in op.inputs), *op.control_inputs):
                found |= reaching.get(source.name, frozenset())
            reaching[op.name] = found
        return reaching

    def descendants(self, op: tf.Operation) -> set[str]:
        """Names of `op` and of every op computed from it."""
        seen, stack = set(), [op.name]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(user.name for user in self.consumers.get(name, []))
        return seen

    def batch_fixing_tensor(self, fed: list[tf.Tensor], cut: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor] | None:
        """The first tensor between the fed tensors and `cut` that has batch 1 while its op's
        input's batch is open (a Reshape to a constant [1, 2048]), with that input: the cut
        cannot take more than one example. None when the batch stays open (or is unknown)."""
        key = tuple(t.name for t in fed)
        if key not in self._fixes_by_fed:
            self._fixes_by_fed[key] = self._first_batch_fixes(fed)
        found = self._fixes_by_fed[key].get(cut.name)
        return None if found is None else found[1:]

    def _first_batch_fixes(self, fed: list[tf.Tensor]) -> dict[str, tuple]:
        """Every tensor's `batch_fixing_tensor` at once, as (where, fixed, before): one pass in
        graph order carries each tensor's earliest fix on its way from `fed` (walking each cut's
        ancestors took ~1.5 s for ResNet50's 177 candidate cuts). Only tensors on the way count:
        a batch norm's per-channel mean of one channel has shape (1,) and fixes nothing."""
        batched = {t.name for t in fed if t.shape.rank and t.shape[0] is None}
        stop = {t.op.name for t in fed}
        first: dict[str, tuple] = {}
        for op in self.operations:
            if op.name in stop:
                continue
            upstream = [*op.inputs, *(t for control in op.control_inputs for t in control.inputs)]
            inherited = [first[t.name] for t in upstream if t.name in first]
            open_inputs = [t for t in op.inputs if t.name in batched]
            for output in op.outputs:
                own = []
                if open_inputs and output.shape.rank:
                    if output.shape[0] is None:
                        batched.add(output.name)
                    elif output.shape[0] == 1 and op.type != "ExpandDims":
                        own = [((self.position[op.name], output.value_index), output, open_inputs[0])]
                if inherited or own:
                    first[output.name] = min([*inherited, *own], key=lambda fix: fix[0])
        return first

    # -- where images go in ----------------------------------------------------------------

    def image_entry(self, source: tf.Operation) -> tf.Tensor | None:
        """Where the image enters the network at or after `source` (a placeholder holding a JPEG
        string, say): the float rank-4 tensor that feeds the first weight layer, i.e. the image
        after decoding, resizing and scaling (`Mul` in TF's retrain.py Inception graph)."""
        downstream = self.descendants(source)
        for op in self.operations:
            if op.name in downstream and self.weight_inputs(op):
                image = self.data_input(op)
                usable = image is not None and image.dtype.is_floating and image.shape.rank == 4
                return image if usable else None
        return None

    def image_input_hint(self, tensor: tf.Tensor) -> str | None:
        """For a graph input that cannot take a batch of images as it is (a string, a scalar, a
        batch fixed to 1): one sentence saying so and where to feed instead. None otherwise."""
        problem = not_an_image_batch(tensor)
        if problem is None:
            return None
        said = (f"input {tensor.op.name!r} is {problem} ({tensor.dtype.name} {format_shape(tensor.shape)}), "
                "not a batch of images")
        entry = self.image_entry(tensor.op)
        if entry is None:
            return f"{said}; feed the network where the image enters it with --inputs TENSOR"
        name = entry.op.name if entry.value_index == 0 else entry.name
        return (f"{said}; the image enters the network at {name!r} ({entry.dtype.name} {format_shape(entry.shape)}): "
                f"feed it there with --inputs {name} (inputs={name!r})")

    # -- layers and cuts -------------------------------------------------------------------

    def weight_inputs(self, op: tf.Operation) -> list[tf.Tensor]:
        """The float constant operands of a weight-consuming op; [] if it holds no weights."""
        if op.type not in MATRIX_OPS | NORM_OPS | AFFINE_OPS or not self.depends_on_input(op):
            return []
        weights = [t for t in op.inputs if t.dtype.is_floating and self.is_constant(t)]
        if op.type in AFFINE_OPS:
            # A scalar (epsilon, 1/255 scaling) is no weight: require a vector or more.
            weights = [t for t in weights if t.shape.rank is None or t.shape.num_elements() != 1]
        return weights

    @functools.cached_property
    def weight_layers(self) -> list[tuple[str, list[tf.Operation]]]:
        """(layer scope, its weight-consuming ops) in topological order of each layer's last op."""
        layers: dict[str, list[tf.Operation]] = {}
        for op in self.operations:
            if self.weight_inputs(op):
                layers.setdefault(layer_scope(op.name), []).append(op)
        return sorted(layers.items(), key=lambda item: self.position[item[1][-1].name])

    def scope_outputs(self, scope: str) -> list[tf.Operation]:
        """Input-dependent float ops inside `scope` whose result leaves it (or ends the graph)."""
        prefix = scope + "/"
        found = []
        for op in self.operations:
            if not op.name.startswith(prefix) or not self._cuttable(op):
                continue
            users = self.consumers.get(op.name, [])
            if not users or any(not user.name.startswith(prefix) for user in users):
                found.append(op)
        return found

    def _cuttable(self, op: tf.Operation) -> bool:
        return (op.type not in _NOT_CUTS and bool(op.outputs) and op.outputs[0].dtype.is_floating
                and self.depends_on_input(op))

    @functools.cached_property
    def candidate_cuts(self) -> list[tf.Tensor]:
        """Layer outputs: float, input-dependent tensors that carry the batch dimension and whose
        op's result leaves its name scope; loop plumbing never (see `is_loop_plumbing`)."""
        found = []
        for op in self.operations:
            if not self._cuttable(op) or self.is_loop_plumbing(op):
                continue
            if parent_scope(op.name) and (op.type == "Identity" or not self._leaves_scope(op)):
                continue  # top-level ops are named on purpose; inner Identity ops are call plumbing
            found += [t for t in op.outputs if t.dtype.is_floating and self.carries_batch(t)]
        return found

    def _leaves_scope(self, op: tf.Operation) -> bool:
        scope = parent_scope(op.name) + "/"
        users = self.consumers.get(op.name, [])
        return not users or any(not u.name.startswith(scope) for u in users)

    def data_input(self, op: tf.Operation) -> tf.Tensor | None:
        """The single input-dependent operand of `op`, or None if there is not exactly one.
        Integer operands computed from the input (a Reshape's target from `Shape`) are no data
        when a float operand is there."""
        dependent = [t for t in op.inputs if not self.is_constant(t)]
        if len(dependent) > 1:
            dependent = [t for t in dependent if t.dtype.is_floating]
        return dependent[0] if len(dependent) == 1 else None

    def source_of(self, tensor: tf.Tensor) -> tf.Tensor | None:
        """What `tensor` passes on: output i of an IdentityN (an inlined function call's results)
        is its input i; otherwise the op's single data input."""
        if tensor.op.type == "IdentityN":
            return tensor.op.inputs[tensor.value_index]
        return self.data_input(tensor.op)

    @functools.cached_property
    def head_inputs(self) -> list[tf.Tensor]:
        """The tensors the last weight layers read (convolutions or MatMuls with no other one
        after them, outside loops): a detector's box predictors read the feature maps."""
        matrix_ops = [op for op in self.operations if op.type in _CLASSIFIER_OPS and self.weight_inputs(op)
                      and not self.is_loop_plumbing(op)]
        upstream = {op.name for op in self.ancestors([t.op for op in matrix_ops for t in op.inputs])}
        found = {}
        for op in matrix_ops:
            feature = self.data_input(op) if op.name not in upstream else None
            if feature is not None:
                feature = self.layer_output(feature)
                found.setdefault(feature.name, feature)
        return sorted(found.values(), key=lambda t: self.position[t.op.name])

    @functools.cached_property
    def _candidate_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.candidate_cuts)

    def layer_output(self, tensor: tf.Tensor) -> tf.Tensor:
        """The layer output a weight op reads through reshapes (a Keras Dense on a sequence,
        `tensordot`, multiplies a (batch × time, channels) reshape of it); a candidate cut on
        the way back, or the first op that is no reshape; else `tensor` itself."""
        found = tensor
        while found.name not in self._candidate_names and found.op.type in _RESHAPES:
            found = self.data_input(found.op)
            if found is None:
                return tensor
        return found if self.carries_batch(found) else tensor


# Ops `auto` walks back through: they do not learn (activations, pooling, reshapes, bias).
_PASS_THROUGH = frozenset({
    "Softmax", "LogSoftmax", "Sigmoid", "Identity", "Reshape", "Squeeze", "ExpandDims", "Mean",
    "Max", "AvgPool", "MaxPool", "Relu", "Relu6", "Cast", "StopGradient", "BiasAdd", "Add",
    "AddV2", "Sub", "Mul", "RealDiv", "Transpose", "IdentityN",
})
_RESHAPES = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "ExpandDims"})
_CLASSIFIER_OPS = frozenset({"MatMul", "Conv2D", "BatchMatMulV2", "BatchMatMulV3", "Einsum"})


def find_penultimate(info: GraphInfo, output: tf.Tensor) -> tuple[tf.Tensor | None, str]:
    """What `auto` cuts at: walk back from `output` through what does not learn; the last weight
    layer met is the classifier and the tensor that feeds it is the feature. With no classifier
    there (a detector's output comes out of NMS loops), the feature is the last tensor the last
    weight layers read: the feature extractor's output the box predictors share.

    Returns (feature tensor, why) or (None, why not).
    """
    feature, why = _walk_to_classifier(info, output)
    if feature is None and info.head_inputs:
        feature = info.head_inputs[-1]
        readers = list(dict.fromkeys(layer_scope(op.name) or op.name for op in info.consumers[feature.op.name]
                                     if op.type in _CLASSIFIER_OPS))
        shown = ", ".join(readers[:4]) + (", …" if len(readers) > 4 else "")
        why = f"the feature extractor's last output: the last weight layers ({shown}) read it; {why}"
    return feature, why


def _walk_to_classifier(info: GraphInfo, output: tf.Tensor) -> tuple[tf.Tensor | None, str]:
    tensor = output
    while True:
        op = tensor.op
        if op.type in _CLASSIFIER_OPS and info.weight_inputs(op):
            feature = info.data_input(op)
            if feature is None:
                return None, f"the classifier {op.name!r} has no single data input"
            weight = info.weight_inputs(op)[0]
            why = (f"feeds the classifier {layer_scope(op.name) or op.name!r} "
                   f"({op.type}, weights {format_shape(weight.shape)})")
            return info.layer_output(feature), why
        if op.type not in _PASS_THROUGH:
            return None, f"no classifier found walking back from {output.name!r} (stopped at {op.type} {op.name!r})"
        source = info.source_of(tensor)
        if source is None:
            return None, f"no classifier found walking back from {output.name!r} (branches at {op.name!r})"
        tensor = source


def not_an_image_batch(tensor: tf.Tensor) -> str | None:
    """Why `tensor` cannot take a batch of images as it is, or None if it might."""
    if tensor.dtype == tf.string:
        return "a string" + (" scalar" if tensor.shape.rank == 0 else "")
    if tensor.shape.rank == 0:
        return "a scalar"
    if tensor.shape.rank and tensor.shape[0] == 1:
        return "a batch fixed to 1"
    return None


def component_matches(pattern: str, component: str) -> bool:
    """`conv1` matches `conv1` and TF's uniquified `conv1_1` (Keras 3 reuses scopes that way)."""
    if pattern == component:
        return True
    return component.startswith(pattern + "_") and component[len(pattern) + 1:].isdigit()


def subgraph(graph_def, keep: list[str]):
    """The nodes `keep` needs (`extract_sub_graph`, without its deprecation notice on every call)."""
    with _compat.deprecation_silenced():
        return tf.compat.v1.graph_util.extract_sub_graph(graph_def, keep)


def import_graph_def(graph_def, source: str = "graph", wrapped: bool = True):
    """Import into a TF1-style wrapped function, whose `prune` gives the cut's callable; or, with
    `wrapped=False`, into a plain `tf.Graph` (half the time, enough for analysis alone)."""
    def body():
        tf.graph_util.import_graph_def(graph_def, name="")

    try:
        if not wrapped:
            graph = tf.Graph()
            with graph.as_default():
                body()
            return graph
        return tf.compat.v1.wrap_function(body, [])
    except (ValueError, TypeError, tf.errors.OpError) as error:
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise TransferError(f"{source} does not import as a TensorFlow graph: {first}") from None


def rewrap(graph):
    """A wrapped function over a graph `import_graph_def` made (its function long gone), so that it
    can be pruned again without importing the GraphDef again."""
    return _compat.wrapped_function(graph)
