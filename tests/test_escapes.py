"""Nothing from a file reaches the terminal raw (issue 20, item 3).

Names in a graph or SavedModel, a `.keras` file's layer names, image-folder names (class labels),
cache manifests and the TensorFlow errors that quote them are the file author's text: an escape
sequence in one would clear or colour the user's terminal, a newline forge a line of output, a
bidi override reorder it. Each is shown escaped (`\\x1b`, `\\n`, `\\u202e`) in errors, warnings,
tables and plot labels, and exactly (by `json.dumps`) in `--json` output.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
import warnings

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer.features.cache import FeatureCache
from transfer.cli.main import main
from transfer.errors import TransferError, TransferWarning
from transfer.training.reporting import plot_confusion_matrix
from transfer.sweep.report import _plot, _plot_cuts
from transfer.text import printable

EVIL = "evil\x1b[2J\x1b[31m\nforged"  # clears the screen, turns it red, forges a line
SHOWN = r"evil\x1b[2J\x1b[31m\nforged"
MATH = "math$\\nope$"  # matplotlib would parse it as (broken) mathtext
RTL = "rtl\u202egnp.exe"  # shown reversed: 'rtlexe.png'
CLASSES = sorted([EVIL, MATH, RTL])
# what may not reach the terminal: every control character but the line ending, bidi controls
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert not RAW.search(out) and not RAW.search(err), (out, err)
    assert not any(line.startswith("forged") for line in (out + err).splitlines()), (out, err)
    return code, out, err


def user_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (code, out, err)
    return err.strip()


# -- the helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,shown", [
    ("\x1b[2J", r"\x1b[2J"),
    ("a\nb\rc\td", r"a\nb\rc\td"),
    ("\x00\x07\x08\x0b\x0c\x1f", r"\x00\x07\x08\x0b\x0c\x1f"),
    ("del\x7f", r"del\x7f"),
    ("c1\x80\x9b\x9f", r"c1\x80\x9b\x9f"),  # \x9b is a one-byte CSI
    ("\u202aa\u202bb\u202cc\u202dd\u202ee", r"\u202aa\u202bb\u202cc\u202dd\u202ee"),
    ("\u2066a\u2067b\u2068c\u2069", r"\u2066a\u2067b\u2068c\u2069"),
    ("line\u2028para\u2029", r"line\u2028para\u2029"),
    ("undecodable\udcff", r"undecodable\udcff"),  # a file name's byte that is not UTF-8
])
def test_printable_escapes_control_and_bidi_characters(text, shown):
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping twice changes nothing more
    assert not RAW.search(printable(text))


@pytest.mark.parametrize("text", ["", "conv5_block3_out/Relu:0", "Café über 東京 ελληνικά", "emoji 🐈 ok",
                                  "a\\nb 'quoted' $x$ 100%", "\xa0non-breaking\xa0space\xff"])
def test_printable_leaves_ordinary_text_as_it_is(text):
    assert printable(text) == text


def test_printable_takes_any_object():
    assert printable(None) == "None" and printable(3) == "3" and printable(["\x1b"]) == r"['\x1b']"


def test_errors_and_warnings_are_printable_when_made():
    error = TransferError(f"unknown cut; closest: {EVIL}")
    assert str(error) == f"unknown cut; closest: {SHOWN}"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(f"skipped {EVIL}/bad.png", TransferWarning, stacklevel=1)
        warnings.warn(TransferWarning(f"skipped {EVIL}/bad.png"), stacklevel=1)
    assert [str(w.message) for w in caught] == [f"skipped {SHOWN}/bad.png"] * 2


def test_a_heads_standardization_warning_names_it_escaped():
    from transfer.heads.standardization import StandardizationWarning, warn_not_adapted

    with pytest.warns(StandardizationWarning) as caught:
        warn_not_adapted(EVIL)
    assert str(caught[0].message).startswith(f"{SHOWN}: its input standardization was never adapted")


# -- graphs and SavedModels ---------------------------------------------------------------------


def frozen_graph(path, rename) -> str:
    """x (None, 4) -> features = relu(x @ ones) -> out, its GraphDef changed by `rename(node)`."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="image")
        features = tf.nn.relu(tf.matmul(x, tf.constant(np.ones((4, 3), np.float32))), name="features")
        tf.identity(features, name="out")
    graph_def = graph.as_graph_def()
    for node in graph_def.node:
        rename(node)
    path.write_bytes(graph_def.SerializeToString())
    return str(path)


def _evil_node(node):
    if node.name == "features":
        node.name = EVIL
    renamed = [EVIL if name == "features" else name for name in node.input]
    del node.input[:]
    node.input.extend(renamed)


def _evil_input(node):
    if node.name == "out":
        node.input[0] = f"{EVIL}:0"  # no such node


def _evil_op_type(node):
    if node.name == "features":
        node.op = EVIL


@pytest.mark.parametrize("rename,quoted", [(_evil_node, "Node 'evil"), (_evil_input, "Unknown input node 'evil"),
                                           (_evil_op_type, "Op type not registered 'evil")])
def test_a_graph_that_tensorflow_refuses_is_one_escaped_line(capsys, tmp_path, rename, quoted):
    """TensorFlow's import error quotes the name raw (a node name with control characters does
    not import at all: TensorFlow checks names, so this error is where such a name is shown)."""
    path = frozen_graph(tmp_path / "evil.pb", rename)
    for command in (["inspect", path], ["inspect", path, "--json"],
                    ["fit", "--backbone", path, "--data", "digits", "--out", tmp_path / "run"]):
        err = user_error(capsys, *command)
        assert "does not import as a TensorFlow graph" in err and quoted + r"\x1b[2J\x1b[31m" in err
    assert not (tmp_path / "run").exists()


class _Served(tf.Module):
    def __init__(self):
        super().__init__()
        self.weights = tf.Variable(np.eye(4, 3, dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="image")])
    def serve(self, x):
        features = tf.nn.relu(tf.matmul(x, self.weights))
        return {EVIL: features, "plain": 2.0 * features}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A SavedModel whose output key and second signature's name carry escapes (TensorFlow
    takes any string there), and data it can be fitted on."""
    root = tmp_path_factory.mktemp("escapes")
    module = _Served()
    tf.saved_model.save(module, str(root / "saved_model"),
                        signatures={"serving_default": module.serve, f"sig{EVIL}\u202e": module.serve})
    labels = np.arange(60) % 2
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32) + 2 * labels[:, None]
    np.savez(root / "data.npz", x=x, y=labels)
    return root


def test_inspect_shows_a_saved_models_names_escaped(capsys, saved_model):
    code, out, _ = run(capsys, "inspect", saved_model / "saved_model")
    assert code == 0
    assert re.search(r"^  " + re.escape(SHOWN) + r"  +Identity:0 +float32", out, re.M), out
    code, out, _ = run(capsys, "inspect", saved_model / "saved_model", "--signature", f"sig{EVIL}\u202e")
    assert code == 0 and rf"(signature sig{SHOWN}\u202e)" in out


def test_inspect_json_holds_the_names_exactly(capsys, saved_model):
    code, out, _ = run(capsys, "inspect", saved_model / "saved_model", "--json")
    assert code == 0
    report = json.loads(out)
    assert {row["key"] for row in report["outputs"]} == {EVIL, "plain"}


def test_unknown_cut_or_signature_near_an_escaped_name_is_one_escaped_line(capsys, saved_model):
    path = saved_model / "saved_model"
    for command in (["inspect", path, "--cut", "evi"],
                    ["fit", "--backbone", path, "--cut", "evi", "--data", f"npz:{saved_model / 'data.npz'}",
                     "--out", saved_model / "never"]):
        assert f"unknown cut 'evi'; closest: {SHOWN} (" in user_error(capsys, *command)
    err = user_error(capsys, "inspect", path, "--signature", "nope")
    assert rf"available: serving_default, sig{SHOWN}\u202e" in err


def test_an_op_refused_before_a_saved_model_loads_is_one_escaped_line(capsys, saved_model, tmp_path):
    """The allow-list check reads the SavedModel's protobuf before TensorFlow loads it: the op's
    name and type are the file's, unchecked by TensorFlow."""
    from tensorflow.core.protobuf import saved_model_pb2

    copy = tmp_path / "saved_model"
    shutil.copytree(saved_model / "saved_model", copy)
    proto = saved_model_pb2.SavedModel.FromString((copy / "saved_model.pb").read_bytes())
    node = next(n for f in proto.meta_graphs[0].graph_def.library.function for n in f.node_def if n.op == "Relu")
    node.name, node.op = EVIL, f"Evil{EVIL}Op"
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    err = user_error(capsys, "inspect", copy)
    assert f"runs op '{SHOWN}' of type Evil{SHOWN}Op" in err


def test_a_keras_file_with_a_layer_name_tensorflow_refuses_is_one_escaped_line(capsys, tmp_path):
    image = keras.Input((4,), name="image")
    features = keras.layers.Dense(3, activation="relu", name="features")(image)
    keras.Model(image, keras.layers.Dense(2, name=EVIL)(features)).save(tmp_path / "evil.keras")
    err = user_error(capsys, "inspect", tmp_path / "evil.keras")
    assert f"layer '{SHOWN}' has a name TensorFlow cannot trace" in err


def test_sweep_over_an_escaped_cut_name(capsys, saved_model, tmp_path):
    """Progress lines, the ranked table, the plots' labels: the cut name escaped; the JSON exact."""
    out_dir = tmp_path / "sweep"
    code, out, err = run(capsys, "sweep", "--backbone", saved_model / "saved_model", "--cuts", f"{EVIL},plain",
                         "--heads", "linear", "--epochs", "1", "--data", f"npz:{saved_model / 'data.npz'}",
                         "--out", out_dir, "--export", "none", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert re.search(r"^\[\d/2\] linear cut=" + re.escape(SHOWN) + ": val ", err, re.M), err
    assert re.search(r"^[12] +" + re.escape(SHOWN) + r" +0\.\d{3} ", out, re.M), out  # one head: no head column
    rows = json.loads((out_dir / "sweep.json").read_text())
    assert {row["cut"] for row in rows} == {EVIL, "plain"}
    figure = _plot(tmp_path / "sweep.png", rows)
    labels = figure.axes[0].get_yticklabels()
    assert sorted(label.get_text().split(" ", 1)[1] for label in labels) == [f"linear cut={SHOWN}", "linear cut=plain"]
    assert not any(label.get_parse_math() for label in labels)
    figure = _plot_cuts(tmp_path / "sweep_cuts.png", rows, [EVIL, "plain"])
    labels = figure.axes[0].get_yticklabels()
    assert [label.get_text() for label in labels] == [SHOWN, "plain"]
    assert not any(label.get_parse_math() for label in labels)


# -- class names from folder names --------------------------------------------------------------


@pytest.fixture(scope="module")
def evil_folder(tmp_path_factory):
    """An image folder whose class folders are named with an escape sequence and a newline, a
    bidi override and mathtext; one unreadable file (a warning names it)."""
    root = tmp_path_factory.mktemp("folder") / "images"
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for index in range(8):
            image = np.clip(rng.normal(40 + 80 * label, 10, (8, 8, 1)), 0, 255).astype(np.uint8)
            (root / name / f"{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    (root / EVIL / "broken.png").write_bytes(b"not a png")
    return root


def test_class_names_from_folder_names_are_shown_escaped(capsys, evil_folder, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "fit", "--backbone", "example:digits", "--cut", "block2_out", "--data", evil_folder,
                         "--epochs", "2", "--export", "none", "--out", run_dir)
    assert code == 0, err
    assert f"warning: skipped 1 of 25 image files under {str(evil_folder)!r}" in err
    assert err.rstrip().endswith(f"{SHOWN}/broken.png"), err
    assert (run_dir / "confusion_matrix.png").is_file()  # mathtext in a class name did not stop the plot
    assert json.loads((run_dir / "config.json").read_text())["class_names"] == CLASSES

    code, out, _ = run(capsys, "evaluate", run_dir, "--data", evil_folder)
    assert code == 0
    for name in CLASSES:
        assert re.search(r"^" + re.escape(printable(name)) + r" +\d\.\d{3} ", out, re.M), out
    code, out, _ = run(capsys, "evaluate", run_dir, "--data", evil_folder, "--json")
    assert code == 0 and set(CLASSES) < set(json.loads(out)["report"])

    image = next((evil_folder / RTL).glob("*.png"))
    code, out, _ = run(capsys, "predict", run_dir, image, "--top-k", "3")
    assert code == 0 and out.startswith(printable(image) + ": ")
    assert all(printable(name) in out for name in CLASSES) and len(out.splitlines()) == 1
    code, out, _ = run(capsys, "predict", run_dir, image, "--json")
    assert code == 0 and {top["class"] for top in json.loads(out)[0]["top"]} == set(CLASSES)


def test_confusion_matrix_labels_are_escaped_and_not_mathtext(tmp_path):
    figure = plot_confusion_matrix(tmp_path / "matrix.png", np.eye(3, dtype=int), CLASSES, f"test on {EVIL}")
    axis = figure.axes[0]
    for labels in (axis.get_xticklabels(), axis.get_yticklabels()):
        assert [label.get_text() for label in labels] == [printable(name) for name in CLASSES]
        assert not any(label.get_parse_math() for label in labels)
    assert axis.get_title() == f"test on {SHOWN}"
    assert (tmp_path / "matrix.png").is_file()


# -- feature-cache manifests --------------------------------------------------------------------


def test_cache_ls_verify_and_rm_show_manifest_fields_escaped(capsys, saved_model, tmp_path):
    cache_dir = tmp_path / "cache"
    code, _, err = run(capsys, "extract", "--backbone", saved_model / "saved_model", "--cut", "plain",
                       "--data", f"npz:{saved_model / 'data.npz'}", "--cache-dir", cache_dir, "--json")
    assert code == 0, err
    entry = next(e for e in FeatureCache(cache_dir).entries() if e.manifest["role"] == "train")
    key = f"{EVIL}\u202e{entry.key}"
    evil = cache_dir / key
    shutil.copytree(entry.path, evil)
    manifest = json.loads((evil / "manifest.json").read_text())
    manifest.update(key=key, role=EVIL)
    manifest["ingredients"]["backbone"]["cut"] = EVIL
    manifest["ingredients"]["pool"] = RTL
    manifest["ingredients"]["engine"] = EVIL
    (evil / "manifest.json").write_text(json.dumps(manifest))

    code, out, _ = run(capsys, "cache", "ls", "--cache-dir", cache_dir)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(printable(key)))
    assert re.search(rf"\s{re.escape(SHOWN)}\s+48\s+\(3,\)\s+float32\s", line), line
    assert re.search(rf"\s{re.escape(SHOWN)}\s+npz\s+{re.escape(printable(RTL))}\s+{re.escape(SHOWN)}\s+ok$",
                     line), line  # cut, data, pool, engine
    code, out, _ = run(capsys, "cache", "ls", "--cache-dir", cache_dir, "--json")
    assert code == 0
    row = next(row for row in json.loads(out) if row["key"] == key)
    assert (row["role"], row["cut"], row["pool"], row["engine"]) == (EVIL, EVIL, RTL, EVIL)

    (evil / "manifest.json").write_text(json.dumps({**manifest, "dtype": f"float32{EVIL}"}))  # no dtype of ours
    err = user_error(capsys, "cache", "ls", "--cache-dir", cache_dir)
    assert f"'dtype' is 'float32{SHOWN}'" in err
    (evil / "manifest.json").write_text(json.dumps(manifest))

    next(evil.glob("features-*.npy")).write_bytes(b"corrupt")
    code, out, err = run(capsys, "cache", "verify", "--cache-dir", cache_dir)
    assert code == 3 and err.startswith(f"entry {printable(key)}: corrupt or missing shard(s) [0]"), err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "cache", "rm", "--cache-dir", cache_dir, key)
    assert code == 0 and out == f"removed {printable(key)}\n" and not evil.exists()
    assert f"no cache entry '{SHOWN}" in user_error(capsys, "cache", "rm", "--cache-dir", cache_dir, key)
