"""A graph is code: hostile graphs must run nothing (issue 11).

Each attack hides an op behind the cut (by data or control dependency, in a function, a loop
body, a branch, a serialized graph) or in what loading a SavedModel runs (a TF1 main_op, a TF2
resource initializer). Each is refused naming the op, and a canary file proves that nothing ran;
allowing the op makes the same graph write the canary, so the fixtures are real attacks.
"""
from __future__ import annotations

import re
import shutil
import signal
import sqlite3

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer import Backbone, FeatureLayer, _compat
from transfer.cli.main import main
from transfer.errors import TransferError
from transfer.graph.inspection import inspect_graph
from transfer.graph.loading import load_graph
from transfer.graph.op_allowlist import ALLOWED_OPS, RESTORE_OPS
from transfer.graph.safety import check_ops

BATCH = np.ones((2, 4), np.float32)

# -- the allow-list itself ---------------------------------------------------------------------

# What must never be on the list: ops that touch files, the network, Python, datasets, logs or
# the process, by the words TensorFlow names them with.
DANGEROUS = re.compile(
    r"File|Files|Dataset|Reader|Save|Restore|Checkpoint|PyFunc|Print|Summary|Sql|Record|Iterator|"
    r"Remote|Distributed|DataService|Send|Recv|Collective|Immutable|Debug(?!Gradient)|Lmdb|LMDB|Event|"
    r"Proto|Vocab|Enqueue|Dequeue|Infeed|Outfeed|TPU|Xla|Abort|Sleep|Partitioner|Filesystem|"
    r"FileSystem|Mlir|Bigtable|Kafka|Queue|Barrier|Accumulator|^Stack|Session|Compile")
NAMED_IN_ISSUE = [
    "PrintV2", "CSVDataset", "CSVDatasetV2", "SqlDataset", "MatchingFilesDataset", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "RecordInput", "GenerateVocabRemapping", "LMDBDataset", "DecodeProtoV2",
    "CreateSummaryDbWriter", "ImportEvent", "DistributedSave", "DataServiceDataset", "DataServiceDatasetV4",
    "RemoteCall", "FileSystemSetConfiguration", "ExperimentalCSVDataset", "ExperimentalSqlDataset",
    "ExperimentalLMDBDataset", "DatasetFromGraph", "ReadFile", "WriteFile", "MatchingFiles", "PyFunc",
    "EagerPyFunc", "PyFuncStateless", "ImmutableConst", "SaveV2", "RestoreV2",
]


def test_every_allowed_op_is_a_registered_tensorflow_op():
    unknown = sorted(op for op in ALLOWED_OPS | RESTORE_OPS if not _compat.is_registered_op(op))
    assert unknown == []


def test_every_file_network_python_or_dataset_op_of_tf_raw_ops_is_refused():
    raw_ops = {name for name in dir(tf.raw_ops) if not name.startswith("_")}
    refused = sorted(raw_ops - ALLOWED_OPS)
    print(f"{len(refused)} of {len(raw_ops)} tf.raw_ops op types are not on the allow-list:", " ".join(refused))
    dangerous = {op for op in raw_ops if DANGEROUS.search(op)}
    assert len(dangerous) > 300  # the pattern really finds TensorFlow's I/O ops
    assert sorted(dangerous & ALLOWED_OPS) == []
    assert [op for op in NAMED_IN_ISSUE if op in ALLOWED_OPS] == []
    assert not RESTORE_OPS & ALLOWED_OPS  # reading a checkpoint is allowed in a restore op only


# -- hostile frozen graphs ---------------------------------------------------------------------


def write_graph(path, attach) -> str:
    """x (None, 4) -> features = x @ ones -> `attach(features)` -> out: the cut is `out`."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="image")
        features = tf.matmul(x, tf.constant(np.ones((4, 3), np.float32)), name="features")
        tf.identity(attach(features), name="out")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return str(path)


def after(op, tensor):
    """`tensor`, run only after `op` (a control dependency)."""
    with tf.control_dependencies([op]):
        return tf.identity(tensor)


def plus_zero(tensor, value):
    """`tensor` + 0 × `value`: a data dependency on `value`."""
    return tensor + 0.0 * tf.reduce_sum(tf.cast(value, tf.float32))


def printer(canary):
    return lambda: tf.print("pwned", output_stream=f"file://{canary}")


def print_in_function(canary):
    @tf.function
    def leak(t):
        printer(canary)()
        return t * 1.0
    return lambda f: leak(f)


def print_in_cond(canary):
    return lambda f: tf.cond(tf.reduce_sum(f) > -1e9, lambda: after(printer(canary)(), f), lambda: f)


def print_in_while_loop(canary):
    def body(i, v):
        return i + 1, after(printer(canary)(), v)
    return lambda f: tf.while_loop(lambda i, v: i < 2, body, (tf.constant(0), f))[1]


def print_in_v1_while_loop(canary):
    def attach(f):
        tf.compat.v1.disable_control_flow_v2()
        try:
            return print_in_while_loop(canary)(f)
        finally:
            tf.compat.v1.enable_control_flow_v2()
    return attach


WRITING_ATTACKS = {  # name -> (attach builder taking the canary path, the op type refused)
    "PrintV2 by control dependency": (lambda c: lambda f: after(printer(c)(), f), "PrintV2"),
    "PrintV2 in a function": (print_in_function, "PrintV2"),
    "PrintV2 in a cond branch": (print_in_cond, "PrintV2"),
    "PrintV2 in a while-loop body": (print_in_while_loop, "PrintV2"),
    "PrintV2 in a TF1 while loop": (print_in_v1_while_loop, "PrintV2"),
    "WriteFile by data dependency": (lambda c: lambda f: after(tf.io.write_file(str(c), "pwned"), f), "WriteFile"),
}


@pytest.mark.parametrize("attack", sorted(WRITING_ATTACKS))
def test_a_graph_that_writes_a_file_is_refused_and_writes_nothing(tmp_path, attack):
    build, op_type = WRITING_ATTACKS[attack]
    canary = tmp_path / "canary.txt"
    path = write_graph(tmp_path / "hostile.pb", build(canary))
    with pytest.raises(TransferError,
                       match=rf"of type {op_type}\b.*not on transfer's allow-list.*--allow-op {op_type}"):
        Backbone.load(path, cut="out")(BATCH)
    assert not canary.exists()
    # The same graph, allowed, really writes: the fixture is an attack, not a broken graph.
    Backbone.load(path, cut="out", allow_ops=[op_type])(BATCH)
    assert canary.exists()


def test_where_the_refused_op_sits_is_named(tmp_path):
    cases = {"PrintV2 in a function": r"in function '__inference_leak_\d+' called by",
             "PrintV2 in a cond branch": r"in a branch of 'cond",
             "PrintV2 in a while-loop body": r"in the body of loop 'while"}
    for attack, where in cases.items():
        path = write_graph(tmp_path / f"{len(where)}.pb", WRITING_ATTACKS[attack][0](tmp_path / "canary"))
        with pytest.raises(TransferError, match=where):
            Backbone.load(path, cut="out")


def csv_dataset(tmp_path):
    csv = tmp_path / "secret.csv"
    csv.write_text("42\n")
    return lambda f: plus_zero(f, tf.data.experimental.get_single_element(
        tf.data.experimental.CsvDataset(str(csv), [tf.float32]).take(1)))


def sql_dataset(tmp_path):
    database = tmp_path / "new.db"  # SQLite creates it: a write at a path of the graph's choosing
    return lambda f: plus_zero(f, tf.data.experimental.get_single_element(
        tf.data.experimental.SqlDataset("sqlite", str(database), "SELECT 1", (tf.int32,)).take(1)))


def matching_files_dataset(tmp_path):
    def attach(f):
        dataset = tf.raw_ops.MatchingFilesDataset(patterns=[str(tmp_path / "*")])
        (name,) = tf.raw_ops.DatasetToSingleElement(dataset=dataset, output_types=[tf.string], output_shapes=[[]])
        return plus_zero(f, tf.strings.length(name))
    return attach


def dataset_from_graph(tmp_path):
    """A CSV reader serialized into a string constant and revived by DatasetFromGraph."""
    csv = tmp_path / "secret.csv"
    csv.write_text("42\n")
    serialized = tf.raw_ops.DatasetToGraphV2(
        input_dataset=tf.data.experimental.CsvDataset(str(csv), [tf.float32])._variant_tensor).numpy()

    def attach(f):
        dataset = tf.raw_ops.DatasetFromGraph(graph_def=tf.constant(serialized))
        (value,) = tf.raw_ops.DatasetToSingleElement(dataset=dataset, output_types=[tf.float32], output_shapes=[[]])
        return plus_zero(f, value)
    return attach


def other_file_readers(tmp_path):
    secret = str(tmp_path / "secret.txt")
    return {
        "ReadFile": lambda f: plus_zero(f, tf.strings.length(tf.io.read_file(secret))),
        "MatchingFiles": lambda f: plus_zero(f, tf.size(tf.io.matching_files(secret))),
        "RecordInput": lambda f: plus_zero(f, tf.strings.length(tf.raw_ops.RecordInput(file_pattern=secret))),
        "DecodeProtoV2": lambda f: plus_zero(f, tf.io.decode_proto(
            tf.constant([b""]), "x.Y", ["a"], [tf.int32], descriptor_source=secret)[1][0]),
        "ImmutableConst": lambda f: plus_zero(f, tf.raw_ops.ImmutableConst(
            dtype=tf.float32, shape=[1], memory_region_name=secret)),
        "GenerateVocabRemapping": lambda f: plus_zero(f, tf.raw_ops.GenerateVocabRemapping(
            new_vocab_file=secret, old_vocab_file=secret, new_vocab_offset=0, num_new_vocab=1)[0]),
        "EagerPyFunc": lambda f: plus_zero(f, tf.py_function(lambda: 1.0, [], tf.float32)),
    }


READING_ATTACKS = {"CSVDatasetV2": csv_dataset, "SqlDataset": sql_dataset,
                   "MatchingFilesDataset": matching_files_dataset, "DatasetFromGraph": dataset_from_graph}


OTHER_READERS = ("ReadFile", "MatchingFiles", "RecordInput", "DecodeProtoV2", "ImmutableConst",
                 "GenerateVocabRemapping", "EagerPyFunc")


@pytest.mark.parametrize("op_type", sorted(READING_ATTACKS) + sorted(OTHER_READERS))
def test_a_graph_that_reads_files_datasets_or_python_is_refused(tmp_path, op_type):
    build = READING_ATTACKS.get(op_type) or other_file_readers(tmp_path)[op_type]
    path = write_graph(tmp_path / "hostile.pb", build(tmp_path) if op_type in READING_ATTACKS else build)
    with pytest.raises(TransferError, match=rf"of type {op_type}\b"):
        Backbone.load(path, cut="out")
    assert not (tmp_path / "new.db").exists()


def test_a_dataset_reader_allowed_really_reads_the_file(tmp_path):
    path = write_graph(tmp_path / "csv.pb", csv_dataset(tmp_path))
    graph_def = load_graph(path).graph_def
    outside = sorted({node.op for node in graph_def.node} - ALLOWED_OPS)
    assert "CSVDatasetV2" in outside
    features = Backbone.load(path, cut="out", allow_ops=outside)(BATCH)
    np.testing.assert_allclose(features, np.full((2, 3), 4.0))  # x @ ones, + 0 × 42: it ran


def test_sqlite_database_is_not_created(tmp_path):
    path = write_graph(tmp_path / "sql.pb", sql_dataset(tmp_path))
    with pytest.raises(TransferError, match="SqlDataset"):
        Backbone.load(path, cut="out")(BATCH)
    assert not (tmp_path / "new.db").exists()
    outside = sorted({node.op for node in load_graph(path).graph_def.node} - ALLOWED_OPS)
    Backbone.load(path, cut="out", allow_ops=outside)(BATCH)
    assert sqlite3.connect(tmp_path / "new.db") and (tmp_path / "new.db").exists()


def test_a_function_the_graph_does_not_define_is_refused():
    node = tf.compat.v1.NodeDef(name="call", op="PartitionedCall")
    node.attr["f"].func.name = "missing_function"
    with pytest.raises(TransferError, match="calls function 'missing_function', which the graph does not define"):
        check_ops([node], {})


def test_ops_only_outside_the_cut_do_not_matter(tmp_path):
    """A graph that merely contains a refused op (a saver, a summary) still loads."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="image")
        tf.identity(tf.matmul(x, tf.constant(np.ones((4, 3), np.float32))), name="out")
        tf.io.write_file(str(tmp_path / "canary"), "unused")
    path = tmp_path / "benign.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    np.testing.assert_allclose(Backbone.load(path, cut="out")(BATCH), np.full((2, 3), 4.0))
    assert not (tmp_path / "canary").exists()


# -- hostile SavedModels: what loading runs is checked before TensorFlow loads -------------------


class _FileWriter(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer, run by `tf.saved_model.load`, writes a file."""

    def __init__(self, canary):
        self.canary = str(canary)
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)

    def _initialize(self):
        return tf.io.write_file(self.canary, "pwned")


def tf2_saved_model(directory, canary=None):
    module = tf.Module()
    module.weights = tf.Variable(np.ones((4, 3), np.float32))
    if canary is not None:
        module.writer = _FileWriter(canary)
    module.serve = tf.function(lambda x: {"features": tf.matmul(x, module.weights)},
                               input_signature=[tf.TensorSpec((None, 4), tf.float32, name="image")])
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return str(directory)


def tf1_saved_model(directory, canary, how: str):
    """A TF1 SavedModel whose `main_op` writes a file, or whose table initializer reads one."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="image")
        weights = tf.compat.v1.get_variable("w", initializer=np.ones((4, 3), np.float32))
        features = tf.matmul(x, weights, name="features")
        session.run(tf.compat.v1.global_variables_initializer())
        if how == "main_op":
            init = tf.io.write_file(str(canary), "pwned")
        else:
            canary.write_text("a\n")
            table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                str(canary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER), -1)
            features = plus_zero(features, table.lookup(tf.constant("a")))
            init = tf.compat.v1.tables_initializer()
        builder = tf.compat.v1.saved_model.Builder(str(directory))
        signature = tf.compat.v1.saved_model.predict_signature_def({"image": x}, {"features": features})
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature},
                                             main_op=init)
        builder.save()
    return str(directory)


def test_a_tf2_resource_initializer_that_writes_is_refused_before_loading(tmp_path):
    canary = tmp_path / "canary.txt"
    path = tf2_saved_model(tmp_path / "model", canary)
    assert not canary.exists()
    with pytest.raises(TransferError, match=r"runs op 'WriteFile' of type WriteFile \(in function '__inference"):
        inspect_graph(path)
    with pytest.raises(TransferError, match="WriteFile"):
        Backbone.load(path, cut="auto")
    assert not canary.exists()
    inspect_graph(path, allow_ops=["WriteFile"])  # allowed, TensorFlow's loader runs it
    assert canary.exists()


def test_a_tf1_main_op_that_writes_is_refused_before_loading(tmp_path):
    canary = tmp_path / "canary.txt"
    path = tf1_saved_model(tmp_path / "model", canary, "main_op")
    canary.unlink(missing_ok=True)  # the session that built it ran nothing, but be sure
    assert main(["inspect", path]) == 2
    assert not canary.exists()
    inspect_graph(path, allow_ops=["WriteFile"])
    assert canary.exists()


def test_a_tf1_table_initializer_reading_a_file_is_refused(tmp_path):
    path = tf1_saved_model(tmp_path / "model", tmp_path / "vocab.txt", "table")
    with pytest.raises(TransferError, match="InitializeTableFromTextFileV2"):
        inspect_graph(path)


def test_benign_saved_models_with_savers_still_load(tmp_path):
    """The saver's save op (SaveV2, MergeV2Checkpoints) is never run, so it is not refused;
    its restore op reads the model's own variables."""
    path = tf2_saved_model(tmp_path / "model")
    output = load_graph(path).outputs["features"]
    np.testing.assert_allclose(Backbone.load(path, cut=output)(BATCH), np.full((2, 3), 4.0))


def test_a_keras_file_in_safe_mode_runs_nothing_of_a_hostile_backbone(tmp_path):
    """A saved model whose FeatureLayer points at a SavedModel that was swapped for a hostile one."""
    canary = tmp_path / "canary.txt"
    backbone_dir = tmp_path / "backbone"
    tf2_saved_model(backbone_dir)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(FeatureLayer(str(backbone_dir), cut="auto")(inputs)))
    model.save(tmp_path / "model.keras")
    shutil.rmtree(backbone_dir)
    tf2_saved_model(backbone_dir, canary)
    with pytest.raises(Exception, match="WriteFile"):
        keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert not canary.exists()


# -- resource limits -----------------------------------------------------------------------------


def splat_graph(path, count: int) -> str:
    """A few hundred bytes of .pbtxt whose Const claims `count` floats and holds one."""
    path.write_text(f"""
node {{ name: "image" op: "Placeholder" attr {{ key: "dtype" value {{ type: DT_FLOAT }} }}
  attr {{ key: "shape" value {{ shape {{ dim {{ size: -1 }} dim {{ size: {count} }} }} }} }} }}
node {{ name: "big" op: "Const" attr {{ key: "dtype" value {{ type: DT_FLOAT }} }}
  attr {{ key: "value" value {{ tensor {{ dtype: DT_FLOAT
    tensor_shape {{ dim {{ size: {count} }} }} float_val: 1 }} }} }} }}
node {{ name: "out" op: "Mul" input: "image" input: "big" attr {{ key: "T" value {{ type: DT_FLOAT }} }} }}
""")
    return str(path)


def test_a_tiny_file_claiming_gigabytes_is_refused_before_import(tmp_path, capsys):
    path = splat_graph(tmp_path / "bomb.pbtxt", 10**9)
    assert (tmp_path / "bomb.pbtxt").stat().st_size < 600
    with pytest.raises(TransferError, match=r"Const 'big' declares 3\.7 GiB of values but holds 4 bytes"):
        load_graph(path)
    assert main(["inspect", path]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error and "64.0 MiB" in error


def test_a_constant_expanding_within_the_allowance_still_works(tmp_path):
    path = splat_graph(tmp_path / "ok.pbtxt", 10**6)
    assert Backbone.load(path, cut="out")(np.ones((1, 10**6), np.float32)).shape == (1, 10**6)


def test_content_shorter_than_the_declared_shape_is_refused(tmp_path):
    graph_def = tf.compat.v1.GraphDef()
    node = graph_def.node.add(name="c", op="Const")
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.add(size=10**7)
    tensor.tensor_content = b"\0" * 12
    path = tmp_path / "short.pb"
    path.write_bytes(graph_def.SerializeToString())
    with pytest.raises(TransferError, match=r"Const 'c' declares 10000000 values \(38\.1 MiB\) but holds 12 bytes"):
        load_graph(path)


# -- cut types -----------------------------------------------------------------------------------


def typed_graph(path) -> str:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="image")
        tf.strings.as_string(x, name="text")
        tf.argmax(x, axis=1, name="index")
        tf.greater(x, 0.5, name="mask")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return str(path)


def test_a_string_cut_is_one_line_naming_its_dtype(tmp_path, capsys):
    path = typed_graph(tmp_path / "typed.pb")
    with pytest.raises(TransferError, match=r"cut 'text' \(text:0\) is a string tensor; features must be numbers"):
        Backbone.load(path, cut="text")
    assert main(["inspect", path, "--cut", "text"]) == 2
    assert "is a string tensor" in capsys.readouterr().err


def test_int_and_bool_cuts_are_cast_to_float_with_a_warning(tmp_path):
    path = typed_graph(tmp_path / "typed.pb")
    with pytest.warns(transfer.errors.TransferWarning, match=r"'index' \(index:0\) is int64; its values are cast"):
        backbone = Backbone.load(path, cut="index,mask")
    features = backbone(np.array([[0, 1, 0, 0], [1, 0, 0, 0]], np.float32))
    assert features["index"].dtype == tf.float32 and features["mask"].dtype == tf.float32
    np.testing.assert_array_equal(features["index"], [1.0, 0.0])
    assert backbone.feature_specs["mask"].dtype == tf.float32


# -- fuzzing -------------------------------------------------------------------------------------


def mutations(data: bytes, rng, count: int, message_type=None):
    """Mutations of a serialized protobuf: byte flips, truncations, duplications, insertions, and
    (with `message_type`, for every other one) field-level edits that still parse."""
    for index in range(count):
        if message_type is not None and index % 2:
            yield structural_mutation(data, rng, message_type)
            continue
        mutated = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:
            for position in rng.integers(0, len(mutated), size=rng.integers(1, 8)):
                mutated[position] = rng.integers(256)
        elif kind == 1:
            mutated = mutated[:rng.integers(1, len(mutated))]
        elif kind == 2:
            start = rng.integers(len(mutated))
            mutated[start:start] = mutated[start:start + rng.integers(1, 64)]
        else:
            start = rng.integers(len(mutated))
            mutated[start:start] = bytes(rng.integers(256, size=rng.integers(1, 16)).tolist())
        yield bytes(mutated)


RAW_OPS = sorted(name for name in dir(tf.raw_ops) if not name.startswith("_"))


def structural_mutation(data: bytes, rng, message_type) -> bytes:
    """One node edited: another op type, an attribute dropped or retyped, a Const's shape grown,
    an input rewired, the node duplicated, its shapes or integer values (shape arguments)
    multiplied by 10^3-10^6, or a function call redirected to another function."""
    message = message_type.FromString(data)
    graph_def = message if hasattr(message, "node") else message.meta_graphs[0].graph_def
    node = graph_def.node[rng.integers(len(graph_def.node))]
    kind = rng.integers(8)
    if kind == 6:
        grow_shapes(node, int(10 ** rng.uniform(3, 6)))
        return message.SerializeToString()
    if kind == 7 and graph_def.library.function:
        redirect_a_call(graph_def, rng)
        return message.SerializeToString()
    if kind == 0:
        node.op = str(rng.choice(RAW_OPS))
    elif kind == 1 and node.attr:
        del node.attr[str(rng.choice(sorted(node.attr)))]
    elif kind == 2:
        for value in node.attr.values():
            if value.HasField("type"):
                value.type = int(rng.choice([tf.string, tf.int32, tf.resource, tf.variant, tf.float64])
                                 .as_datatype_enum)
            if value.HasField("tensor") and value.tensor.tensor_shape.dim:
                value.tensor.tensor_shape.dim[0].size *= int(rng.integers(2, 10**6))
    elif kind == 3 and node.input:
        node.input[rng.integers(len(node.input))] = graph_def.node[rng.integers(len(graph_def.node))].name
    elif kind == 4:
        graph_def.node.add().CopyFrom(node)
    else:
        node.input.append(graph_def.node[rng.integers(len(graph_def.node))].name)
    return message.SerializeToString()


def grow_shapes(node, factor: int) -> None:
    """Every shape attribute's known dims, and an integer Const's values, times `factor`."""
    for value in node.attr.values():
        shapes = [value.shape] if value.HasField("shape") else list(value.list.shape)
        for shape in shapes:
            for dim in shape.dim:
                dim.size = dim.size * factor if dim.size > 0 else dim.size
        if value.HasField("tensor"):
            tensor = value.tensor
            if tensor.tensor_content and tensor.dtype in (tf.int32.as_datatype_enum, tf.int64.as_datatype_enum):
                dtype = np.int32 if tensor.dtype == tf.int32.as_datatype_enum else np.int64
                values = np.frombuffer(tensor.tensor_content, dtype) * factor
                tensor.tensor_content = values.astype(dtype).tobytes()
            for field in (tensor.int_val, tensor.int64_val):
                field[:] = [min(v * factor, 2**31 - 1) for v in field]


def redirect_a_call(graph_def, rng) -> None:
    """One op (of the graph or a function) that names a function now names another (or itself)."""
    names = [f.signature.name for f in graph_def.library.function]
    callers = [n for n in [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
               if any(v.HasField("func") for v in n.attr.values())]
    if callers:
        caller = callers[rng.integers(len(callers))]
        next(v for v in caller.attr.values() if v.HasField("func")).func.name = str(rng.choice(names))


class _Deadline:
    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("fuzz case hung")))
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)


def fuzz(load, data: bytes, target, count: int, seed: int, message_type) -> dict:
    """Every mutation either loads or is one TransferError line; anything else fails the test."""
    outcomes = {"loaded": 0, "refused": 0}
    for mutated in mutations(data, np.random.default_rng(seed), count, message_type):
        target.write_bytes(mutated)
        with _Deadline(20):
            try:
                load()
                outcomes["loaded"] += 1
            except TransferError as error:
                assert "\n" not in str(error)
                outcomes["refused"] += 1
    return outcomes


def test_fuzzed_graph_defs_never_crash_or_hang(tmp_path, tiny):
    target = tmp_path / "fuzzed.pb"
    outcomes = fuzz(lambda: inspect_graph(target) and Backbone.load(target, cut="auto"),
                    tiny.path.read_bytes(), target, count=300, seed=11, message_type=tf.compat.v1.GraphDef)
    assert outcomes["refused"] > 50 and outcomes["loaded"] > 10, outcomes


def nested_function_graph(path) -> bytes:
    """A TF1 graph that calls functions, one inside another (PartitionedCall): a function
    library for the fuzzer to rewire."""
    @tf.function(autograph=False)
    def inner(x):
        return tf.nn.relu(tf.reshape(x, [-1, 2, 2]) * 2.0)

    @tf.function(autograph=False)
    def outer(x):
        return tf.reduce_sum(inner(x), axis=2) + inner(x + 1.0)[:, 0, :]

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="image")
        tf.identity(outer(tf.matmul(x, tf.ones([4, 4]))), name="out")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path.read_bytes()


def test_fuzzed_function_libraries_and_shapes_never_crash_or_hang(tmp_path):
    target = tmp_path / "fuzzed.pb"
    data = nested_function_graph(tmp_path / "functions.pb")
    assert tf.compat.v1.GraphDef.FromString(data).library.function
    outcomes = fuzz(lambda: inspect_graph(target) and Backbone.load(target, cut="out"), data, target, count=200,
                    seed=13, message_type=tf.compat.v1.GraphDef)
    assert outcomes["refused"] > 30 and outcomes["loaded"] > 10, outcomes


def test_fuzzed_saved_models_never_crash_or_hang(tmp_path):
    model = tmp_path / "model"
    tf2_saved_model(model)
    proto = model / "saved_model.pb"
    from tensorflow.core.protobuf import saved_model_pb2

    outcomes = fuzz(lambda: inspect_graph(model), proto.read_bytes(), proto, count=60, seed=12,
                    message_type=saved_model_pb2.SavedModel)
    assert outcomes["refused"] > 10, outcomes


def test_the_cli_refuses_with_exit_2_and_allow_op_opts_in(tmp_path, capsys):
    canary = tmp_path / "canary.txt"
    path = write_graph(tmp_path / "hostile.pb", WRITING_ATTACKS["PrintV2 in a function"][0](canary))
    assert main(["inspect", path, "--cut", "out"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--allow-op PrintV2" in error and "Traceback" not in error
    assert main(["inspect", path, "--cut", "out", "--allow-op", "PrintV2", "--json"]) == 0
    assert not canary.exists()  # inspect resolves and checks the cut; it runs nothing
