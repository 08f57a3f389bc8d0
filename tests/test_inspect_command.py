"""`transfer inspect` and every bad input of the backbone issue: one line on stderr, exit 2."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from transfer import Backbone, TransferError
from transfer.cli.main import main
from cli_checks import run_cli, user_error


def test_inspect_tiny_graph_text(capsys, tiny):
    code, out, err = run_cli(capsys, "inspect", str(tiny.path))
    assert code == 0, err
    assert "image  float32  (None, 16, 16, 3)" in out
    assert "weight layers: 5" in out  # conv1, bn1, dw, conv2, logits (a bias belongs to its layer)
    auto_lines = [line for line in out.splitlines() if line.lstrip().startswith("*  ")]
    assert len(auto_lines) == 1 and "tiny_1/gap_1/Mean:0" in auto_lines[0] and "(None, 8)" in auto_lines[0]
    assert out.count("\n") > 10 and "ops: Const " in out


def test_inspect_json_lists_inputs_outputs_and_candidates(capsys, tiny):
    code, out, _ = run_cli(capsys, "inspect", "--backbone", str(tiny.path), "--json")
    report = json.loads(out)
    assert code == 0
    assert report["inputs"] == [{"tensor": "image:0", "dtype": "float32", "shape": [None, 16, 16, 3],
                                 "name": "image", "alias": None}]
    assert [o["shape"] for o in report["outputs"]] == [[None, 5]]
    names = [c["tensor"] for c in report["candidates"]]
    assert names.index("tiny_1/conv1_1/Relu:0") < names.index("tiny_1/conv2_1/BiasAdd:0")
    assert [c["tensor"] for c in report["candidates"] if c["auto"]] == [report["auto"]["tensor"]]
    assert report["op_counts"]["Conv2D"] == 2 and "tensors" not in report


def test_inspect_all_lists_every_tensor(capsys, tiny):
    _, out, _ = run_cli(capsys, "inspect", str(tiny.path), "--all", "--json")
    report = json.loads(out)
    graph_def = tf.compat.v1.GraphDef.FromString(tiny.path.read_bytes())
    assert len(report["tensors"]) >= len(graph_def.node) - 1  # NoOp has no output
    assert {"tiny_1/conv1_1/convolution:0", "image:0"} <= {t["tensor"] for t in report["tensors"]}


@pytest.mark.slow
def test_inspect_cut_resolves_and_reports(capsys, resnet50):
    code, out, err = run_cli(capsys, "inspect", str(resnet50.path), "--cut", "conv5_block3_out,conv4_block6_out")
    assert code == 0, err
    assert "cut 'conv5_block3_out' = resnet50_1/conv5_block3_out_1/Relu:0 float32 (None, 2, 2, 2048)" in out
    assert "cut 'conv4_block6_out' = resnet50_1/conv4_block6_out_1/Relu:0 float32 (None, 4, 4, 1024)" in out


def test_inspect_saved_model_names_signature_inputs(capsys, tiny_saved_model):
    code, out, err = run_cli(capsys, "inspect", str(tiny_saved_model.path), "--signature", "embed", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["kind"] == "SavedModel" and report["signature"] == "embed"
    assert [i["name"] for i in report["inputs"]] == ["pixels"]
    assert all(c["op"] not in ("VarHandleOp", "ReadVariableOp") for c in report["candidates"])


@pytest.mark.slow
def test_console_script_runs_the_example_and_exits_2_on_user_error(tmp_path):
    env = dict(os.environ, PYTHONPATH="")
    ok = subprocess.run([sys.executable, "-m", "transfer.cli", "inspect", "example:digits"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "* auto = resnet_features:0" in ok.stdout
    assert ok.stderr == ""  # TF's start-up chatter is parked
    bad = subprocess.run([sys.executable, "-m", "transfer.cli", "inspect", str(tmp_path / "missing.pb")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"transfer inspect: error: backbone '{tmp_path / 'missing.pb'}' does not exist"


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--help"])
    assert exit_info.value.code == 0
    assert "transfer inspect example:digits" in capsys.readouterr().out


# -- bad input: one line, exit 2 ------------------------------------------------------------


def test_missing_path(capsys, tmp_path):
    user_error(capsys, ["inspect", str(tmp_path / "nope.pb")], r"backbone '.*nope\.pb' does not exist")


def test_directory_that_is_no_saved_model(capsys, tmp_path):
    (tmp_path / "variables").mkdir()
    user_error(capsys, ["inspect", str(tmp_path)], r"is a directory but not a SavedModel \(no saved_model\.pb")


def test_truncated_pb(capsys, tiny, tmp_path):
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(tiny.path.read_bytes()[: tiny.path.stat().st_size // 2])
    user_error(capsys, ["inspect", str(truncated)],
                      r"truncated\.pb is not a TensorFlow GraphDef \(truncated or corrupt\?\)")


def test_image_file_is_not_a_graph(capsys, tmp_path):
    image = tmp_path / "photo.pb"
    image.write_bytes(tf.io.encode_png(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype="uint8")).numpy())
    user_error(capsys, ["inspect", str(image)], r"photo\.pb is not a TensorFlow GraphDef")


def test_text_file_is_not_a_graph(capsys, tmp_path):
    text = tmp_path / "notes.pbtxt"
    text.write_text("these are my notes, not a graph\n")
    user_error(capsys, ["inspect", str(text)], r"notes\.pbtxt is not a TensorFlow GraphDef.*text protobuf")


def test_empty_file_and_empty_graph(capsys, tmp_path):
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    user_error(capsys, ["inspect", str(empty)], r"empty\.pb is empty: no graph in it")
    no_nodes = tmp_path / "no_nodes.pb"
    graph_def = tf.compat.v1.GraphDef()
    graph_def.versions.producer = 1
    no_nodes.write_bytes(graph_def.SerializeToString())
    user_error(capsys, ["inspect", str(no_nodes)], r"no_nodes\.pb holds an empty graph \(no nodes\)")


def test_graph_without_placeholder(capsys, tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        tf.add(tf.constant([1.0]), tf.constant([2.0]), name="sum")
    path = tmp_path / "constants.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    user_error(capsys, ["inspect", str(path)], r"constants\.pb has no Placeholder")
    with pytest.raises(TransferError, match="has no Placeholder"):
        Backbone.load(path, cut="sum")


@pytest.mark.slow
def test_unknown_cut_names_the_closest(capsys, resnet50):
    user_error(capsys, ["inspect", str(resnet50.path), "--cut", "conv5_blok3_out"],
                      r"unknown cut 'conv5_blok3_out'; closest: resnet50_1/conv5_block3_out_1/Relu")


def test_ambiguous_cut_lists_the_matches(capsys, tiny):
    user_error(capsys, ["inspect", str(tiny.path), "--cut", "BiasAdd"],
                      r"cut 'BiasAdd' is ambiguous: matches several: tiny_1/conv1_1/BiasAdd, ")


def test_cut_not_reachable_from_the_input(capsys, tiny):
    constant = "tiny_1/bn1_1/batchnorm/Rsqrt"
    user_error(capsys, ["inspect", str(tiny.path), "--cut", constant],
                      rf"cut '{constant}' is not reachable from the input image")


def test_cut_on_another_input_than_the_one_fed(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 2], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 2], name="b")
        tf.identity(a * 2.0, name="from_a")
        tf.identity(a + b, name="from_both")
    path = tmp_path / "two_inputs.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(TransferError, match=r"cut 'from_a' is not reachable from the input b"):
        Backbone.load(path, cut="from_a", inputs="b")
    with pytest.raises(TransferError, match=r"cut 'from_both' also needs placeholder\(s\) b, which are not fed"):
        Backbone.load(path, cut="from_both", inputs="a")
    both = Backbone.load(path, cut="from_both")
    np.testing.assert_allclose(both({"a": np.ones([1, 2]), "b": np.ones([1, 2])}), [[2.0, 2.0]])


def test_wrong_input_shape_and_rank(tiny):
    backbone = Backbone.load(tiny.path)
    with pytest.raises(TransferError, match=r"input 'image' expects shape \(None, 16, 16, 3\), got \(2, 32, 32, 3\)"):
        backbone(np.zeros([2, 32, 32, 3], "float32"))
    with pytest.raises(TransferError, match=r"input 'image' expects shape \(None, 16, 16, 3\), got \(16, 16, 3\)"):
        backbone(np.zeros([16, 16, 3], "float32"))


def test_protobuf_over_2gb(capsys, tmp_path):
    huge = tmp_path / "huge.pb"
    with open(huge, "wb") as handle:
        handle.truncate(2**31 + 10)  # sparse: costs no disk
    user_error(capsys, ["inspect", str(huge)], r"huge\.pb is 2\.00 GiB, over protobuf's 2 GiB limit")


def test_corrupt_saved_model_and_unknown_signature(capsys, tmp_path, tiny_saved_model):
    corrupt = tmp_path / "corrupt_saved_model"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\xff garbage")
    user_error(capsys, ["inspect", str(corrupt)], r"saved_model\.pb is corrupt")
    user_error(capsys, ["inspect", str(tiny_saved_model.path), "--signature", "predict"],
                      r"unknown signature 'predict' in .*; available: embed, serving_default")


def test_signature_on_a_plain_graph_file(capsys, tiny):
    user_error(capsys, ["inspect", str(tiny.path), "--signature", "serving_default"],
                      r"--signature 'serving_default' applies to SavedModels only")


def test_unsupported_keras_file(capsys, tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"not a zip")
    user_error(capsys, ["inspect", str(bad)], r"model\.keras does not load as a Keras model")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


def test_readme_quick_start_is_the_cli_main_job_and_ci_runs_the_test_command():
    from pathlib import Path

    from transfer.cli.fit_command import MAIN_JOB

    root = Path(__file__).resolve().parents[1]
    quick_start = (root / "README.md").read_text().split("```bash")[1].split("```")[0].strip().splitlines()
    assert quick_start == [f"pip install -e . && {MAIN_JOB}", "pip install -e '.[test]' && python -m pytest -q"]
    assert quick_start[1] in (root / ".ci/run").read_text()


def test_main_job_runs_and_prints_accuracy_and_run_directory(capsys, tmp_path):
    import shlex

    from transfer.cli.fit_command import MAIN_JOB

    argv = shlex.split(MAIN_JOB)[1:] + ["--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    test_accuracy = float(re.search(r"test accuracy (\d\.\d{3})", out).group(1))
    assert test_accuracy > 0.85 and f"run directory: {tmp_path / 'run'}" in out
    assert "Epoch 1/60" in out and "\x1b[" not in out  # not a terminal: a line per epoch, no ANSI progress bars
    stages = out.splitlines()[:2]  # what it found, said before the slow work (issue 25, item 8)
    assert stages == ["data: digits:5-9?per_class=10: 5 classes; 50 train, 179 validation, 667 test examples",
                      "backbone: example:digits, cut at block2_out (4, 4, 32) float32"]


def test_quiet_prints_only_the_results(capsys, tmp_path):
    from cli_checks import DIGITS

    assert main(["fit", "--backbone", "example:digits", "--data", DIGITS, "--epochs", "2", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["trained", "validation", "run"], out


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["--version"], ["fit", "--backbone", "x.pb"],
                                  ["cache", "ls"]])
def test_the_command_answers_without_importing_tensorflow(argv, tmp_path):
    """Help, version, argument errors and `cache ls` must not wait ~10 s for TensorFlow."""
    script = Path(sys.executable).parent / "transfer"
    result = subprocess.run([sys.executable, "-X", "importtime", str(script), *argv], capture_output=True, text=True,
                            env={**os.environ, "TRANSFER_CACHE": str(tmp_path)}, timeout=120)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time")]
    assert imported and not [name for name in imported if name.split(".")[0] in ("tensorflow", "keras")]
    assert result.returncode == (2 if argv == ["fit", "--backbone", "x.pb"] else 0)
