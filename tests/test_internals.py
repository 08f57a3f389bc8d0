"""Each entry of `transfer._compat` (the one module that touches TensorFlow/Keras internals),
probed on the installed versions: an upgrade that breaks one fails here, naming the entry and
the versions it was checked on. And no other module of transfer names those internals."""
from __future__ import annotations

import ast
import contextlib
import logging
import re
from pathlib import Path

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer import _compat

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = {name: value for name, value in vars(_compat).items() if hasattr(value, "checked_on")}


@contextlib.contextmanager
def probing(name: str):
    """Turn any failure into one message: the entry, what it wraps, where it was checked, what is installed."""
    entry = ENTRIES[name]
    try:
        yield entry
    except Exception as error:  # noqa: BLE001 - an assertion or whatever the private API raised
        pytest.fail(f"transfer._compat.{name} (wraps {entry.wraps}; checked on {entry.checked_on}) does not hold "
                    f"on the installed TensorFlow {tf.__version__}, Keras {keras.__version__}: "
                    f"{type(error).__name__}: {error}. Fix that entry in transfer/_compat.py (or keep the version "
                    "bounds in pyproject.toml below this release)", pytrace=False)


# -- graphs made here ---------------------------------------------------------------------------

def graph_def_with_a_function():
    """x -> inner(x) * 2, `inner` a tf.function called through a (Stateful)PartitionedCall."""
    @tf.function
    def inner(x):
        return tf.nn.relu(x) + 1.0

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def outer(x):
        return inner(x) * 2.0

    return outer.get_concrete_function().graph.as_graph_def()


def called_function_name(graph_def) -> str:
    return next(node.attr["f"].func.name for node in graph_def.node if node.op.endswith("PartitionedCall"))


def keras_step_graphs_in_registry():
    """Fit a tiny model: the CustomGradient entries it registers, with the graphs their closures hold."""
    from transfer.training.trace_memory import _closure_graphs

    registry = _compat.gradient_registry()
    before = set(registry)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), epochs=1, verbose=0)
    added = {name: registry[name] for name in registry if name not in before}
    return added, {name: list(_closure_graphs(_compat.registered_gradient(entry))) for name, entry in added.items()}


def outer_graph_names(graph) -> list[str]:
    names = []
    while graph is not None:
        names.append(getattr(graph, "name", None))
        graph = getattr(graph, "outer_graph", None)
    return names


# -- one probe per entry --------------------------------------------------------------------------

def probe_freeze_variables(tmp_path):
    weight = tf.Variable([[2.0], [3.0], [4.0]])

    @tf.function
    def inner(x):
        return tf.matmul(x, weight)

    function = tf.function(lambda x: inner(x) + 1.0).get_concrete_function(tf.TensorSpec([None, 3], tf.float32))
    frozen = _compat.freeze_variables(function)
    graph_def = frozen.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    assert "Const" in ops and not ops & {"ReadVariableOp", "VarHandleOp", "StatefulPartitionedCall"}, sorted(ops)
    assert not graph_def.library.function, "the called bodies should be inlined, no function library left"
    assert [t.dtype for t in frozen.inputs] == [tf.float32] and len(frozen.outputs) == 1
    np.testing.assert_allclose(frozen(tf.ones((2, 3)))[0], [[10.0], [10.0]])


def probe_function_body_graph(tmp_path):
    graph_def = graph_def_with_a_function()
    function_def = next(f for f in graph_def.library.function if f.signature.name == called_function_name(graph_def))
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        body = _compat.function_body_graph(function_def, input_shapes=[tf.TensorShape(None)])
    assert "Relu" in {op.type for op in body.get_operations()}


def probe_is_registered_op(tmp_path):
    assert _compat.is_registered_op("Conv2D") and _compat.is_registered_op("MatMul")
    assert not _compat.is_registered_op("NoSuchOpAnywhere")


def probe_is_library_function(tmp_path):
    graph_def = graph_def_with_a_function()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    assert _compat.is_library_function(graph, called_function_name(graph_def)) is True
    assert _compat.is_library_function(graph, "MatMul") is False


def probe_gradient_function(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4, 4, 1])
        product = tf.matmul(tf.reshape(x, [4, 4]), tf.ones([4, 4]))
        resized = tf.raw_ops.ResizeArea(images=x, size=[2, 2])
    assert callable(_compat.gradient_function(product.op))
    with pytest.raises(LookupError):
        _compat.gradient_function(resized.op)


def probe_wrapped_function(tmp_path):
    graph_def = graph_def_with_a_function()

    def body():
        tf.graph_util.import_graph_def(graph_def, name="")

    graph = tf.compat.v1.wrap_function(body, []).graph
    rewrapped = _compat.wrapped_function(graph)
    pruned = rewrapped.prune(feeds=[graph.get_tensor_by_name("x:0")], fetches=[graph.get_tensor_by_name("Identity:0")])
    np.testing.assert_allclose(pruned(tf.constant([[-1.0, 0.0, 2.0]]))[0], [[2.0, 2.0, 6.0]])


def probe_deprecation_silenced(tmp_path):
    """Silenced, `extract_sub_graph` logs no deprecation notice; not silenced, it does (a notice
    prints once per process: the test forgets which ones were printed)."""
    from tensorflow.python.util import deprecation

    graph_def = graph_def_with_a_function()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    level = logger.level  # the CLI's tests set it to ERROR: a notice would be dropped before any handler
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        deprecation._PRINTED_WARNING.clear()
        with _compat.deprecation_silenced():
            tf.compat.v1.graph_util.extract_sub_graph(graph_def, ["Identity"])
        silenced = [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
        tf.compat.v1.graph_util.extract_sub_graph(graph_def, ["Identity"])
        loud = [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert silenced == [], silenced
    assert loud, "extract_sub_graph printed no deprecation notice: silencing it may no longer be needed"


def probe_v1_saved_model_loader(tmp_path):
    module = tf.Module()
    module.weight = tf.Variable([[2.0], [3.0]])
    module.serve = tf.function(lambda x: {"y": tf.matmul(x, module.weight)},
                               input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.serve})
    loader = _compat.v1_saved_model_loader(str(tmp_path / "saved"))
    meta_graph = loader.get_meta_graph_def_from_tags(["serve"])
    assert meta_graph.graph_def.node and meta_graph.saver_def.restore_op_name
    assert loader.get_meta_graph_def_from_tags(["serve"]) is meta_graph, "edits to the MetaGraphDef must reach load"
    loaded = loader.load(tags=["serve"])
    outputs = loaded.signatures["serving_default"](x=tf.ones((1, 2)))
    np.testing.assert_allclose(next(iter(outputs.values())), [[5.0]])


def probe_gradient_registry(tmp_path):
    registry = _compat.gradient_registry()
    assert isinstance(registry, dict) and "MatMul" in registry
    assert _compat.gradient_registry() is registry, "the registry itself, so that entries can be dropped"


def probe_registered_gradient(tmp_path):
    registry = _compat.gradient_registry()
    assert callable(_compat.registered_gradient(registry["MatMul"]))


def probe_is_custom_gradient_name(tmp_path):
    @tf.custom_gradient
    def doubled(x):
        return 2.0 * x, lambda upstream: 2.0 * upstream

    registry = _compat.gradient_registry()
    before = set(registry)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = doubled(x)
        return tape.gradient(y, x)

    np.testing.assert_allclose(step(tf.ones(2)), [2.0, 2.0])
    added = [name for name in registry if name not in before]
    assert added and all(_compat.is_custom_gradient_name(name) for name in added), added
    assert not _compat.is_custom_gradient_name("MatMul")


def probe_is_keras_step_graph_name(tmp_path):
    """What `transfer.training.trace_memory` relies on (tensorflow/tensorflow#97697): a `model.fit`
    leaves CustomGradient entries whose closures hold tensors of a Keras step graph."""
    added, graphs = keras_step_graphs_in_registry()
    custom = [name for name in added if _compat.is_custom_gradient_name(name)]
    assert custom, f"model.fit registered no CustomGradient entry (TF may have fixed #97697): {sorted(added)}"
    names = {name: [outer_graph_names(g) for g in graphs[name]] for name in custom}
    assert any(_compat.is_keras_step_graph_name(n) for chains in names.values() for chain in chains for n in chain), \
        f"no closure graph of the new entries is a Keras step graph: {names}"


@keras.saving.register_keras_serializable(package="test_compat")
class SafeModeRecorder(keras.layers.Layer):
    seen = []

    @classmethod
    def from_config(cls, config):
        cls.seen.append(_compat.keras_safe_mode())
        return cls(**config)

    def call(self, inputs):
        return inputs


def probe_keras_safe_mode(tmp_path):
    inputs = keras.Input((2,))
    keras.Model(inputs, SafeModeRecorder()(inputs)).save(tmp_path / "model.keras")
    assert _compat.keras_safe_mode() is None  # outside a load
    SafeModeRecorder.seen.clear()
    keras.models.load_model(tmp_path / "model.keras")
    keras.models.load_model(tmp_path / "model.keras", safe_mode=False)
    assert SafeModeRecorder.seen == [True, False]


def probe_tracking_unlocked(tmp_path):
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    with pytest.raises(ValueError):
        layer.add_weight(shape=(1,), name="late")
    with _compat.tracking_unlocked(layer):
        late = layer.add_weight(shape=(1,), name="late")
    assert any(w is late for w in layer.weights)
    with pytest.raises(ValueError):  # locked again
        layer.add_weight(shape=(1,), name="later")


def probe_symbolic_build(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = len(model.metrics_variables)  # the loss tracker's
    assert not model.optimizer.built
    _compat.symbolic_build(model, (tf.ones((4, 3)), tf.zeros((4,), tf.int32)))
    assert model.optimizer.built and len(model.optimizer.variables) > 1
    assert len(model.metrics_variables) > before  # the accuracy's


def probe_class_weight_map_fn(tmp_path):
    data = tf.data.Dataset.from_tensor_slices((np.ones((3, 2), "float32"), np.array([0, 1, 1]))).batch(3)
    x, y, weights = next(iter(data.map(_compat.class_weight_map_fn({0: 1.0, 1: 5.0}))))
    np.testing.assert_allclose(weights, [1.0, 5.0, 5.0])


def built_optimizer(*variables):
    optimizer = keras.optimizers.Adam()
    optimizer.build(list(variables))
    return optimizer


def probe_optimizer_variable_key(tmp_path):
    a, b = keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(2, "float32"))
    optimizer = built_optimizer(a, b)
    key = _compat.optimizer_variable_key
    assert key(optimizer, a) == key(optimizer, a) and key(optimizer, a) != key(optimizer, b)
    assert len({key(optimizer, a), key(optimizer, b)}) == 2  # hashable


def probe_optimizer_check_known(tmp_path):
    a, b = keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(2, "float32"))
    optimizer = built_optimizer(a)
    _compat.optimizer_check_known(optimizer, [a])
    with pytest.raises(ValueError):
        _compat.optimizer_check_known(optimizer, [b])


def probe_optimizer_built_variables(tmp_path):
    a, b = keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(2, "float32"))
    built = _compat.optimizer_built_variables(built_optimizer(a, b))
    assert len(built) == 2 and built[0] is a and built[1] is b


PROBES = {name[len("probe_"):]: probe for name, probe in globals().items() if name.startswith("probe_")}


def test_every_entry_has_a_probe_and_names_what_it_wraps_and_where_it_was_checked():
    assert sorted(ENTRIES) == sorted(PROBES)
    for name, entry in ENTRIES.items():
        assert entry.wraps and entry.checked_on, name
        doc = " ".join((entry.__doc__ or "").split())
        assert entry.checked_on in doc, f"{name}'s docstring should say it was checked on {entry.checked_on}"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entry_holds_on_the_installed_versions(name, tmp_path):
    with probing(name):
        PROBES[name](tmp_path)


def test_the_versions_checked_on_are_the_installed_ones_or_the_bounds_were_raised_knowingly():
    """`CHECKED_ON` names the newest versions the probes ran on; pyproject's upper bounds let in
    nothing newer than its minor releases (raise both together, after these probes pass)."""
    import tomllib

    checked = dict(re.findall(r"(TF|Keras) (\d+\.\d+)", _compat.CHECKED_ON))
    bounds = {
        name: re.search(r"<(\d+)\.(\d+)", spec).groups()
        for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        for name in ("tensorflow", "keras") if re.match(rf"{name}\b", spec)}
    for ours, package in (("TF", "tensorflow"), ("Keras", "keras")):
        major, minor = map(int, checked[ours].split("."))
        assert (major, minor + 1) == tuple(map(int, bounds[package])), \
            f"pyproject's bound on {package} ({bounds[package]}) should sit just above {ours} {checked[ours]}"


# -- nothing else names them ---------------------------------------------------------------------

MODULE_PATHS = re.compile(r"\b(?:tensorflow\.python|keras\.src)\b")
# What _compat wraps, by name: private attributes, the internal modules and functions, the names
# and strings TF and Keras use internally. Each must occur in _compat.py (checked below).
PRIVATE_ATTRIBUTES = {"_is_function", "_symbolic_build", "_var_key", "_check_variables_are_known",
                      "_trainable_variables", "_tracker", "_gradient_registry", "_registry", "_EagerSavedModelLoader"}
INTERNAL_NAMES = {"convert_variables_to_constants_v2", "function_def_to_graph", "op_def_registry",
                  "get_gradient_function", "WrappedFunction", "VariableHolder", "load_v1_in_v2", "deprecation",
                  "serialization_lib", "in_safe_mode", "make_class_weight_map_fn"}
INTERNAL_STRINGS = {"CustomGradient-", "one_step_on_data", "multi_step_on_iterator"}
# Private attributes with a public twin, used nowhere, _compat included: a Keras optimizer's
# `iterations` and `variables` (GroupedOptimizer once read `_iterations` and `_variables`).
PUBLIC_INSTEAD = {"_iterations", "_variables"}


def sources():
    for folder in ("transfer", "heads", "datasets"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != ROOT / "transfer" / "_compat.py":
                yield path


def internals_named(source: str) -> list[str]:
    found = [f"line {source[:m.start()].count(chr(10)) + 1}: {m.group()}" for m in MODULE_PATHS.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [part for alias in node.names for part in alias.name.split(".")]
            names += (node.module or "").split(".") if isinstance(node, ast.ImportFrom) else []
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [s for s in INTERNAL_STRINGS if s in node.value] + (
                [node.value] if node.value in PRIVATE_ATTRIBUTES | PUBLIC_INSTEAD else [])  # getattr(x, "_registry")
        found += [f"line {node.lineno}: {name}" for name in names
                  if name in PRIVATE_ATTRIBUTES | INTERNAL_NAMES | INTERNAL_STRINGS | PUBLIC_INSTEAD]
    return sorted(found, key=lambda where: int(where.split()[1].rstrip(":")))


def test_no_module_but_compat_names_tensorflow_or_keras_internals():
    offenders = {str(path.relative_to(ROOT)): found for path in sources()
                 if (found := internals_named(path.read_text()))}
    assert offenders == {}, ("TensorFlow/Keras internals belong in transfer/_compat.py (one entry each, with the "
                             f"versions it was checked on, probed in tests/test_internals.py): {offenders}")


def test_the_check_knows_what_compat_wraps():
    """The names the check above refuses are those _compat uses, and it does find them there."""
    compat = (ROOT / "transfer" / "_compat.py").read_text()
    for name in PRIVATE_ATTRIBUTES | INTERNAL_NAMES | INTERNAL_STRINGS:
        assert name in compat, name
    found = " ".join(internals_named(compat))
    assert "tensorflow.python" in found and "keras.src" in found
    assert all(f": {name}" in found for name in PRIVATE_ATTRIBUTES | INTERNAL_NAMES | INTERNAL_STRINGS), found
    assert not any(f": {name}" in found for name in PUBLIC_INSTEAD), found
