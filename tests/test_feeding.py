"""Graphs as users bring them (issue 10, items 1, 2, 5): fed at any tensor (`--inputs Mul` on an
Inception-like graph whose placeholder is a JPEG string), told where the image goes in, and
extra placeholders (`is_training` with a default, a plain `keep_prob` given by `--feed`)."""
import json
import re

import numpy as np
import pytest
import tensorflow as tf
from graphs import extra_inputs_graph

import keras
import transfer
from transfer import Backbone, FeatureLayer, TransferError
from transfer.cli.main import main
from cli_checks import user_error
from transfer.features.estimators import FeatureExtractor

IMAGE_HINT = r"input 'DecodeJpeg/contents' is a string scalar .*the image enters the network at 'Mul' .*--inputs Mul"


def images(count, size=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (count, size, size, 3)).astype("float32")


def graph_fed_at(path, feed: str, fetch: str, shape):
    """The plain TF way (retrain.py's `sess.run(fetch, {feed: x})`): the file's graph, unchanged,
    imported with the fed tensor mapped to a function input."""
    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())

    def body(x):
        return tf.graph_util.import_graph_def(graph_def, input_map={feed: x}, return_elements=[fetch], name="")[0]

    return tf.compat.v1.wrap_function(body, [tf.TensorSpec(shape, tf.float32)])


@pytest.fixture(scope="module")
def arrays_npz(tmp_path_factory):
    """Two classes of 32x32 'images' in [-1, 1] that differ in brightness: learnable."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    x = np.clip(rng.normal(0, 0.3, (80, 32, 32, 3)) + np.where(y == 1, 0.5, -0.5)[:, None, None, None], -1, 1)
    path = tmp_path_factory.mktemp("data") / "bright.npz"
    np.savez(path, x=x.astype("float32"), y=y, class_names=np.array(["dark", "bright"]))
    return path


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 12)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=rng.uniform(0, 1, (24, 8, 8, 3)).astype("float32"), y=y)
    return path


@pytest.fixture(scope="module")
def keep_prob_graph(tmp_path_factory):
    return extra_inputs_graph(tmp_path_factory.mktemp("graphs") / "keep_prob.pb", keep_prob=True)


@pytest.fixture(scope="module")
def is_training_graph(tmp_path_factory):
    return extra_inputs_graph(tmp_path_factory.mktemp("graphs") / "is_training.pb", keep_prob=False)


# -- 1. feed at any tensor -------------------------------------------------------------------------


def test_fed_at_mul_takes_batches_equal_to_one_at_a_time(inception_like):
    backbone = Backbone.load(inception_like.path, inputs="Mul", cut="pool_3")
    assert backbone.input_specs[0].shape.as_list() == [None, 32, 32, 3]
    batch = images(32)
    features = backbone(batch).numpy()
    assert features.shape == (32, 1, 1, inception_like.extra["channels"])
    reference = graph_fed_at(inception_like.path, "Mul:0", "pool_3:0", [1, 32, 32, 3])
    one_by_one = np.concatenate([reference(batch[i:i + 1]).numpy() for i in range(32)])
    np.testing.assert_allclose(features, one_by_one, rtol=1e-5, atol=1e-6)
    assert np.ptp(features) > 0  # not a constant
    same = Backbone.load(inception_like.path, inputs="Mul:0", cut="pool_3")
    np.testing.assert_array_equal(same(batch), features)


def test_a_reshape_to_batch_1_is_named_with_the_tensor_before_it(inception_like):
    with pytest.raises(TransferError) as caught:
        Backbone.load(inception_like.path, inputs="Mul", cut="pool_3/_reshape")
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(r"op 'pool_3/_reshape' \(Reshape\) fixes the batch to 1 .*cut at 'pool_3'", message), message
    # auto walks back through the reshape to the bottleneck itself, which takes batches
    auto = Backbone.load(inception_like.path, inputs="Mul")
    assert auto.cuts[0].name == "pool_3:0" and auto(np.zeros((4, 32, 32, 3), "float32")).shape[0] == 4


def test_unknown_input_names_the_closest(inception_like, capsys):
    with pytest.raises(TransferError, match=r"unknown input 'Mull'; .*closest tensors: Mul\b"):
        Backbone.load(inception_like.path, inputs="Mull", cut="pool_3")
    user_error(capsys, ["inspect", inception_like.path, "--inputs", "Mull"], r"unknown input 'Mull'.*Mul")


def test_a_cut_before_the_input_is_an_error(inception_like):
    with pytest.raises(TransferError, match=r"cut 'Sub' comes before the input\(s\) Mul"):
        Backbone.load(inception_like.path, inputs="Mul", cut="Sub")


def test_several_inputs_and_an_input_the_cut_does_not_depend_on(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 2], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 2], name="b")
        doubled = tf.multiply(a, 2.0, name="doubled")
        tf.identity(b + 1.0, name="from_b")
        tf.add(doubled, b, name="both")
    path = tmp_path / "two.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    both = Backbone.load(path, inputs="doubled,b", cut="both")
    assert [s.name for s in both.input_specs] == ["doubled", "b"]
    np.testing.assert_allclose(both({"doubled": np.ones([3, 2]), "b": np.full([3, 2], 2.0)}), np.full([3, 2], 3.0))
    with pytest.raises(TransferError, match=r"cut 'from_b' is not reachable from the input doubled"):
        Backbone.load(path, inputs="doubled", cut="from_b")
    with pytest.raises(TransferError, match=r"input 'doubled' is fed, but no cut \(from_b\) depends on it"):
        Backbone.load(path, inputs="doubled,b", cut="from_b")


def test_saved_model_fed_inside_its_signature(tmp_path):
    """Fed at an inner tensor, `auto` walks back from the output computed from it, not the other."""
    class TwoOutputs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"early": tf.identity(x * 3.0, name="early"),
                    "late": tf.identity(tf.nn.relu(x - 1.0, name="mid") * 2.0, name="late")}

    module = TwoOutputs()
    tf.saved_model.save(module, str(tmp_path / "two"), signatures={"serving_default": module.serve})
    backbone = Backbone.load(tmp_path / "two", inputs="PartitionedCall/mid")
    assert backbone.input_specs[0].name == "PartitionedCall/mid"
    np.testing.assert_allclose(backbone(np.full([3, 4], 0.5, "float32")), np.ones([3, 4]))


# -- 2. say where the image goes in ------------------------------------------------------------------


def test_inspect_names_where_the_image_goes_in(inception_like, capsys):
    assert main(["inspect", str(inception_like.path)]) == 0
    text = capsys.readouterr().out
    assert re.search(IMAGE_HINT, text), text
    assert main(["inspect", str(inception_like.path), "--json"]) == 0
    (hint,) = json.loads(capsys.readouterr().out)["input_hints"]
    assert re.search(IMAGE_HINT, hint)
    assert main(["inspect", str(inception_like.path), "--inputs", "Mul", "--cut", "pool_3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"][0]["name"] == "Mul" and report["inputs"][0]["shape"] == [None, 32, 32, 3]
    assert report["input_hints"] == [] and report["cuts"][0]["shape"] == [None, 1, 1, 6]


def test_a_batch_1_placeholder_is_no_image_batch_either(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3], name="image")
        weights = tf.constant(np.ones((3, 3, 3, 2), "float32"))
        tf.nn.relu(tf.nn.conv2d(image, weights, 1, "SAME"), name="features")
    path = tmp_path / "batch1.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    assert re.search(r"input 'image' is a batch fixed to 1 .*--inputs image", Backbone.load(path).image_input_hint())
    opened = Backbone.load(path, inputs="image", cut="features")
    assert opened.image_input_hint() is None and opened(np.ones([4, 8, 8, 3])).shape == (4, 8, 8, 2)


def test_a_refused_op_before_the_image_says_where_to_feed_past_it(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name="contents")
        image = tf.expand_dims(tf.cast(tf.io.decode_jpeg(contents, channels=3), tf.float32), 0)
        offset = tf.strings.to_number(tf.io.read_file(str(tmp_path / "offset.txt")))
        scaled = tf.add(image, offset, name="scaled")
        tf.nn.relu(tf.nn.conv2d(scaled, tf.ones([3, 3, 3, 2]), 1, "SAME"), name="features")
    path = tmp_path / "reads.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(TransferError, match=r"--allow-op ReadFile \(allow_ops=\['ReadFile'\]\); "
                                            r"or input 'contents' is a string scalar .*"
                                            r"--inputs scaled") as caught:
        Backbone.load(path, cut="features")
    assert "\n" not in str(caught.value)
    fed = Backbone.load(path, inputs="scaled", cut="features")
    assert fed(np.ones([2, 4, 4, 3])).shape == (2, 4, 4, 2)


def test_fit_says_where_the_image_goes_in(inception_like, arrays_npz, capsys, tmp_path):
    with pytest.raises(TransferError, match=IMAGE_HINT):
        transfer.fit(inception_like.path, f"npz:{arrays_npz}", cut="pool_3", epochs=1, verbose=0)
    user_error(capsys, ["fit", "--backbone", inception_like.path, "--cut", "pool_3", "--data", f"npz:{arrays_npz}",
                            "--out", tmp_path / "run"],
                    r"input 'DecodeJpeg/contents' expects string examples of shape \(\), got float32 .*" + IMAGE_HINT)
    assert not (tmp_path / "run").exists()


def test_cli_fit_and_extract_fed_at_mul(inception_like, arrays_npz, capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["fit", "--backbone", str(inception_like.path), "--inputs", "Mul", "--cut", "pool_3", "--head", "mlp",
                 "--data", f"npz:{arrays_npz}", "--epochs", "3", "--batch-size", "32", "--export", "none",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["inputs"] == ["Mul"] and config["cut_tensor"] == "pool_3:0" and config["feeds"] == {}
    assert json.loads((out / "metrics.json").read_text())["validation"]["examples"] > 0
    capsys.readouterr()
    cache = tmp_path / "cache"
    assert main(["extract", "--backbone", str(inception_like.path), "--inputs", "Mul", "--cut", "pool_3",
                 "--data", f"npz:{arrays_npz}", "--cache-dir", str(cache), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {tuple(r["shape"]) for r in rows} == {(1, 1, 6)}


def test_cli_sweep_fed_at_mul_records_it(inception_like, arrays_npz, capsys, tmp_path):
    out = tmp_path / "sweep"
    code = main(["sweep", "--backbone", str(inception_like.path), "--inputs", "Mul", "--cut", "pool_3",
                 "--data", f"npz:{arrays_npz}", "--heads", "linear", "--epochs", "2",
                 "--cache-dir", str(tmp_path / "c"), "--export", "none", "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["inputs"] == ["Mul"]
    assert json.loads((out / "best" / "config.json").read_text())["inputs"] == ["Mul"]


def test_feature_extractor_fed_at_mul(inception_like):
    features = FeatureExtractor(str(inception_like.path), inputs="Mul", cut="pool_3").fit_transform(images(5))
    assert features.shape == (5, 6)


# -- 5. extra inputs ---------------------------------------------------------------------------------


def reference_features(batch, is_training=False, keep_prob=1.0):
    """What `extra_inputs_graph` computes, by hand."""
    weights = tf.constant(np.random.default_rng(5).normal(0, 0.5, (3, 3, 3, 4)).astype("float32"))
    x = tf.nn.relu(tf.nn.conv2d(batch, weights, 1, "SAME"))
    return (tf.reduce_mean(x * (0.5 if is_training else 1.0) * keep_prob, axis=[1, 2])).numpy()


def test_a_placeholder_with_default_just_works(is_training_graph):
    backbone = Backbone.load(is_training_graph, cut="features")
    assert [s.name for s in backbone.input_specs] == ["images"]
    batch = images(4, size=8)
    np.testing.assert_allclose(backbone(batch), reference_features(batch), rtol=1e-5, atol=1e-6)
    trained = Backbone.load(is_training_graph, cut="features", feeds={"is_training": "true"})
    np.testing.assert_allclose(trained(batch), reference_features(batch, is_training=True), rtol=1e-5, atol=1e-6)


def test_an_unfed_placeholder_is_named(keep_prob_graph, small_npz, capsys, tmp_path):
    unfed = r"placeholder 'keep_prob' \(float32 \(\)\) is not fed: .*--feed keep_prob=VALUE"
    with pytest.raises(TransferError, match=unfed):
        Backbone.load(keep_prob_graph, cut="features")
    with pytest.raises(TransferError, match=r"also needs placeholder\(s\) keep_prob, .*--feed keep_prob=VALUE"):
        Backbone.load(keep_prob_graph, cut="features", inputs="images")
    user_error(capsys, ["fit", "--backbone", keep_prob_graph, "--cut", "features", "--data", f"npz:{small_npz}",
                            "--out", tmp_path / "run"], r"placeholder 'keep_prob' .* --feed keep_prob=VALUE")


def test_feed_a_constant(keep_prob_graph):
    batch = images(3, size=8)
    for name, value in (("keep_prob", 0.5), ("keep_prob", "0.5"), ("keep_prob:0", np.float32(0.5))):
        backbone = Backbone.load(keep_prob_graph, cut="features", feeds={name: value})
        assert [s.name for s in backbone.input_specs] == ["images"] and backbone.feed_values == {"keep_prob": 0.5}
        np.testing.assert_allclose(backbone(batch), reference_features(batch, keep_prob=0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("feeds, pattern", [
    ({"keep_prb": 1.0}, r"--feed keep_prb: no such placeholder \(closest: keep_prob\); the graph's placeholders are: "
                        r"images, is_training, keep_prob"),
    ({"keep_prob": "high"}, r"feed keep_prob=high is not a float32 value; placeholder 'keep_prob' takes float32 "
                            r"of shape \(\) \(--feed keep_prob=1.0\)"),
    ({"keep_prob": [1.0, 0.5]}, r"feed keep_prob=\[1.0, 0.5\] has shape \(2,\); placeholder 'keep_prob' takes "
                                r"float32 of shape \(\)"),
    ({"is_training": "maybe"}, r"feed is_training=maybe is not a bool value; .*--feed is_training=true"),
    ({"keep_prob": 1.0, "images": 0.0}, r"feed images=0.0 has shape \(\); placeholder 'images' takes float32 of shape "
                                        r"\(None, 8, 8, 3\)"),
])
def test_bad_feeds(keep_prob_graph, feeds, pattern):
    with pytest.raises(TransferError, match=pattern) as caught:
        Backbone.load(keep_prob_graph, cut="features", feeds=feeds)
    assert "\n" not in str(caught.value)


def test_cli_feed_is_recorded_and_bad_feeds_are_one_line(keep_prob_graph, small_npz, capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["fit", "--backbone", str(keep_prob_graph), "--feed", "keep_prob=1.0", "--feed", "is_training=false",
                 "--allow-op", "ReadFile", "--cut", "features", "--data", f"npz:{small_npz}", "--epochs", "1",
                 "--export", "none", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["feeds"] == {"keep_prob": 1.0, "is_training": False} and config["allow_ops"] == ["ReadFile"]
    user_error(capsys, ["inspect", keep_prob_graph, "--feed", "keep_prob=abc"],
                   r"feed keep_prob=abc is not a float32")
    user_error(capsys, ["inspect", keep_prob_graph, "--feed", "dropout=1"], r"--feed dropout: no such placeholder")
    code = main(["inspect", str(keep_prob_graph), "--feed", "keep_prob=1", "--cut", "features"])
    assert code == 0 and "fed a constant: keep_prob = 1.0" in capsys.readouterr().out


def test_thawed_layer_with_a_fed_constant(keep_prob_graph):
    layer = transfer.thaw(str(keep_prob_graph), last=1, cut="features", feeds={"keep_prob": 0.5})
    batch = images(2, size=8)
    np.testing.assert_allclose(layer(batch), reference_features(batch, keep_prob=0.5), rtol=1e-5, atol=1e-6)


def test_thawed_layer_fed_at_mul(inception_like):
    layer = transfer.thaw(str(inception_like.path), last=1, inputs="Mul", cut="pool_3")
    batch = images(8)
    frozen = Backbone.load(inception_like.path, inputs="Mul", cut="pool_3")(batch)
    np.testing.assert_allclose(layer(batch), frozen, rtol=1e-5, atol=1e-6)
    assert [w.shape for w in layer.trainable_weights] == [(3, 3, 4, 6)]


# -- saved and loaded -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["inception", "keep_prob"])
def test_keras_round_trip_keeps_inputs_and_feeds(which, inception_like, keep_prob_graph, tmp_path):
    if which == "inception":
        layer, batch = FeatureLayer(str(inception_like.path), inputs="Mul", cut="pool_3"), images(4)
        assert layer.get_config()["inputs"] == "Mul"
    else:
        layer, batch = FeatureLayer(str(keep_prob_graph), cut="features", feeds={"keep_prob": 0.25}), images(4, size=8)
        assert layer.get_config()["feeds"] == {"keep_prob": 0.25}
    inputs = keras.Input(batch.shape[1:])
    model = keras.Model(inputs, keras.layers.Flatten()(layer(inputs)))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")  # safe mode
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), rtol=1e-6)
