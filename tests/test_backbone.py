"""Backbone: load every kind of file, resolve every kind of cut, reproduce the original features."""
import numpy as np
import pytest
import tensorflow as tf
from graphs import keras_features

from transfer import Backbone, TransferError


def test_tiny_pb_cuts_equal_keras_intermediate_outputs(tiny, images16):
    for layer in ("conv1", "bn1", "dw", "conv2", "gap"):
        features = Backbone.load(tiny.path, cut=layer)(images16).numpy()
        np.testing.assert_allclose(features, keras_features(tiny.model, layer, images16), rtol=1e-5, atol=1e-5)


def test_auto_cut_is_what_feeds_the_classifier(tiny, images16):
    backbone = Backbone.load(tiny.path)
    (cut,) = backbone.cuts
    assert cut.name == "tiny_1/gap_1/Mean:0"
    assert "logits" in cut.reason and "MatMul" in cut.reason
    np.testing.assert_allclose(backbone(images16), keras_features(tiny.model, "gap", images16), rtol=1e-5, atol=1e-6)


def test_auto_cut_on_all_convolutional_classifier_keeps_the_features(all_conv):
    """Cutting at the pooled class logits would throw the features away."""
    (cut,) = Backbone.load(all_conv.path).cuts
    assert cut.name == "squeeze_1/fire_1/Relu:0", cut
    assert "class_conv" in cut.reason and "Conv2D" in cut.reason


def test_cut_by_op_name_tensor_name_and_suffix_agree(tiny, images16):
    by_scope = Backbone.load(tiny.path, cut="conv2")
    name = by_scope.cuts[0].name
    by_tensor = Backbone.load(tiny.path, cut=name)
    by_op = Backbone.load(tiny.path, cut=name.split(":")[0])
    by_suffix = Backbone.load(tiny.path, cut="conv2/BiasAdd")
    assert {b.cuts[0].name for b in (by_tensor, by_op, by_suffix)} == {name}
    np.testing.assert_array_equal(by_scope(images16), by_tensor(images16))


def test_several_cuts_give_a_dict_of_features(tiny, images16):
    backbone = Backbone.load(tiny.path, cut="conv1,gap")
    features = backbone(images16)
    assert set(features) == {"conv1", "gap"}
    assert features["conv1"].shape == (6, 14, 14, 4) and features["gap"].shape == (6, 8)
    assert list(Backbone.load(tiny.path, cut=["gap", "conv1"]).feature_specs) == ["gap", "conv1"]


def test_specs_describe_input_and_features(tiny):
    backbone = Backbone.load(tiny.path, cut="conv2")
    (spec,) = backbone.input_specs
    assert spec.name == "image" and spec.shape.as_list() == [None, 16, 16, 3] and spec.dtype == tf.float32
    assert backbone.feature_specs["conv2"].shape.as_list() == [None, 10, 10, 8]


@pytest.mark.slow
def test_resnet50_scope_cut_matches_keras(resnet50):
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    backbone = Backbone.load(resnet50.path, cut="conv5_block3_out")
    assert backbone.cuts[0].name == "resnet50_1/conv5_block3_out_1/Relu:0"
    expected = keras_features(resnet50.model, "conv5_block3_out", images)
    np.testing.assert_allclose(backbone(images), expected, rtol=1e-4, atol=1e-4)
    assert Backbone.load(resnet50.path).cuts[0].name == "resnet50_1/avg_pool_1/Mean:0"


@pytest.mark.slow
def test_pruned_function_runs_only_what_the_cut_needs(resnet50):
    backbone = Backbone.load(resnet50.path, cut="conv2_block1_out")
    ops = {node.op for f in backbone.pruned_function.graph.as_graph_def().library.function for node in f.node_def}
    ops |= {node.op for node in backbone.pruned_function.graph.as_graph_def().node}
    assert "MatMul" not in ops and "Softmax" not in ops  # the classifier is pruned away


def test_runs_under_tf_function(tiny, images16):
    backbone = Backbone.load(tiny.path, cut="gap")
    traced = tf.function(lambda x: backbone(x) * 2.0)
    np.testing.assert_allclose(traced(tf.constant(images16)), backbone(images16) * 2.0, rtol=1e-6)


def test_saved_model_default_and_named_signature(tiny_saved_model, images16):
    default = Backbone.load(tiny_saved_model.path, cut="conv2")
    assert default.loaded.signature == "serving_default"
    np.testing.assert_allclose(default(images16), keras_features(tiny_saved_model.model, "conv2", images16),
                               rtol=1e-5, atol=1e-5)
    embed = Backbone.load(tiny_saved_model.path, signature="embed", cut="gap", inputs="pixels")
    assert embed.input_specs[0].name == "pixels"
    np.testing.assert_allclose(embed(images16), keras_features(tiny_saved_model.model, "gap", images16),
                               rtol=1e-5, atol=1e-6)


def test_saved_model_rejected_by_tf2_loader_still_loads(rejected_saved_model):
    backbone = Backbone.load(rejected_saved_model.path, cut="features")
    np.testing.assert_allclose(backbone(np.ones([1, 8, 8, 3], "float32")),
                               rejected_saved_model.extra["features_of_ones"], rtol=1e-5, atol=1e-5)


def test_saved_model_leaves_no_unused_variable_ops(tiny_saved_model):
    backbone = Backbone.load(tiny_saved_model.path)
    assert not [op for op in backbone.info.operations if op.type in ("VarHandleOp", "ReadVariableOp")]


def test_keras_file_is_a_backbone(tiny_keras_file, images16):
    backbone = Backbone.load(tiny_keras_file.path, cut="dw")
    assert backbone.loaded.kind == "Keras"
    np.testing.assert_allclose(backbone(images16), keras_features(tiny_keras_file.model, "dw", images16),
                               rtol=1e-5, atol=1e-5)


def test_tf1_graph_with_fused_batch_norm(tf1_graph):
    images = tf1_graph.extra["images"]
    features = Backbone.load(tf1_graph.path, cut="conv1/Relu")(images)
    np.testing.assert_allclose(features, tf1_graph.extra["features"], rtol=1e-5, atol=1e-5)
    auto = Backbone.load(tf1_graph.path)
    assert auto.cuts[0].name == "logits/pool:0" and "logits" in auto.cuts[0].reason
    np.testing.assert_allclose(auto(images), tf1_graph.extra["pooled"], rtol=1e-5, atol=1e-5)
    assert Backbone.load(tf1_graph.path, cut="conv1").cuts[0].name == "conv1/Relu:0"


def test_uint8_input_of_any_size_is_fed_as_the_graph_wants(graphs_dir):
    """Object-detection exports take uint8 images of any height and width."""
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf.compat.v1.placeholder(tf.uint8, [None, None, None, 3], name="image_tensor")
        scaled = tf.cast(pixels, tf.float32) / 255.0
        kernel = tf.constant(np.ones([3, 3, 3, 2], "float32") / 27.0)
        tf.nn.relu(tf.nn.conv2d(scaled, kernel, 1, "SAME"), name="feature_map")
    path = graphs_dir / "uint8.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    backbone = Backbone.load(path, cut="feature_map")
    assert backbone.input_specs[0].dtype == tf.uint8
    for height, width in ((5, 7), (9, 4)):
        features = backbone(np.full([1, height, width, 3], 255, "uint8"))
        assert features.shape == (1, height, width, 2)
        assert features.numpy()[0, height // 2, width // 2, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(backbone(np.full([1, 5, 5, 3], 255.0, "float32")),
                               backbone(np.full([1, 5, 5, 3], 255, "uint8")))


@pytest.fixture(scope="module")
def file_reading_graph(graphs_dir):
    """`clean` needs only the image; `tainted` also needs a ReadFile op."""
    secret = graphs_dir / "secret.txt"
    secret.write_text("four")
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 2], name="image")
        tf.identity(image * 2.0, name="clean")
        length = tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32)
        tf.identity(image + length, name="tainted")
    path = graphs_dir / "reads_file.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def test_ops_that_read_files_are_refused_unless_allowed(file_reading_graph):
    np.testing.assert_allclose(Backbone.load(file_reading_graph, cut="clean")(np.ones([1, 2], "float32")), [[2.0, 2.0]])
    with pytest.raises(TransferError, match=r"ReadFile.*allow_ops=\['ReadFile'\]"):
        Backbone.load(file_reading_graph, cut="tainted")
    allowed = Backbone.load(file_reading_graph, cut="tainted", allow_ops=["ReadFile"])
    np.testing.assert_allclose(allowed(np.ones([1, 2], "float32")), [[5.0, 5.0]])


def test_input_by_placeholder_name_and_unknown_input(tiny):
    assert Backbone.load(tiny.path, inputs="image").input_specs[0].name == "image"
    with pytest.raises(TransferError, match=r"unknown input 'pixels'; the graph's inputs are: image"):
        Backbone.load(tiny.path, inputs="pixels")


def test_example_backbone_ships_with_the_package():
    backbone = Backbone.load("example:digits", cut="resnet_features")
    assert backbone.cuts[0].name == "resnet_features:0"
    assert backbone.cuts[0].name == Backbone.load("example:digits").cuts[0].name
    with pytest.raises(TransferError, match=r"unknown example 'nope'; shipped examples: digits"):
        Backbone.load("example:nope")


def test_legacy_h5_file_is_a_backbone(tiny, images16, tmp_path):
    path = tmp_path / "tiny.h5"
    tiny.model.save(path)
    backbone = Backbone.load(path, cut="conv2")
    np.testing.assert_allclose(backbone(images16), keras_features(tiny.model, "conv2", images16), rtol=1e-5, atol=1e-5)


def test_a_subset_of_cuts_is_fed_as_the_whole_and_computes_the_same(tiny, images16):
    whole = Backbone.load(tiny.path, cut="conv1,dw,conv2")
    part = whole.subset(["conv2", "conv1"])
    assert [c.spec for c in part.cuts] == ["conv2", "conv1"] and part.inputs == whole.inputs
    full, some = whole(images16), part(images16)
    for spec in ("conv1", "conv2"):
        np.testing.assert_allclose(some[spec], full[spec], rtol=1e-6, atol=1e-6)
    assert whole.subset(["dw"])(images16).shape == full["dw"].shape  # one cut: a tensor, as any backbone
    with pytest.raises(TransferError, match=r"cannot take cuts \['gap'\] of a backbone cut at conv1, dw, conv2"):
        whole.subset(["conv1", "gap"])


def test_a_keras_backbone_frozen_with_its_head_is_cut_at_the_name_given(tmp_path):
    """`freeze_keras_model(backbone, head, cut_name=...)`: the graph goes on through the head, and
    the backbone's output is a cut by that name, equal to the Keras backbone's output."""
    import keras

    from transfer.graph.freezing import freeze_keras_model

    image = keras.Input((8, 8, 1), name="pixels")
    backbone = keras.Model(image, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image)))
    frozen = freeze_keras_model(backbone, keras.layers.Dense(3, activation="softmax"), cut_name="embedding")
    path = tmp_path / "frozen.pb"
    path.write_bytes(frozen.graph_def.SerializeToString())
    loaded = Backbone.load(path, cut="embedding")
    assert [t.op.name for t in loaded.inputs] == ["pixels"] and loaded.cuts[0].tensor.name == "embedding:0"
    assert Backbone.load(path, cut="auto").cuts[0].tensor.name == "embedding:0"  # what feeds the classifier
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded(x), backbone(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(TransferError, match=r"^cut_name 'pixels' is the name of another op of the graph"):
        freeze_keras_model(backbone, cut_name="pixels")  # the input's: the cut would be renamed pixels_1
