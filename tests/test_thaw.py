"""Partial thaw on every graph style: equal outputs before training, gradients exactly where thawed."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

import keras
import transfer
from transfer import Backbone, TransferError
from transfer.features.cache import FeatureCache
from transfer.cli.main import main
from transfer.layers.export import export_frozen_graph
from transfer.layers.feature_layer import FeatureLayer
from transfer.features.inputs import open_inputs
from transfer.graph.thaw_plan import describe_layers
from transfer.layers.thawing import thaw

from graphs import feature_model


def gradients(layer, images):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(images)))
    return tape.gradient(loss, layer.trainable_weights)


def assert_thaw_is_exact(path, cut, images, last, expected_tensors):
    layer = thaw(path, last=last, cut=cut)
    np.testing.assert_allclose(layer(images), Backbone.load(path, cut=cut)(images), rtol=1e-5, atol=1e-6)
    assert len(layer.trainable_weights) == expected_tensors, layer.description
    grads = gradients(layer, images)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads), layer.description
    return layer


def test_keras3_graph_layers_and_batch_norm_statistics(tiny, images16):
    rows = describe_layers(Backbone.load(tiny.path, cut="gap"))
    assert [r["scope"].split("/")[-1] for r in rows] == ["conv2_1", "dw_1", "bn1_1", "conv1_1"]
    assert [r["index"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["ops"] == ["DepthwiseConv2dNative", "BiasAdd"]
    assert rows[2]["weights"] == ["(4,)", "(4,)"] and rows[2]["statistics"] == ["(4,)", "(4,)"]
    assert rows[3]["parameters"] == 3 * 3 * 3 * 4 + 4
    for last, tensors in ((1, 2), (2, 4), (3, 6), (4, 8)):  # kernel + bias per conv; gamma + beta for bn
        assert_thaw_is_exact(tiny.path, "gap", images16, last, tensors)
    gamma, beta, mean, variance = tiny.model.get_layer("bn1").get_weights()
    thawed = [w.numpy() for w in thaw(tiny.path, last=3, cut="gap").trainable_weights]

    def holds(value):
        return any(w.shape == value.shape and np.allclose(w, value, rtol=1e-6) for w in thawed)

    assert holds(gamma) and holds(beta) and not holds(mean) and not holds(variance)
    with_statistics = thaw(tiny.path, last=3, cut="gap", batch_norm_statistics=True)
    assert len(with_statistics.trainable_weights) == 8


def test_gradients_reach_only_the_thawed_layers(tiny, images16):
    """Thawing conv2 only: the depthwise and earlier layers get no weights, the prefix no gradient."""
    layer = thaw(tiny.path, last=1, cut="gap")
    assert {tuple(w.shape) for w in layer.trainable_weights} == {(3, 3, 4, 8), (8,)}
    with tf.GradientTape() as tape:
        tape.watch(images := tf.constant(images16))
        loss = tf.reduce_sum(layer(images))
    assert tape.gradient(loss, images) is None  # the frozen prefix runs without gradient


def test_tf1_graph_fused_batch_norm_and_matmul(tf1_graph):
    images = tf1_graph.extra["images"]
    rows = describe_layers(Backbone.load(tf1_graph.path, cut="probabilities"))
    assert [r["scope"] for r in rows] == ["logits", "conv1"]
    assert rows[1]["ops"] == ["Conv2D", "FusedBatchNormV3"] and rows[1]["statistics"] == ["(4,)", "(4,)"]
    assert_thaw_is_exact(tf1_graph.path, "probabilities", images, 1, 2)  # MatMul weights + BiasAdd biases
    assert_thaw_is_exact(tf1_graph.path, "probabilities", images, 2, 5)  # + conv kernel, gamma, beta
    assert len(thaw(tf1_graph.path, last=2, cut="probabilities", batch_norm_statistics=True).trainable_weights) == 7


def test_thaw_from_scope_is_the_alternative_to_n(tiny, images16):
    by_scope = thaw(tiny.path, from_scope="dw", cut="gap")
    assert len(by_scope.plan.layers) == 2 and by_scope.description.startswith("thawed 2 layer(s)")


def test_training_moves_only_thawed_weights_and_exports_the_trained_values(tiny, images16, tmp_path):
    keras.utils.set_random_seed(0)
    original_bytes = tiny.path.read_bytes()
    backbone = tmp_path / "backbone.pb"
    backbone.write_bytes(original_bytes)
    inputs = keras.Input((16, 16, 3))
    features = thaw(backbone, last=2, cut="conv2")
    model = keras.Model(inputs, transfer.heads.get("linear", num_classes=2)(features(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in features.trainable_weights]
    model.fit(images16, np.arange(6) % 2, epochs=3, verbose=0)
    assert all(not np.allclose(a, w.numpy()) for a, w in zip(before, features.trainable_weights))
    trained = features(images16)
    assert not np.allclose(trained, Backbone.load(tiny.path, cut="conv2")(images16))
    model.save(tmp_path / "thawed.keras")
    restored = keras.models.load_model(tmp_path / "thawed.keras")
    np.testing.assert_allclose(restored.predict(images16, verbose=0), model.predict(images16, verbose=0), rtol=1e-5)
    assert backbone.read_bytes() == original_bytes  # the backbone file is never modified
    backbone.unlink()  # the .keras file embeds the graph; the trained values come from its weights
    restored = keras.models.load_model(tmp_path / "thawed.keras")
    np.testing.assert_allclose(restored.predict(images16, verbose=0), model.predict(images16, verbose=0), rtol=1e-5)


@pytest.mark.slow
def test_fit_with_thaw_exports_a_frozen_graph_with_the_trained_values(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--backbone", "example:digits", "--cut", "resnet_features", "--data",
                 "digits:5-9?per_class=10", "--epochs", "3", "--thaw", "2", "--out", str(out),
                 "--export", "savedmodel,pb", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert "test" in metrics
    assert json.loads((out / "config.json").read_text())["thaw"] == 2
    model = keras.models.load_model(out / "model.keras")
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(8)])
    expected = model.predict(images, verbose=0)
    frozen = Backbone.load(out / "export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), expected, rtol=1e-4, atol=1e-5)
    served = tf.saved_model.load(str(out / "export/saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(images))["probabilities"], expected, rtol=1e-4, atol=1e-5)
    refrozen = tmp_path / "again.pb"
    export_frozen_graph(model, refrozen)
    assert not [n for n in tf.compat.v1.GraphDef.FromString(refrozen.read_bytes()).node if n.op == "VarHandleOp"]


def suffix_gradients(function, thawed, *inputs):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(function(*inputs)))
    return [g.numpy() for g in tape.gradient(loss, thawed.trainable_weights)]


def test_suffix_on_cached_prefix_outputs_equals_the_whole_layer(tmp_path):
    """The cache holds both boundary tensors (the residual shortcut and the block's branch);
    the suffix on them gives the whole layer's features and the same gradients."""
    layer = thaw("example:digits", last=2, cut="resnet_features")
    inputs = open_inputs(layer.backbone, "digits:5-9?per_class=10", batch_size=16)
    prefix = dataclasses.replace(inputs, backbone=layer.prefix_backbone)
    entries = prefix.extract(tmp_path, progress=False)  # one entry per boundary tensor, from one pass
    assert [entry.feature_shapes for entry in entries["test"]] == [[(4, 4, 32)], [(4, 4, 32)]]
    (shortcut, labels), (branch, _) = [entry.arrays() for entry in entries["test"]]
    batches = list(inputs.batches.evaluation("test").as_numpy_iterator())
    images, image_labels = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, image_labels)
    whole = feature_model(inputs, layer)
    suffix = layer.suffix()
    np.testing.assert_allclose(suffix([shortcut, branch]), whole(images), rtol=1e-5, atol=1e-5)
    pairs = zip(suffix_gradients(whole, layer, images), suffix_gradients(suffix, layer, [shortcut, branch]))
    for expected, got in pairs:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    streamed = next(iter(prefix.cached_features(tmp_path, progress=False).test.batch(4)))
    assert [tuple(t.shape) for t in streamed[0]] == [(4, 4, 4, 32), (4, 4, 4, 32)]


def test_prefix_recuts_the_backbone_import_instead_of_importing_again(tiny, images16):
    """A second import would hold a second copy of the weights for the layer's lifetime."""
    layer = thaw(tiny.path, last=2, cut="gap")
    assert layer.prefix_backbone.info is layer.backbone.info
    boundary = [t.name for t in layer.plan.boundary]
    fresh = Backbone.load(tiny.path, cut=boundary)(images16)
    fresh = [fresh[name] for name in boundary] if isinstance(fresh, dict) else [fresh]
    for got, expected in zip(layer.prefix(images16), fresh, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_fit_with_thaw_trains_from_the_prefix_cache(tmp_path):
    cache, data = tmp_path / "cache", "digits:5-9?per_class=10"
    first = transfer.fit("example:digits", data, cut="resnet_features", thaw=2, cache_dir=cache, epochs=4, lr=0.01,
                         out=tmp_path / "run", export=("pb",), verbose=0)
    entries = FeatureCache(cache).entries()
    assert len(entries) == 6 and all(entry.feature_shapes == [(4, 4, 32)] for entry in entries)  # 2 tensors x 3 splits
    written = {entry.key: (entry.path / "features-00000.npy").stat().st_mtime_ns for entry in entries}
    features = first.model.get_layer("features")
    assert any(not np.allclose(w.numpy(), c) for w, c in
               zip(features.thawed_weights, [tf.make_ndarray(t.op.get_attr("value")) for t in features.plan.weights]))
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(8)])
    frozen = Backbone.load(tmp_path / "run/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), first.model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
    transfer.fit("example:digits", data, cut="resnet_features", thaw=2, cache_dir=cache, epochs=1, verbose=0)
    again = FeatureCache(cache).entries()
    assert {e.key: (e.path / "features-00000.npy").stat().st_mtime_ns for e in again} == written  # reused


# -- several cuts (a head that reads them all) ---------------------------------------------------------

CUTS = "block1_out,block2_out,resnet_features"


def digits_batch(count=6):
    """Inputs as the digits backbone takes them (8x8x1, pixel values 0..16)."""
    return np.random.default_rng(0).uniform(0, 16, (count, 8, 8, 1)).astype("float32")


def test_several_cuts_thaw_the_last_layers_of_all_and_a_cut_before_them_passes_through():
    """Thaw 1 on three cuts: the deepest weight layer (block2_bn2); block1_out comes before it, so
    the frozen prefix hands it over as it is and no gradient reaches the thawed weights from it."""
    backbone = Backbone.load("example:digits", cut=CUTS)
    rows = describe_layers(backbone)
    assert len(rows) == 10 and rows[0]["scope"].endswith("block2_bn2_1")  # numbered back from the deepest cut
    layer = thaw("example:digits", last=1, cut=CUTS)
    images = digits_batch()
    features, expected = layer(images), backbone(images)
    assert list(features) == CUTS.split(",")  # what a FeatureLayer of several cuts returns: a dict in cut order
    for key, value in expected.items():
        np.testing.assert_allclose(features[key], value, rtol=1e-5, atol=1e-5)
    block1 = backbone.cuts[0].name
    assert block1 in [t.name for t in layer.plan.boundary]
    prefix = layer.prefix(images)
    passed = prefix[[t.name for t in layer.plan.boundary].index(block1)]
    np.testing.assert_array_equal(layer.from_boundary(prefix)["block1_out"], passed)  # the suffix returns it unchanged
    for key, reached in (("block1_out", False), ("block2_out", True), ("resnet_features", True)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(images)[key]))
        grads = tape.gradient(loss, layer.trainable_weights)
        assert len(grads) == 2 and all((g is not None and bool(tf.reduce_any(g != 0))) == reached for g in grads), key


def test_several_cuts_from_cached_prefix_outputs_equal_the_whole_layer(tmp_path):
    """The cache holds the prefix's outputs whole (the pass-through cut too); the suffix on them
    gives every cut as the whole layer does on images."""
    layer = thaw("example:digits", last=2, cut=CUTS)
    inputs = open_inputs(layer.backbone, "digits:5-9?per_class=10", batch_size=16)
    cached = inputs.cached_prefix(layer, tmp_path, progress=False)
    assert cached.feature_shapes == [(8, 8, 16), (4, 4, 32), (4, 4, 32)]  # block1_out, and what enters block2_conv2
    boundary, labels = next(iter(cached.test.batch(1000)))
    batches = list(inputs.batches.evaluation("test").as_numpy_iterator())
    np.testing.assert_array_equal(labels, np.concatenate([y for _, y in batches]))
    whole = feature_model(inputs, layer)(np.concatenate([x for x, _ in batches]))  # a list in cut order
    from_cache = layer.suffix()(list(boundary))
    assert list(from_cache) == CUTS.split(",")
    for expected, got in zip(whole, from_cache.values(), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_recut_to_some_cuts_keeps_the_trained_values_of_the_layers_they_depend_on():
    """What fit does when the multilayer head dropped cuts (`keep_selected_cuts`)."""
    layer = thaw("example:digits", last=6, cut=CUTS)  # block2's five layers and block1_bn2
    rng = np.random.default_rng(1)
    for weight in layer.thawed_weights:  # as if trained
        weight.assign(weight + rng.normal(0, 0.1, weight.shape).astype("float32"))
    images = digits_batch()
    trained = layer(images)
    for kept, thawed in ((["block1_out", "resnet_features"], 6), (["block2_out"], 6), (["block1_out"], 1)):
        recut = layer.recut(kept)
        assert len(recut.plan.layers) == thawed and recut.name == layer.name
        got = recut(images)
        for key in kept:
            np.testing.assert_allclose(got[key] if isinstance(got, dict) else got, trained[key], rtol=1e-5, atol=1e-5)
    assert type(thaw("example:digits", last=1, cut=CUTS).recut(["block1_out"])) is FeatureLayer  # nothing thawed left


def test_inspect_layers(capsys):
    assert main(["inspect", "example:digits", "--cut", "resnet_features", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "weight layers before the cut (10; --thaw N trains the first N):" in out
    assert "digits_resnet_1/block2_bn2_1" in out and "Conv2D+BiasAdd" in out
    assert main(["inspect", "example:digits", "--cut", "block1_out,block2_out", "--layers"]) == 0
    assert "weight layers before the cuts (10; --thaw N trains the first N):" in capsys.readouterr().out


# -- bad input ----------------------------------------------------------------------------------------


def test_too_many_layers_names_how_many_there_are(tiny):
    with pytest.raises(TransferError, match=r"cannot thaw 9 layer\(s\): there are 4 weight layers before the cut"):
        thaw(tiny.path, last=9, cut="gap")


def test_graph_without_weight_layers(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        tf.nn.relu(tf.compat.v1.placeholder(tf.float32, [None, 4], name="x") * 2.0, name="out")
    path = tmp_path / "no_weights.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(TransferError, match="the graph has no weight layers before the cut: nothing to thaw"):
        thaw(path, last=1, cut="out")


def test_unknown_thaw_scope_names_the_closest(tiny, capsys):
    with pytest.raises(TransferError, match=r"no weight layer before the cut has scope 'conv3'; closest: .*conv"):
        thaw(tiny.path, from_scope="conv3", cut="gap")
    code = main(["fit", "--backbone", "example:digits", "--data", "digits:5-9", "--thaw", "99", "--epochs", "1",
                 "--out", "unused-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot thaw 99 layer(s): there are 10 weight layers before the cut" in err


def test_thaw_with_the_scikit_learn_probe_is_refused(capsys, tmp_path):
    code = main(["fit", "--backbone", "example:digits", "--data", "digits:5-9", "--head", "logreg", "--thaw", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "head 'logreg' is fitted by scikit-learn on frozen features" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resnet50_batch_norm_layers_keep_both_statistics_frozen(resnet50):
    """keras.applications' batch norm reshapes its statistics before use: still found."""
    rows = describe_layers(Backbone.load(resnet50.path, cut="conv5_block3_out"))
    norms = [r for r in rows if r["scope"].endswith("_bn_1")]
    assert len(norms) == 53 and all(len(r["weights"]) == 2 and len(r["statistics"]) == 2 for r in norms)
    layer = thaw(resnet50.path, from_scope="conv5_block3_1_conv", cut="conv5_block3_out")
    assert len(layer.trainable_weights) == 12  # 3 convs (kernel, bias) + 3 batch norms (gamma, beta)


def test_an_op_without_gradient_between_the_thawed_layers_and_the_cut_is_named_up_front(tmp_path):
    """ResizeArea has no gradient in TensorFlow: thawing the conv before it would fail mid-training."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, (None, 8, 8, 3), name="image")
        rng = np.random.default_rng(0)
        kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype("float32"))
        x = tf.nn.conv2d(image, kernel, 1, "SAME", name="block1/conv")
        x = tf.raw_ops.ResizeArea(images=x, size=[4, 4], name="shrink")
        tf.nn.conv2d(x, tf.constant(rng.normal(size=(3, 3, 4, 4)).astype("float32")), 1, "SAME", name="block2/conv")
    path = tmp_path / "resize_area.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(TransferError,
                       match=r"cannot thaw through op 'shrink' \(ResizeArea\): TensorFlow has no gradient"):
        thaw(path, last=2, cut="block2/conv")
    layer = thaw(path, last=1, cut="block2/conv")  # the conv after it trains
    images = tf.ones((2, 8, 8, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(images))
    assert all(g is not None for g in tape.gradient(loss, layer.trainable_weights))
