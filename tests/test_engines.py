"""Engines (issue 13): the frozen part of a backbone under ONNX Runtime, checked against TensorFlow."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend)
import tensorflow as tf

from transfer import Backbone, TransferError
from transfer.features.engines import OnnxRuntime, choose_engine, convert
from transfer.errors import TransferWarning


@pytest.fixture()
def images():
    return np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")


def test_onnxruntime_features_agree_with_tensorflow_and_the_conversion_is_kept(tiny, images, tmp_path):
    backbone = Backbone.load(tiny.path, cut="conv2,gap")
    engine = choose_engine(backbone, "onnxruntime", sample=images, cache_dir=tmp_path)
    assert engine.name == "onnxruntime" and "agrees with TensorFlow" in engine.note
    expected, got = backbone(images), engine(images)
    assert set(got) == {"conv2", "gap"}
    for key in got:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5)
    (converted,) = (tmp_path / "onnx").glob("*.onnx")
    stamp = converted.stat().st_mtime_ns
    again = OnnxRuntime.for_backbone(Backbone.load(tiny.path, cut="conv2,gap"), tmp_path)
    assert again.path == converted and converted.stat().st_mtime_ns == stamp  # converted once
    other_cut = OnnxRuntime.for_backbone(Backbone.load(tiny.path, cut="gap"), tmp_path)
    assert other_cut.path != converted  # the cut is part of the key


def test_auto_measures_and_says_which_engine_it_took(tiny, images, tmp_path):
    engine = choose_engine(Backbone.load(tiny.path, cut="gap"), "auto", sample=images, cache_dir=tmp_path)
    assert engine.name in ("tf", "onnxruntime")
    assert f"x TensorFlow at batch {len(images)}" in engine.note or f"x at batch {len(images)}" in engine.note


def test_disagreeing_features_fall_back_to_tensorflow_with_a_warning(tiny, images, tmp_path):
    backbone = Backbone.load(tiny.path, cut="gap")
    runtime = OnnxRuntime.for_backbone(backbone, tmp_path)
    # The converted file is replaced by a model of another graph with the same input and output names.
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, (None, 16, 16, 3), name=runtime.inputs[0][0].split(":")[0])
        tf.identity(tf.reduce_mean(image, axis=[1, 2])[:, :1] * 0.0 + tf.ones([1, 8]), name="out")
    runtime.path.write_bytes(convert(graph.as_graph_def(), [image.name], ["out:0"]))
    with pytest.warns(TransferWarning, match=r"ONNX Runtime's features differ from TensorFlow's by .*extracting with "
                                             r"TensorFlow"):
        engine = choose_engine(backbone, "onnxruntime", sample=images, cache_dir=tmp_path)
    assert engine.name == "tf" and engine.run is backbone


def test_an_op_onnx_cannot_run_falls_back_to_tensorflow(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="x")
        tf.identity(tf.math.lgamma(x + 2.0), name="y")
    path = tmp_path / "lgamma.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    backbone = Backbone.load(path, cut="y")
    with pytest.warns(TransferWarning, match="ONNX conversion failed, extracting with TensorFlow: .*Lgamma"):
        engine = choose_engine(backbone, "onnxruntime", sample=np.ones((2, 4), np.float32), cache_dir=tmp_path)
    assert engine.name == "tf"
    assert not list((tmp_path / "onnx").glob("*.onnx"))  # nothing unusable is kept


def test_missing_onnxruntime_is_one_line_saying_what_to_install(tiny, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it raises
    backbone = Backbone.load(tiny.path, cut="gap")
    with pytest.raises(TransferError,
                       match=r"needs onnxruntime and tf2onnx; install them: pip install 'transfer\[onnx\]'"):
        choose_engine(backbone, "onnxruntime", cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = choose_engine(backbone, "auto", cache_dir=tmp_path)
    assert engine.name == "tf" and "not installed" in engine.note


def test_unknown_engine_names_the_valid_ones(tiny):
    with pytest.raises(TransferError,
                       match=r"^engine='onnx' \(--engine\) must be one of tf, onnxruntime, openvino, auto$"):
        choose_engine(Backbone.load(tiny.path, cut="gap"), "onnx")


def test_extract_fit_and_sweep_take_the_engine_and_it_is_part_of_the_cache_key(tmp_path, capsys):
    from transfer.features.cache import FeatureCache
    from transfer.cli.main import main

    cache = tmp_path / "cache"
    common = ["--backbone", "example:digits", "--cut", "block2_out", "--data", "digits:5-9?per_class=10",
              "--cache-dir", str(cache)]
    assert main(["extract", *common, "--engine", "onnxruntime"]) == 0
    assert "engine: onnxruntime (agrees with TensorFlow on the first batch)" in capsys.readouterr().out
    assert main(["extract", *common, "--engine", "onnxruntime", "--json"]) == 0  # found in the cache
    onnx_entries = {row["key"] for row in json.loads(capsys.readouterr().out)}
    assert main(["extract", *common, "--json"]) == 0
    tf_keys = {row["key"] for row in json.loads(capsys.readouterr().out)}
    assert not onnx_entries & tf_keys  # another engine, another entry
    engine_rows = [e for e in FeatureCache(cache).entries() if e.manifest["ingredients"].get("engine")]
    assert {e.manifest["ingredients"]["engine"] for e in engine_rows} == {"onnxruntime"}
    features = {e.manifest["ingredients"].get("engine", "tf"): e.arrays()[0] for e in FeatureCache(cache).entries()
                if e.manifest["role"] == "train"}
    np.testing.assert_allclose(features["onnxruntime"], features["tf"], rtol=1e-4, atol=1e-4)
    out = tmp_path / "run"
    assert main(["fit", *common, "--head", "logreg", "--engine", "onnxruntime", "--out", str(out), "--export", "none",
                 "--json"]) == 0
    assert json.loads((out / "config.json").read_text())["engine"] == "onnxruntime"
    assert main(["fit", *common[:-2], "--engine", "onnxruntime", "--out", str(tmp_path / "x")]) == 2
    assert "add --cache-dir" in capsys.readouterr().err
    assert main(["sweep", *common, "--heads", "logreg", "--engine", "auto", "--out", str(tmp_path / "sweep"),
                 "--export", "none"]) == 0
    assert "engine: auto: " in capsys.readouterr().out


def test_feature_extractor_takes_the_engine(tiny, images):
    from transfer import FeatureExtractor

    expected = FeatureExtractor(tiny.path, cut="gap").fit(images).transform(images)
    got = FeatureExtractor(tiny.path, cut="gap", engine="onnxruntime").fit(images).transform(images)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_cuts_pooled_under_onnxruntime_agree_with_tensorflow(tmp_path, capsys):
    """`--pool avg` with ONNX Runtime pools after its run (outside the traced function) and
    stores what TensorFlow's pass stores, pooled in its trace."""
    from transfer.features.cache import FeatureCache
    from transfer.cli.main import main

    cache = tmp_path / "cache"
    common = ["--backbone", "example:digits", "--cut", "block1_out,block2_out", "--data", "digits:5-9?per_class=10",
              "--cache-dir", str(cache), "--pool", "avg"]
    assert main(["extract", *common, "--engine", "onnxruntime"]) == 0 and main(["extract", *common]) == 0
    features = {(e.manifest["ingredients"].get("engine", "tf"), e.manifest["ingredients"]["backbone"]["cut"]):
                e.arrays()[0] for e in FeatureCache(cache).entries() if e.manifest["role"] == "train"}
    assert len(features) == 4 and all(array.ndim == 2 for array in features.values())
    for cut in {cut for _, cut in features}:
        np.testing.assert_allclose(features["onnxruntime", cut], features["tf", cut], rtol=1e-4, atol=1e-4)
