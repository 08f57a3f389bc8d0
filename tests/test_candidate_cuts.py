"""Candidate cuts with feature info (channels, stride), and `auto` on a detection graph."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from transfer import Backbone
from cli_checks import run_cli
from graphs import freeze_to_pb

LOOP_TYPES = {"Enter", "Exit", "Switch", "Merge", "NextIteration", "LoopCond"}


def inspect_json(capsys, *argv) -> dict:
    code, out, err = run_cli(capsys, "inspect", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def any_size_cnn(graphs_dir):
    """A CNN whose input has no fixed height or width: strides must still be found."""
    keras.utils.set_random_seed(8)
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="stem")(image)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", activation="relu", name="down")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="same")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(image, keras.layers.Dense(3, activation="softmax", name="logits")(x))
    return freeze_to_pb(model, graphs_dir / "any_size_cnn.pb")


def by_suffix(report, suffix):
    (row,) = [c for c in report["candidates"] if c["tensor"].endswith(suffix)]
    return row


def test_stride_and_channels_on_an_input_of_unknown_size(capsys, any_size_cnn):
    report = inspect_json(capsys, str(any_size_cnn))
    assert report["inputs"][0]["shape"] == [None, None, None, 3]
    assert {k: by_suffix(report, "stem_1/Relu:0")[k] for k in ("channels", "stride")} == {"channels": 4, "stride": 2}
    assert {k: by_suffix(report, "down_1/Relu:0")[k] for k in ("channels", "stride")} == {"channels": 8, "stride": 4}
    assert by_suffix(report, "same_1/Relu:0")["stride"] == 4
    pooled = by_suffix(report, "gap_1/Mean:0")
    assert pooled["auto"] and pooled["channels"] == 8 and pooled["stride"] is None  # not spatial
    assert pooled["shape"] == [None, 8]


@pytest.mark.slow
def test_stride_on_resnet50(capsys, resnet50):
    report = inspect_json(capsys, str(resnet50.path))
    strides = {c["tensor"]: c["stride"] for c in report["candidates"]}
    assert strides["resnet50_1/conv2_block3_out_1/Relu:0"] == 4
    assert strides["resnet50_1/conv4_block6_out_1/Relu:0"] == 16
    assert strides["resnet50_1/conv5_block3_out_1/Relu:0"] == 32
    assert by_suffix(report, "conv5_block3_out_1/Relu:0")["channels"] == 2048


def test_text_table_shows_channels_and_stride(capsys, tiny):
    code, out, err = run_cli(capsys, "inspect", str(tiny.path))
    assert code == 0, err
    assert "channels  stride" in out
    conv1 = next(line for line in out.splitlines() if "tiny_1/conv1_1/Relu:0" in line)
    assert conv1.split()[-4:] == ["14,", "4)", "4", "1"], conv1  # shape (None, 14, 14, 4), 4 channels, stride 1


def test_json_shapes_are_lists(capsys, tiny):
    report = inspect_json(capsys, str(tiny.path), "--cut", "conv2", "--all")
    rows = report["inputs"] + report["outputs"] + report["candidates"] + report["cuts"] + report["tensors"]
    assert all(r["shape"] is None or isinstance(r["shape"], list) for r in rows)
    assert all(isinstance(d, (int, type(None))) for r in rows if r["shape"] for d in r["shape"])
    assert report["cuts"][0]["shape"] == [None, 10, 10, 8]


def test_detection_graph_candidates_have_no_loop_plumbing(capsys, detection_graph):
    report = inspect_json(capsys, str(detection_graph.path))
    candidates = report["candidates"]
    assert candidates, report
    for row in candidates:
        assert row["op"] not in LOOP_TYPES and not row["op"].startswith("TensorArray"), row
        assert "/while/" not in row["tensor"], row
        assert row["shape"] is not None and len(row["shape"]) >= 1 and row["shape"][0] is None, row
        assert row["dtype"].startswith("float"), row
    outputs = [o["tensor"] for o in report["outputs"]]
    assert outputs == ["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"]


def test_detection_graph_auto_is_the_feature_extractor_output(capsys, detection_graph):
    report = inspect_json(capsys, str(detection_graph.path))
    wanted = detection_graph.extra["feature_extractor_output"]
    assert report["auto"]["tensor"] == wanted
    reason = report["auto"]["reason"]
    assert "feature extractor's last output" in reason and "BoxPredictor_1" in reason
    assert [c["tensor"] for c in report["candidates"] if c["auto"]] == [wanted]
    assert by_suffix(report, wanted)["channels"] == 16
    assert by_suffix(report, wanted)["stride"] == 4  # from the 32x32 the preprocessing resizes to
    assert by_suffix(report, "FeatureExtractor/stage0/Relu:0")["stride"] == 2
    code, out, _ = run_cli(capsys, "inspect", str(detection_graph.path))
    assert f"* auto = {wanted}: the feature extractor's last output" in out


def test_detection_backbone_runs_on_uint8_batches_of_any_size(detection_graph):
    backbone = Backbone.load(detection_graph.path)
    assert backbone.cuts[0].name == detection_graph.extra["feature_extractor_output"]
    spec = backbone.input_specs[0]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    graph_def = tf.compat.v1.GraphDef.FromString(detection_graph.path.read_bytes())
    rng = np.random.default_rng(9)
    for shape in [(2, 20, 30, 3), (1, 64, 48, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        features = backbone(images).numpy()
        assert features.shape == (shape[0], 8, 8, 16)
        expected = _run_tf1(graph_def, backbone.cuts[0].name, {"image_tensor:0": images})
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def _run_tf1(graph_def, fetch, feeds):
    """The reference: the whole graph in a TF1 session."""
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetch, feeds)


def test_stride_falls_back_to_the_size_ratio_when_the_probe_cannot_import(capsys, graphs_dir):
    """A constant the size of one feature map (a learned position embedding) fits only the
    graph's own input size: the probe import fails, the known sizes still give the stride."""
    rng = np.random.default_rng(10)
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="image")
        x = tf.nn.conv2d(image, tf.constant(rng.normal(0, 1, (3, 3, 3, 4)).astype("float32")), 2, "SAME")
        x = tf.nn.relu(x + tf.constant(rng.normal(0, 1, (1, 4, 4, 4)).astype("float32")), name="embedded")
        tf.reduce_mean(x, axis=[1, 2], name="pooled")
    path = graphs_dir / "position_embedding.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    report = inspect_json(capsys, str(path))
    assert by_suffix(report, "embedded:0")["stride"] == 2


def test_a_tf1_cond_result_is_a_candidate_but_its_switch_is_not(capsys, graphs_dir):
    """TF1 slim batch norm switches on `is_training` with a `tf.cond` (Switch/Merge, no loop):
    the Merge is the layer's result, the Switch outputs are plumbing."""
    rng = np.random.default_rng(11)
    graph = tf.Graph()
    tf.compat.v1.disable_control_flow_v2()
    try:
        with graph.as_default():
            image = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="image")
            training = tf.compat.v1.placeholder_with_default(False, [], name="is_training")
            x = tf.nn.conv2d(image, tf.constant(rng.normal(0, 1, (3, 3, 3, 4)).astype("float32")), 2, "SAME")
            with tf.compat.v1.name_scope("BatchNorm"):
                x = tf.cond(training, lambda: x - tf.reduce_mean(x, [0, 1, 2]), lambda: x * 0.5)
            tf.nn.relu(x, name="features")
    finally:
        tf.compat.v1.enable_control_flow_v2()
    path = graphs_dir / "tf1_cond.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    report = inspect_json(capsys, str(path))
    ops = {c["tensor"]: c["op"] for c in report["candidates"]}
    assert ops.get("BatchNorm/cond/Merge:0") == "Merge", ops
    assert "Switch" not in ops.values() and "features:0" in ops
