"""OpenVINO (issue 23): the frozen backbone converted by OpenVINO in FP32, and quantized to INT8 by
NNCF on a sample of the training split, checked against FP32 features and refused when it
loses them. Tiny graphs only: converting and quantizing a real network takes seconds."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend)
import tensorflow as tf

from cli_checks import DIGITS, run_cli, user_error
from transfer import Backbone, TransferError
from transfer.errors import TransferWarning
from transfer.features.engines import choose_engine
from transfer.features.openvino_engine import OpenVino

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture()
def images():
    return np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")


def _graph(path, build, shape):
    """A TF1-style frozen graph x -> y, `y = build(x)`."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        tf.identity(build(x), name="y")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return Backbone.load(path, cut="y")


@pytest.mark.slow  # converts (and quantizes) with OpenVINO: seconds
def test_openvino_fp32_features_equal_tensorflows_and_the_conversion_is_kept(tiny, images, tmp_path):
    backbone = Backbone.load(tiny.path, cut="conv2,gap")  # conv2 feeds gap: a consumed tensor is an output too
    engine = choose_engine(backbone, "openvino", sample=images, cache_dir=tmp_path)
    assert (engine.name, engine.precision) == ("openvino", "fp32") and "agrees with TensorFlow" in engine.note
    expected, got = backbone(images), engine(images)
    assert set(got) == {"conv2", "gap"}
    for key in got:
        assert got[key].dtype == expected[key].dtype
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5)
    (converted,) = (tmp_path / "openvino").glob("*.xml")
    assert converted.with_suffix(".bin").is_file()
    stamp = converted.stat().st_mtime_ns
    again = OpenVino.for_backbone(Backbone.load(tiny.path, cut="conv2,gap"), tmp_path)
    assert again.path == converted and converted.stat().st_mtime_ns == stamp  # converted once
    assert OpenVino.for_backbone(Backbone.load(tiny.path, cut="gap"), tmp_path).path != converted  # cut in the key


@pytest.mark.slow  # converts (and quantizes) with OpenVINO: seconds
def test_int8_agrees_with_fp32_says_so_and_gets_its_own_cache_entries(tmp_path, capsys):
    """extract --precision int8: quantized once, the figure printed, the entries keyed apart
    from FP32 OpenVINO's and TensorFlow's, `cache ls` naming engine and precision."""
    from transfer.features.cache import FeatureCache

    cache = tmp_path / "cache"
    common = ["--backbone", "example:digits", "--cut", "block2_out", "--data", DIGITS, "--cache-dir", cache]
    code, out, _ = run_cli(capsys, "extract", *common, "--engine", "openvino", "--precision", "int8")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("engine: "))
    cosine = float(line.split("cosine ")[1].split()[0])
    assert line.startswith("engine: openvino int8, cosine ") and cosine >= 0.98, line
    assert line.endswith(" examples") and "vs fp32 on " in line
    (model,) = (cache / "openvino").glob("*.int8.xml")
    stamp = model.stat().st_mtime_ns
    assert run_cli(capsys, "extract", *common, "--engine", "openvino")[0] == 0
    assert run_cli(capsys, "extract", *common)[0] == 0
    assert run_cli(capsys, "extract", *common, "--engine", "openvino", "--precision", "int8")[0] == 0  # cached
    assert model.stat().st_mtime_ns == stamp  # quantized once
    entries = [e for e in FeatureCache(cache).entries() if e.manifest["role"] == "train"]
    made_by = {(e.manifest["ingredients"].get("engine", "tf"), e.manifest["ingredients"].get("precision", "fp32")): e
               for e in entries}
    assert set(made_by) == {("tf", "fp32"), ("openvino", "fp32"), ("openvino", "int8")} and len(entries) == 3
    assert made_by["openvino", "int8"].manifest["ingredients"]["calibration"]["role"] == "train"
    features = {key: entry.arrays()[0].reshape(len(entry.arrays()[0]), -1) for key, entry in made_by.items()}
    np.testing.assert_allclose(features["openvino", "fp32"], features["tf", "fp32"], rtol=1e-4, atol=1e-4)
    int8, fp32 = features["openvino", "int8"], features["openvino", "fp32"]
    cosines = np.sum(int8 * fp32, 1) / (np.linalg.norm(int8, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosines.mean() >= 0.98
    code, listed, _ = run_cli(capsys, "cache", "ls", "--cache-dir", cache)
    assert code == 0 and "openvino int8" in listed
    rows = json.loads(run_cli(capsys, "cache", "ls", "--cache-dir", cache, "--json")[1])
    assert {(row["engine"], row["precision"]) for row in rows} == set(made_by)


@pytest.mark.slow  # converts (and quantizes) with OpenVINO: seconds
def test_a_quantization_that_loses_the_features_falls_back_to_fp32_with_one_line(tmp_path):
    """exp(10 x) spans some 26 orders of magnitude: one INT8 scale for the matmul's input keeps
    only the largest values."""
    weights = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    backbone = _graph(tmp_path / "wide.pb", lambda x: tf.matmul(tf.exp(x * 10.0), weights), (None, 8))
    data = np.random.default_rng(1).normal(size=(96, 8)).astype("float32")
    calibration = SimpleNamespace(identity={"role": "train", "seed": 0, "size": 64, "held_back": 32},
                                  batches=[data[:32], data[32:64]], held_back=data[64:])
    with pytest.warns(TransferWarning, match=r"^INT8 features disagree with FP32 \(cosine [0-9.]+ vs fp32 on 32 "
                                             r"examples, .*\): extracting in fp32$") as caught:
        engine = choose_engine(backbone, "openvino", data[:8], tmp_path, "int8", calibration)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert (engine.name, engine.precision) == ("openvino", "fp32") and "int8 refused: cosine" in engine.note
    np.testing.assert_allclose(engine(data[:8]), backbone(data[:8]), rtol=1e-4)
    with pytest.warns(TransferWarning, match="INT8 features disagree"):  # the verdict is kept: not quantized again
        choose_engine(backbone, "openvino", data[:8], tmp_path, "int8", calibration)


@pytest.mark.slow  # converts (and quantizes) with OpenVINO: seconds
def test_a_first_int8_run_converts_once_and_calibrates_the_model_it_checks_with(tmp_path):
    """The pruned graph is converted once; the FP32 model made then is calibrated and checked
    against, the INT8 model checked is the one returned; a later run makes nothing."""
    weights = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    backbone = _graph(tmp_path / "dense.pb", lambda x: tf.nn.relu(tf.matmul(x, weights)), (None, 8))
    data = np.random.default_rng(1).normal(size=(96, 8)).astype("float32")
    calibration = SimpleNamespace(identity={"role": "train", "seed": 0, "size": 64, "held_back": 32},
                                  batches=[data[:32], data[32:64]], held_back=data[64:])
    first = OpenVino.quantized(backbone, calibration, tmp_path)
    assert set(first.made) == {"converted", "quantized", "checked"} and first.verdict.kept
    kept = sorted(path.name.split(".", 1)[1] for path in (tmp_path / "openvino").iterdir())
    assert kept == ["bin", "int8.bin", "int8.json", "int8.xml", "xml"]  # one FP32 model, one INT8 model
    again = OpenVino.quantized(backbone, calibration, tmp_path)
    assert again.made == {} and again.path == first.path and again.verdict == first.verdict
    np.testing.assert_array_equal(again(data[:8]), first(data[:8]))  # the same model, kept
    other = SimpleNamespace(**{**vars(calibration), "identity": {**calibration.identity, "seed": 1}})
    assert set(OpenVino.quantized(backbone, other, tmp_path).made) == {"quantized", "checked"}  # FP32 kept


@pytest.mark.slow  # quantizes with OpenVINO twice through the CLI: seconds
def test_the_calibration_size_chooses_the_sample_and_keys_the_model_and_features(tmp_path, capsys):
    from transfer.features.cache import FeatureCache

    cache = tmp_path / "cache"
    common = ["extract", "--backbone", "example:digits", "--cut", "block2_out", "--data", DIGITS, "--cache-dir", cache,
              "--engine", "openvino", "--precision", "int8", "--quiet"]
    assert run_cli(capsys, *common, "--calibration-size", "16")[0] == 0
    assert run_cli(capsys, *common)[0] == 0  # the default: another sample, another model, other features
    sizes = sorted(e.manifest["ingredients"]["calibration"]["size"] for e in FeatureCache(cache).entries()
                   if e.manifest["role"] == "train")
    assert sizes[0] == 16 and len(sizes) == 2 and sizes[1] > 16
    assert len(list((cache / "openvino").glob("*.int8.xml"))) == 2 and len(list((cache / "openvino").glob("*"))) == 8


def test_a_calibration_size_below_one_is_one_line(tmp_path, capsys):
    from transfer.features.spec import CacheSpec

    user_error(capsys, ["extract", "--backbone", "example:digits", "--data", DIGITS, "--cache-dir", tmp_path,
                        "--engine", "openvino", "--precision", "int8", "--calibration-size", "0"],
               r"^transfer extract: error: calibration_size=0 \(--calibration-size\) must be a whole number")
    with pytest.raises(TransferError, match="calibration_size=2.5"):
        CacheSpec.of(tmp_path, calibration_size=2.5)


def test_the_calibration_sample_comes_from_the_training_split_only():
    from transfer.features.calibration import Calibration
    from transfer.features.inputs import open_inputs

    inputs = open_inputs("example:digits", DIGITS, cut="block2_out", batch_size=16)
    calibration = Calibration(inputs, calibration=20, held_back=6)
    chosen = calibration._examples.reshape(26, -1)
    split = {role: np.concatenate([np.asarray(x) for x, _ in inputs.batches.evaluation(role)]).reshape(-1, 64)
             for role in ("train", "validation", "test") if getattr(inputs.splits, role) is not None}
    assert len(split) == 3 and len(chosen) == len(np.unique(chosen, axis=0)) == 26
    assert all((split["train"] == example).all(axis=1).any() for example in chosen)
    others = np.concatenate([split["validation"], split["test"]])
    only_there = [e for e in others if not (split["train"] == e).all(axis=1).any()]
    assert only_there and not any((chosen == e).all(axis=1).any() for e in only_there)
    assert [len(b) for b in calibration.batches] == [16, 4] and len(calibration.held_back) == 6
    np.testing.assert_array_equal(calibration.batches[0], inputs.prepared(calibration._examples[:16]))  # as fed
    again = Calibration(open_inputs("example:digits", DIGITS, cut="block2_out", batch_size=16), 20, 6)
    assert again.identity == calibration.identity and (again._examples == calibration._examples).all()  # seeded
    reseeded = Calibration(open_inputs("example:digits", DIGITS, cut="block2_out", seed=1), 20, 6)
    assert reseeded.identity != calibration.identity


def test_engine_and_precision_change_the_feature_cache_key():
    from transfer.features.cache import entry_key
    from transfer.features.extraction import ingredients
    from transfer.features.inputs import open_inputs

    inputs = open_inputs("example:digits", DIGITS, cut="block2_out")
    calibration = {"role": "train", "seed": 0, "size": 3, "held_back": 1}

    def key(engine, precision, sample=None):
        return entry_key(ingredients(inputs.backbone, inputs.backbone.cuts[0], inputs.kind, inputs.splits.identity,
                                     "test", "float32", engine, "none", precision, sample))

    keys = {key("tf", "fp32"), key("onnxruntime", "fp32"), key("openvino", "fp32"),
            key("openvino", "int8", calibration)}
    assert len(keys) == 4
    assert key("openvino", "int8", {**calibration, "seed": 1}) not in keys  # another calibration sample


def test_an_op_openvino_cannot_convert_falls_back_to_tensorflow_with_one_line(tmp_path):
    backbone = _graph(tmp_path / "lgamma.pb", lambda x: tf.math.lgamma(x + 2.0), (None, 4))
    with pytest.warns(TransferWarning, match=r"^OpenVINO conversion failed, extracting with TensorFlow: "
                                             r"No conversion rule found for operations: Lgamma$"):
        engine = choose_engine(backbone, "openvino", sample=np.ones((2, 4), np.float32), cache_dir=tmp_path)
    assert engine.name == "tf" and engine.run is backbone
    assert not list((tmp_path / "openvino").glob("*.xml"))  # nothing unusable is kept


def test_missing_openvino_is_one_line_saying_what_to_install(tiny, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: importing it raises
    backbone = Backbone.load(tiny.path, cut="gap")
    with pytest.raises(TransferError, match=r"^--engine openvino needs openvino; install them: "
                                            r"pip install 'transfer\[openvino\]'$"):
        choose_engine(backbone, "openvino", cache_dir=tmp_path)
    user_error(capsys, ["extract", "--backbone", "example:digits", "--cut", "block2_out", "--data", DIGITS,
                        "--cache-dir", tmp_path, "--engine", "openvino", "--precision", "int8"],
               r"--precision int8 needs openvino and nncf \(openvino is missing\); install them: pip install")


def test_int8_on_an_engine_that_cannot_run_it_is_one_line(tmp_path, capsys):
    common = ["--backbone", "example:digits", "--cut", "block2_out", "--data", DIGITS, "--precision", "int8"]
    user_error(capsys, ["extract", *common, "--cache-dir", tmp_path, "--engine", "onnxruntime"],
               r"error: --precision int8 runs on --engine openvino or auto .*not on --engine onnxruntime$")
    user_error(capsys, ["fit", *common, "--engine", "openvino", "--out", tmp_path / "run"], r"add --cache-dir$")


def test_openvino_and_nncf_send_no_telemetry(tmp_path, monkeypatch):
    """OpenVINO's converter sends usage events to Google Analytics unless opted out or in CI:
    a conversion here runs as in CI, and leaves the environment as it was."""
    import openvino_telemetry
    from urllib import request

    monkeypatch.delenv("CI", raising=False)
    sent = []
    monkeypatch.setattr(request, "urlopen", lambda *args, **kwargs: sent.append(args))
    _graph(tmp_path / "plain.pb", lambda x: x * 2.0 + 1.0, (None, 4))
    OpenVino.for_backbone(Backbone.load(tmp_path / "plain.pb", cut="y"), tmp_path)
    assert openvino_telemetry.Telemetry().consent is False and not sent
    assert "CI" not in __import__("os").environ
