"""Files that would crash or exhaust the process (issue 20): memory asked for by shapes, not
constants; function libraries that call themselves or nest too deep.

The end-to-end cases run the CLI in a child process under an address-space cap
(`RLIMIT_AS`), so that a regression fails the test instead of taking CI's machine down, and
assert exit 2, one line, no traceback, no control character, nothing written.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend)
import tensorflow as tf

from transfer import Backbone
from transfer.errors import TransferError
from transfer.graph.memory import available_memory, memory_limit, parse_size
from transfer.graph.safety import MAX_CALL_DEPTH, check_library, check_ops

FLOAT = tf.float32.as_datatype_enum
CAP_GIB = 8  # the child's address space: TensorFlow starts in ~3 GiB of it


def frozen_graph(path, make, shape=(None, 8, 8, 3)) -> str:
    """image -> pool (the mean over positions) + 0 * sum(make(image)): the cut `features`
    needs whatever `make` builds."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, shape, name="image")
        pooled = tf.reduce_mean(image, [1, 2], name="pool")
        tf.add(pooled, tf.reduce_sum(tf.cast(make(image), tf.float32)) * 0, name="features")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return str(path)


def data_sized_fill(image):
    """A 64000 x 64000 Fill whose size only the data tells (0 * sum(image) + 64000)."""
    n = tf.cast(tf.reduce_sum(image) * 0, tf.int32) + 64000
    return tf.fill(tf.stack([n, n]), 1.0)


def in_a_function(image):
    """The Fill inside a function the graph calls (its body has its own static shapes)."""
    @tf.function(autograph=False)
    def big(x):
        return tf.reduce_sum(tf.fill([64000, 64000], 1.0)) + tf.reduce_sum(x)
    return big(image)


# Each builds, for one example, a tensor of gigabytes from a graph of a few hundred bytes.
MEMORY_ATTACKS = {
    "Fill": lambda x: tf.fill([64000, 64000], 1.0),
    "Tile": lambda x: tf.tile(x, [1, 8000, 8000, 1]),
    "BroadcastTo": lambda x: tf.broadcast_to(x[:, :1, :1, :], [tf.shape(x)[0], 40000, 40000, 3]),
    "Range": lambda x: tf.range(0, 4_000_000_000, 1, dtype=tf.int64),
    "RandomUniform": lambda x: tf.random.uniform([60000, 60000]),
    "RandomStandardNormal": lambda x: tf.random.normal([60000, 60000]),
    "Pad": lambda x: tf.pad(x, [[0, 0], [0, 40000], [0, 40000], [0, 0]]),
    "MirrorPad": lambda x: tf.pad(tf.tile(x, [1, 5000, 5000, 1]), [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT"),
    "ResizeBilinear": lambda x: tf.compat.v1.image.resize_bilinear(x, [40000, 40000]),
    "ResizeNearestNeighbor": lambda x: tf.compat.v1.image.resize_nearest_neighbor(x, [40000, 40000]),
    "Conv2DBackpropInput": lambda x: tf.nn.conv2d_transpose(x, tf.ones([3, 3, 3, 3]), [1, 40000, 40000, 3], 5000),
    "Reshape": lambda x: tf.reshape(tf.fill([64000 * 64000], 1.0), [64000, 64000]),
    "OneHot": lambda x: tf.one_hot(tf.cast(tf.reduce_sum(x, [1, 2, 3]), tf.int32), 2_000_000_000),
    "PartitionedCall": in_a_function,
}


# The op named is the one that makes the largest tensor: a reshape's result is as large as what it
# reshapes (it is counted as new memory: an overestimate), a function's is in its body.
NAMED = {"PartitionedCall": "Fill", "Reshape": "Fill"}


@pytest.mark.parametrize("op_type", sorted(MEMORY_ATTACKS))
def test_memory_asked_for_by_shapes_is_refused_before_anything_runs(tmp_path, op_type):
    path = frozen_graph(tmp_path / f"{op_type}.pb", MEMORY_ATTACKS[op_type])
    assert (tmp_path / f"{op_type}.pb").stat().st_size < 4096
    named = NAMED.get(op_type, op_type)
    with pytest.raises(TransferError, match=rf"op '[^']+' \({named}\) makes a tensor of [\d.]+ GiB .* over the "
                                            r"limit of [\d.]+ [KMGT]?i?B"):
        Backbone.load(path, cut="features", max_memory="2G")


def test_the_limit_follows_the_memory_available_and_max_memory_moves_it(tmp_path):
    limit, reason = memory_limit()
    assert limit == pytest.approx(available_memory() / 2, rel=0.2) and "--max-memory" in reason
    path = frozen_graph(tmp_path / "fill.pb", MEMORY_ATTACKS["Fill"])
    with pytest.raises(TransferError, match=r"op 'Fill' \(Fill\) makes a tensor of 15.3 GiB \(float32 \(64000, "
                                            r"64000\)\).* \(half of the .* available; --max-memory raises it\)"):
        Backbone.load(path, cut="features")
    Backbone.load(path, cut="features", max_memory="64G")  # raised: it loads (and runs nothing)
    small = frozen_graph(tmp_path / "small.pb", lambda x: tf.fill([512, 512], 1.0))
    Backbone.load(small, cut="features")
    with pytest.raises(TransferError, match=r"op 'Fill' \(Fill\) makes a tensor of 1.0 MiB .* limit of 512.0 KiB"):
        Backbone.load(small, cut="features", max_memory="512K")


def test_ordinary_backbones_pass_with_their_real_peak(tiny):
    backbone = Backbone.load(tiny.path, cut="auto")
    from transfer.graph.memory import check_cut_memory

    ops = backbone.info.ancestors([backbone.cuts[0].tensor.op])
    peak = check_cut_memory(backbone.info.graph, {}, ops, None, "", "tiny")
    image = np.prod(backbone.inputs[0].shape[1:]) * 4
    assert image < peak.bytes < 2**20  # the input, and a few small activations at once


@pytest.mark.parametrize("text, size", [("16G", 16 * 2**30), ("512MiB", 512 * 2**20), ("1.5g", int(1.5 * 2**30)),
                                        ("1000", 1000), ("2 KB", 2048)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "16Q", "1e9"])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(TransferError, match=r"--max-memory .*: give a size such as 512M"):
        parse_size(text)


# -- function libraries --------------------------------------------------------------------------


def function_graph(calls: dict[str, str], top: str = "f0", how: dict | None = None) -> tf.compat.v1.GraphDef:
    """image -> out = top(image); each function `name` calls `calls[name]` (or returns its input
    when it calls nothing), through `how[name]`: "PartitionedCall" (attribute f), "If" (both
    branches), "While" (its body), "op" (the function's name as the op type) or "gradient"
    (declared as the function's gradient, called by nothing)."""
    graph_def = tf.compat.v1.GraphDef()
    image = graph_def.node.add(name="image", op="Placeholder")
    image.attr["dtype"].type = FLOAT
    out = graph_def.node.add(name="out", op="PartitionedCall", input=["image"])
    _call_attrs(out, top)
    for name in sorted({top, *calls, *calls.values()}):
        function = graph_def.library.function.add()
        function.signature.name = name
        function.signature.input_arg.add(name="x", type=FLOAT)
        function.signature.output_arg.add(name="y", type=FLOAT)
        callee, kind = calls.get(name), (how or {}).get(name, "PartitionedCall")
        if callee is None or kind == "gradient":
            node = function.node_def.add(name="same", op="Identity", input=["x"])
            node.attr["T"].type = FLOAT
            function.ret["y"] = "same:output:0"
            if callee is not None:
                graph_def.library.gradient.add(function_name=name, gradient_func=callee)
            continue
        node = function.node_def.add(name="call", input=["x"])
        if kind == "op":
            node.op = callee
        elif kind == "If":
            node.op = "If"
            node.input.insert(0, "x")
            node.attr["then_branch"].func.name = node.attr["else_branch"].func.name = callee
        elif kind == "While":
            node.op = "While"
            node.attr["body"].func.name = node.attr["cond"].func.name = callee
        else:
            node.op = "PartitionedCall"
            _call_attrs(node, callee)
        function.ret["y"] = f"call:{'y' if kind == 'op' else 'output'}:0"
    return graph_def


def _call_attrs(node, function: str) -> None:
    node.attr["f"].func.name = function
    node.attr["Tin"].list.type.append(FLOAT)
    node.attr["Tout"].list.type.append(FLOAT)


@pytest.mark.parametrize("calls, how, cycle", [
    ({"f0": "f0"}, None, "f0 -> f0"),
    ({"f0": "f1", "f1": "f0"}, None, "f0 -> f1 -> f0"),
    ({"f0": "f1", "f1": "f2", "f2": "f1"}, None, "f1 -> f2 -> f1"),
    ({"f0": "f1", "f1": "f0"}, {"f1": "If"}, "f0 -> f1 -> f0"),
    ({"f0": "f1", "f1": "f0"}, {"f0": "While"}, "f0 -> f1 -> f0"),
    ({"f0": "f1", "f1": "f0"}, {"f1": "op"}, "f0 -> f1 -> f0"),
    ({"f0": "f1", "f1": "f0"}, {"f1": "gradient"}, "f0 -> f1 -> f0"),
])
def test_a_library_that_calls_itself_is_refused_naming_the_cycle(calls, how, cycle):
    with pytest.raises(TransferError, match=rf"the function library calls itself \({re.escape(cycle)}\); refused"):
        check_library(function_graph(calls, how=how), "g.pb")


def chain(depth: int) -> dict[str, str]:
    return {f"f{i}": f"f{i + 1}" for i in range(depth - 1)}


def test_calls_nested_deeper_than_tensorflow_can_import_are_refused_without_recursion():
    check_library(function_graph(chain(MAX_CALL_DEPTH)), "g.pb")  # as deep as allowed
    with pytest.raises(TransferError, match=rf"function 'f\d+' nests calls {MAX_CALL_DEPTH + 1} deep, more than "):
        check_library(function_graph(chain(MAX_CALL_DEPTH + 1)), "g.pb")
    deep = function_graph(chain(20_000))  # 20,000 levels: no RecursionError, in the check or the walk
    with pytest.raises(TransferError, match="nests calls"):
        check_library(deep, "g.pb")
    check_ops(deep.node, {f.signature.name: f for f in deep.library.function})


def test_a_library_without_cycles_still_loads_and_runs(tmp_path):
    """Diamonds (two callers of one function) are no cycle."""
    graph_def = function_graph({"f0": "f1", "f1": "f2"})
    extra = graph_def.library.function.add()
    extra.CopyFrom(graph_def.library.function[0])
    check_library(graph_def, "g.pb")
    path = tmp_path / "diamond.pb"
    path.write_bytes(function_graph({"f0": "f1", "f1": "f2"}).SerializeToString())
    backbone = Backbone.load(path, cut="out")
    np.testing.assert_array_equal(backbone(np.ones((2, 3), np.float32)), np.ones((2, 3)))


# -- through the CLI, in a child process under a memory cap ----------------------------------------

CHILD = textwrap.dedent(f"""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({CAP_GIB} * 2**30, {CAP_GIB} * 2**30))
    from transfer.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def run_capped(tmp_path, *argv) -> tuple[int, str, str]:
    """`transfer ARGV` in a child with at most CAP_GIB of address space, in `tmp_path/work`."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=work, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_refused(code: int, out: str, err: str, pattern: str) -> None:
    """Exit 2, one line from transfer on stderr (TensorFlow's own log lines aside), no traceback,
    no control character."""
    ours = [line for line in err.splitlines() if line.startswith("transfer ")]
    assert code == 2, (code, err[-3000:])
    assert len(ours) == 1 and "Traceback" not in err, err[-3000:]
    assert re.search(pattern, ours[0]), ours[0]
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", out + ours[0])


def digits_npz(tmp_path) -> str:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 8, 8, 3), np.float32), y=np.arange(40) % 2)
    return f"npz:{tmp_path / 'd.npz'}"


@pytest.mark.parametrize("attack, pattern", [
    ("Fill", r"op 'Fill' \(Fill\) makes a tensor of 15.3 GiB .*; refused$"),
    ("data_sized_fill", r"out of memory: op 'Fill' could not allocate a tensor of shape \[64000,64000\]"),
])
@pytest.mark.slow
def test_fit_refuses_memory_attacks_in_one_line_and_writes_nothing(tmp_path, attack, pattern):
    path = frozen_graph(tmp_path / "attack.pb", MEMORY_ATTACKS.get(attack) or data_sized_fill)
    code, out, err = run_capped(tmp_path, "fit", "--backbone", path, "--cut", "features", "--data",
                                digits_npz(tmp_path), "--epochs", "1", "--out", "run", "--cache-dir", "cache")
    assert_refused(code, out, err, pattern)
    written = [p for p in (tmp_path / "work").rglob("*") if p.is_file() and p.name != ".lock"]
    assert written == []


@pytest.mark.slow
def test_a_recursive_function_is_one_line_not_a_segfault(tmp_path):
    path = tmp_path / "recursive.pb"
    path.write_bytes(function_graph({"f0": "f1", "f1": "f0"}).SerializeToString())
    for command in (["inspect", str(path)], ["fit", "--backbone", str(path), "--cut", "out", "--data",
                                             digits_npz(tmp_path), "--out", "run"]):
        code, out, err = run_capped(tmp_path, *command)
        assert_refused(code, out, err, r"the function library calls itself \(f0 -> f1 -> f0\); refused")
    assert not (tmp_path / "work" / "run").exists()


@pytest.mark.slow
def test_an_escape_in_a_node_name_reaches_the_terminal_escaped(tmp_path):
    """TensorFlow refuses the name on import and quotes it in its error: one line, escaped."""
    graph_def = tf.compat.v1.GraphDef.FromString(open(frozen_graph(tmp_path / "g.pb", tf.identity), "rb").read())
    evil = "evil\x1b[2J\x1b[31m\nforged line"
    for node in graph_def.node:
        node.name = evil if node.name == "features" else node.name
    (tmp_path / "evil.pb").write_bytes(graph_def.SerializeToString())
    code, out, err = run_capped(tmp_path, "fit", "--backbone", str(tmp_path / "evil.pb"), "--data",
                                digits_npz(tmp_path), "--out", "run")
    assert_refused(code, out, err, r"does not import as a TensorFlow graph: .*evil\\x1b\[2J\\x1b\[31m")
    assert not (tmp_path / "work" / "run").exists()


@pytest.mark.slow
def test_a_pickled_shard_is_corrupt_and_never_unpickled(tmp_path):
    from transfer.features.inputs import open_inputs

    cache = tmp_path / "cache"
    entry = open_inputs("example:digits", "digits:5-9?per_class=10", cut="block2_out").extract(
        cache, progress=False)["train"][0]
    shard = entry.manifest["shards"][0]
    path = entry.path / shard["features"]
    objects = np.empty(3, dtype=object)
    objects[:] = [_Canary(tmp_path / "unpickled")] * 3
    np.save(path, objects, allow_pickle=True)
    shard["features_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # only the header can tell
    (entry.path / "manifest.json").write_text(json.dumps(entry.manifest))
    code, out, err = run_capped(tmp_path, "cache", "verify", "--cache-dir", str(cache))
    assert code == 3 and "Traceback" not in err, err
    assert re.search(r"corrupt or missing shard\(s\) \[0\] \(.* holds Python objects \(a pickle\)", err), err
    assert not (tmp_path / "unpickled").exists()


class _Canary:
    """Unpickling this creates the file `path`: whether a pickle was ever loaded shows on disk."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")
