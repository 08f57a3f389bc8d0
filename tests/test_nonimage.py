"""Backbones whose input is not an image: waveforms, vectors, token ids, spectrograms.

Each trains from npz arrays (or a TFDS feature), extracts to the feature cache, exports, and
its exports take the backbone's own input; the data's shape and dtype are checked up front.
"""
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import transfer
from transfer import Backbone
from transfer.features.cache import FeatureCache
from transfer.cli.main import main
from cli_checks import fit_error
from transfer.errors import TransferError
from transfer.features.inputs import open_inputs
from transfer.sweep.sweeping import sweep


def tones(count: int, length: int = 1024, seed: int = 0):
    """Waveforms (count, length, 1): three classes of sine pitch, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    t = np.arange(length) / length
    waves = np.sin(2 * np.pi * (8 + 40 * labels[:, None]) * t + rng.uniform(0, 6, (count, 1)))
    waves += rng.normal(0, 0.1, waves.shape)
    return waves[..., None].astype("float32"), labels


def save_npz(path, x, y, **extra):
    np.savez(path, x=x, y=y, **extra)
    return f"npz:{path}"


def exported_predictions(run, x):
    """(model.keras, SavedModel, frozen .pb) outputs on raw inputs `x`."""
    model = keras.models.load_model(run / "model.keras")
    served = tf.saved_model.load(str(run / "export/saved_model")).signatures["serving_default"]
    (name,) = served.structured_input_signature[1]
    frozen = Backbone.load(run / "export/model.pb", cut="probabilities")
    return (model.predict(x, verbose=0), served(**{name: tf.constant(x)})["probabilities"].numpy(),
            np.asarray(frozen(x)))


# -- audio: a Conv1D net on (N, 1024, 1) waveforms ----------------------------------------------


@pytest.fixture(scope="module")
def audio_run(audio, tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    x, y = tones(48)
    data = save_npz(root / "tones.npz", x, y)
    out = root / "run"
    code = main(["fit", "--backbone", str(audio.path), "--cut", "conv2", "--data", data, "--head", "linear",
                 "--epochs", "3", "--lr", "0.01", "--export", "savedmodel,pb,tflite", "--out", str(out)])
    assert code == 0
    return out, data, x


def test_cli_fits_a_waveform_backbone_from_npz_and_exports_take_waveforms(audio_run):
    out, _, x = audio_run
    config = json.loads((out / "config.json").read_text())
    assert config["input_kind"] == "arrays" and config["input_shape"] == [1024, 1]
    assert config["input_dtype"] == "float32" and config["preprocessing"] is None
    keras_out, served, frozen = exported_predictions(out, x[:8])
    np.testing.assert_allclose(served, keras_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frozen, keras_out, rtol=1e-5, atol=1e-6)
    assert Backbone.load(out / "export/model.pb", cut="probabilities").input_specs[0].shape.as_list() == [None, 1024, 1]
    runner = tf.lite.Interpreter(model_path=str(out / "export/model.tflite")).get_signature_runner("serving_default")
    (name,) = runner.get_input_details()
    np.testing.assert_allclose(runner(**{name: x[:1]})["probabilities"], keras_out[:1], rtol=1e-4, atol=1e-5)


def test_predict_and_evaluate_a_waveform_run(audio_run, tmp_path, capsys):
    out, data, x = audio_run
    np.save(tmp_path / "one.npy", x[0])      # one example, no batch axis
    np.save(tmp_path / "many.npy", x[:3])
    assert main(["predict", str(out), str(tmp_path / "one.npy"), str(tmp_path / "many.npy"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    expected = [str(tmp_path / "one.npy")] + [f"{tmp_path / 'many.npy'}[{i}]" for i in range(3)]
    assert [p["image"] for p in predictions] == expected
    assert predictions[0]["top"] == predictions[1]["top"]
    assert main(["evaluate", str(out), "--data", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 48
    np.save(tmp_path / "short.npy", x[:2, :1000])
    assert main(["predict", str(out), str(tmp_path / "short.npy")]) == 2
    assert ("input 'waveform' expects float32 examples of shape (1024, 1), got float32 (1000, 1) from "
            f"{tmp_path / 'short.npy'}") in capsys.readouterr().err
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    assert main(["predict", str(out), str(tmp_path / "x.wav")]) == 2
    assert "this run takes arrays, give them as .npy files" in capsys.readouterr().err
    bad = save_npz(tmp_path / "short.npz", x[:6, :1000], np.arange(6) % 3)
    assert main(["evaluate", str(out), "--data", bad]) == 2
    assert "expects float32 examples of shape (1024, 1), got float32 (1000, 1)" in capsys.readouterr().err


def test_thaw_one_layer_of_the_audio_net(audio, tmp_path):
    x, y = tones(30, seed=1)
    result = transfer.fit(audio.path, save_npz(tmp_path / "t.npz", x, y), cut="conv2", thaw=1, epochs=2, lr=0.01,
                          patience=None, out=tmp_path / "run", verbose=0)
    thawed = result.model.get_layer("features")
    pretrained = audio.model.get_layer("conv2").get_weights()[0]
    assert thawed.description.startswith("thawed 1 layer(s)")
    assert not np.allclose(np.asarray(thawed.thawed_weights[0]).reshape(pretrained.shape), pretrained)  # it trained
    keras_out, served, frozen = exported_predictions(tmp_path / "run", x[:6])
    np.testing.assert_allclose(frozen, keras_out, rtol=1e-5, atol=1e-6)  # trained values written back
    np.testing.assert_allclose(served, keras_out, rtol=1e-5, atol=1e-6)


# -- vectors: an MLP on (N, 4) ----------------------------------------------------------------


def blobs(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    centres = np.array([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], "float64")  # float64: stored as float32
    return centres[labels] + rng.normal(0, 0.3, (count, 4)), labels


def test_vectors_extract_to_the_cache_then_fit_from_it(vectors, tmp_path):
    x, y = blobs(60)
    data = save_npz(tmp_path / "v.npz", x, y)
    inputs = open_inputs(vectors.path, data)
    assert not inputs.kind.images and inputs.kind.shape == (4,)
    features, labels = inputs.extract(tmp_path / "cache", progress=False)["train"][0].arrays()
    expected = keras.Model(vectors.model.inputs, vectors.model.get_layer("embedding").output)
    first = np.stack([example for example, _ in inputs.splits.train.take(4)])
    np.testing.assert_allclose(features[:4], expected.predict(first, verbose=0), rtol=1e-5, atol=1e-6)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npy")}
    result = transfer.fit(vectors.path, data, head="logreg", cache_dir=tmp_path / "cache", out=tmp_path / "run",
                          verbose=0)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npy")} == stamps  # reused
    assert result.metrics["validation"]["accuracy"] > 0.8
    keras_out, served, frozen = exported_predictions(tmp_path / "run", x[:5].astype("float32"))
    np.testing.assert_allclose(served, keras_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frozen, keras_out, rtol=1e-5, atol=1e-6)


def test_vectors_from_a_tfds_feature(vectors, tmp_path):
    with tfds.testing.mock_data(num_examples=30):  # iris: a Tensor feature of shape (4,), float32
        result = transfer.fit(vectors.path, "tfds:iris", data_dir=str(tmp_path), epochs=2, export=(), verbose=0)
    assert result.class_names == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    assert "validation" in result.metrics


def test_one_sweep_on_vectors(vectors, tmp_path):
    x, y = blobs(45, seed=2)
    result = sweep(vectors.path, save_npz(tmp_path / "v.npz", x, y), heads=("linear", "mlp"), epochs=[3],
                            cache_dir=tmp_path / "cache", out=tmp_path / "sweep", export=("pb",), progress=False)
    assert len(result.rows) == 2
    assert json.loads((tmp_path / "sweep/best/config.json").read_text())["input_kind"] == "arrays"
    frozen = Backbone.load(tmp_path / "sweep/best/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(x[:4]), result.best.model.predict(x[:4].astype("float32"), verbose=0),
                               rtol=1e-5, atol=1e-6)


# -- token ids: int32 (N, 10) through an Embedding ---------------------------------------------


def sentences(count: int, seed: int = 0):
    """Token ids (int64, as tokenizers give them): class k draws its words from 10k..10k+9."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 4
    return rng.integers(0, 10, (count, 10)) + 10 * labels[:, None], labels


def test_token_ids_fit_from_npz_and_from_the_cache_and_export(tokens, tmp_path):
    x, y = sentences(40)
    data = save_npz(tmp_path / "s.npz", x, y)
    direct = transfer.fit(tokens.path, data, head="linear", epochs=2, out=tmp_path / "run", verbose=0)
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["input_dtype"] == "int32" and config["input_shape"] == [10]
    assert direct.model.inputs[0].dtype == "int32"
    keras_out, served, frozen = exported_predictions(tmp_path / "run", x[:6].astype("int32"))
    np.testing.assert_allclose(served, keras_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frozen, keras_out, rtol=1e-5, atol=1e-6)
    cached = transfer.fit(tokens.path, data, head="linear", epochs=2, cache_dir=tmp_path / "cache", export=(),
                          verbose=0)
    assert sorted(e.manifest["role"] for e in FeatureCache(tmp_path / "cache").entries()) == ["train", "validation"]
    assert cached.model.inputs[0].dtype == "int32" and cached.model.predict(x[:3], verbose=0).shape == (3, 4)


# -- spectrograms (N, 20, 12, 1): a rank-4, one-channel input --------------------------------


def test_a_spectrogram_of_exactly_the_inputs_shape_passes_unchanged(spectrogram, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, (12, 20, 12, 1)).astype("float32")  # far outside any pixel range
    inputs = open_inputs(spectrogram.path, save_npz(tmp_path / "s.npz", x, np.arange(12) % 2), validation_split=0)
    batch = next(iter(inputs.batches.evaluation("train")))[0]
    np.testing.assert_array_equal(batch, x[:len(batch)])
    np.testing.assert_allclose(inputs.feature_batch(batch), Backbone.load(spectrogram.path)(x[:len(batch)]),
                               rtol=1e-6, atol=1e-6)
    without_channel = open_inputs(spectrogram.path, save_npz(tmp_path / "c.npz", x[..., 0], np.arange(12) % 2),
                                  validation_split=0)
    np.testing.assert_array_equal(next(iter(without_channel.batches.evaluation("train")))[0], batch)


# -- the data checked against the input: one line naming both --------------------------------


def test_shape_mismatch_names_the_input_expected_and_got(audio, capsys, tmp_path):
    x, y = tones(6)
    data = save_npz(tmp_path / "short.npz", x[:, :1000], y)
    err = fit_error(capsys, tmp_path, backbone=audio.path, data=data)
    assert err.endswith(f"input 'waveform' expects float32 examples of shape (1024, 1), got float32 (1000, 1) "
                        f"from {data}")
    data = save_npz(tmp_path / "flat.npz", x[..., 0], y)
    err = fit_error(capsys, tmp_path, backbone=audio.path, data=data)
    assert f"expects float32 examples of shape (1024, 1), got float32 (1024,) from {data}; add the channel axis" in err


def test_dtype_mismatch_names_the_input_expected_and_got(tokens, capsys, tmp_path):
    x, y = sentences(8)
    data = save_npz(tmp_path / "floats.npz", x.astype("float32"), y)
    err = fit_error(capsys, tmp_path, backbone=tokens.path, data=data)
    assert err.endswith(f"input 'tokens' expects int32 examples of shape (10,), got float32 (10,) from {data}")


def test_image_settings_are_refused_for_arrays(audio, capsys, tmp_path):
    x, y = tones(6)
    data = save_npz(tmp_path / "t.npz", x, y)
    err = fit_error(capsys, tmp_path, "--scale", "0..1", backbone=audio.path, data=data)
    assert "--scale '0..1' applies to image inputs; input 'waveform' takes float32 arrays of shape (1024, 1)" in err
    assert "augmentation (--augment, --crop-padding) applies to image inputs" in fit_error(
        capsys, tmp_path, "--augment", backbone=audio.path, data=data)
    (tmp_path / "prep.json").write_text(json.dumps({"scale": "0..1"}))
    assert "preprocessing settings (--preprocessing) applies to image inputs" in fit_error(
        capsys, tmp_path, "--preprocessing", tmp_path / "prep.json", backbone=audio.path, data=data)


def test_images_cannot_feed_a_waveform_input(audio, capsys, tmp_path):
    err = fit_error(capsys, tmp_path, backbone=audio.path, data="digits:0-1")
    assert re.search(r"fit needs a backbone that takes images .* its input 'waveform' has shape \(None, 1024, 1\)", err)


def test_vectors_into_an_image_backbone(tiny, tmp_path):
    x, y = blobs(6)
    with pytest.raises(TransferError, match=r"input 'image' expects float32 examples of shape \(16, 16, 3\), "
                                            r"got float32 \(4,\)"):
        open_inputs(tiny.path, save_npz(tmp_path / "v.npz", x, y))


def test_an_input_of_unknown_rank_takes_the_datas_shape(tmp_path):
    """A TF1 placeholder declared without a shape: the arrays define it."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, name="anything")
        weights = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype("float32"))
        tf.nn.relu(tf.matmul(tf.reshape(x, [-1, 4]), weights), name="features")
    path = tmp_path / "unknown_rank.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    vectors, labels = blobs(30)
    result = transfer.fit(path, save_npz(tmp_path / "v.npz", vectors, labels), cut="features", epochs=2,
                          out=tmp_path / "run", export=("pb",), verbose=0)
    assert json.loads((tmp_path / "run/config.json").read_text())["input_shape"] == [4]
    frozen = Backbone.load(tmp_path / "run/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(vectors[:3]), result.model.predict(vectors[:3].astype("float32"), verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_feature_extractor_takes_the_backbones_arrays(tokens):
    from transfer.features.estimators import FeatureExtractor

    x, _ = sentences(12)
    features = FeatureExtractor(tokens.path).fit(x).transform(x)  # int64 ids, cast to the input's int32
    np.testing.assert_allclose(features, Backbone.load(tokens.path)(x.astype("int32")), rtol=1e-6, atol=1e-6)
    with pytest.raises(TransferError, match=r"input 'tokens' expects int32 examples of shape \(10,\), "
                                            r"got float32 \(10,\) from X"):
        FeatureExtractor(tokens.path).fit(x.astype("float32"))


def test_gray_images_in_an_npz_still_feed_an_image_backbone(tmp_path):
    """npz arrays keep their shape; (N, 8, 8) pixels get their channel axis as images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = open_inputs("example:digits", save_npz(tmp_path / "d.npz", digits.images[:40], digits.target[:40] % 2))
    assert inputs.kind.images and inputs.kind.shape == (8, 8, 1)
    assert next(iter(inputs.batches.training()))[0].shape[1:] == (8, 8, 1)
