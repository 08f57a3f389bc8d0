"""Real TensorFlow graphs for the tests, built once per session (their builders: `graphs.py`).

- a tiny Keras CNN frozen to `.pb`, also saved as `.keras` and exported as a SavedModel;
- keras.applications.ResNet50 (weights=None, 64x64) frozen to `.pb`;
- a TF1-style graph (VariableV2, FusedBatchNormV3, `weights/read`), frozen by the TF1 freezer;
- a SavedModel that `tf.saved_model.load` rejects (an optimizer-slot record on a plain object,
  what older Keras writers leave) but whose signature and variables are fine;
- non-image networks frozen to `.pb`: a Conv1D audio net on waveforms (N, 1024, 1), an MLP on
  vectors (N, 4), an Embedding net on int32 token ids (N, 10), a Conv2D net on spectrograms
  (N, 20, 12, 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend before keras is imported)
import keras
import tensorflow as tf

from graphs import (Fixture, all_conv_cnn, audio_net, break_object_graph, build_detection_graph, freeze_to_pb,
                    hub_graph, randomize_batch_norm, spectrogram_net, tiny_cnn, token_net, vector_mlp)


@pytest.fixture(scope="session")
def graphs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture(scope="session")
def tiny(graphs_dir) -> Fixture:
    model = tiny_cnn()
    return Fixture(freeze_to_pb(model, graphs_dir / "tiny.pb"), model)


@pytest.fixture(scope="session")
def all_conv(graphs_dir) -> Fixture:
    model = all_conv_cnn()
    return Fixture(freeze_to_pb(model, graphs_dir / "all_conv.pb"), model)


@pytest.fixture(scope="session")
def tiny_keras_file(tiny, graphs_dir) -> Fixture:
    path = graphs_dir / "tiny.keras"
    tiny.model.save(path)
    return Fixture(path, tiny.model)


@pytest.fixture(scope="session")
def tiny_saved_model(tiny, graphs_dir) -> Fixture:
    """A SavedModel with two signatures: `serving_default` (probabilities) and `embed`."""
    model = tiny.model

    class Exported(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
        def serve(self, image):
            return {"probabilities": self.model(image, training=False)}

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="pixels")])
        def embed(self, pixels):
            return {"embedding": tf.reduce_mean(self.model(pixels, training=False), axis=-1, keepdims=True)}

    path = graphs_dir / "tiny_saved_model"
    exported = Exported()
    tf.saved_model.save(exported, str(path), signatures={"serving_default": exported.serve, "embed": exported.embed})
    return Fixture(path, model)


@pytest.fixture(scope="session")
def rejected_saved_model(graphs_dir) -> Fixture:
    """A SavedModel the TF2 loader rejects with `'_UserObject' object has no attribute 'add_slot'`."""

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 4], seed=[1, 2]), name="kernel")
            self.optimizer_state = tf.Module()  # an old optimizer, revived as a plain object
            self.optimizer_state.slot = tf.Variable(tf.zeros([3, 3, 3, 4]), name="slot")

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="image")])
        def serve(self, image):
            features = tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME"), name="features")
            return {"pooled": tf.reduce_mean(features, axis=[1, 2])}

    net = Net()
    path = graphs_dir / "rejected_saved_model"
    tf.saved_model.save(net, str(path), signatures={"serving_default": net.serve})
    break_object_graph(path, "optimizer_state", "kernel", "slot")
    reference = tf.nn.relu(tf.nn.conv2d(tf.ones([1, 8, 8, 3]), net.kernel, 1, "SAME"))
    return Fixture(path, extra={"features_of_ones": reference.numpy()})


@pytest.fixture(scope="session")
def tf1_graph(graphs_dir) -> Fixture:
    """TF1 style: VariableV2 + `…/read`, FusedBatchNormV3, frozen by `convert_variables_to_constants`."""
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")

        def variable(name, value):
            return tf.compat.v1.get_variable(name, initializer=value.astype("float32"), use_resource=False)

        with tf.compat.v1.variable_scope("conv1"):
            y = tf.nn.conv2d(x, variable("weights", rng.normal(0, 0.5, (3, 3, 3, 4))), 1, "SAME")
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                y, variable("gamma", rng.uniform(0.5, 1.5, 4)), variable("beta", rng.normal(0, 0.1, 4)),
                mean=variable("moving_mean", rng.normal(0, 0.1, 4)),
                variance=variable("moving_variance", rng.uniform(0.5, 1.5, 4)), is_training=False)
            features = tf.nn.relu(y, name="Relu")
        with tf.compat.v1.variable_scope("logits"):
            pooled = tf.reduce_mean(features, axis=[1, 2], name="pool")
            logits = tf.nn.bias_add(tf.matmul(pooled, variable("weights", rng.normal(0, 1, (4, 3)))),
                                    variable("biases", rng.normal(0, 1, 3)))
        tf.nn.softmax(logits, name="probabilities")
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            reference = session.run({"features": features, "pooled": pooled}, {x: images})
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["probabilities"])
    path = graphs_dir / "tf1.pb"
    path.write_bytes(frozen.SerializeToString())
    op_types = {node.op for node in frozen.node}
    assert {"FusedBatchNormV3", "Identity"} <= op_types, op_types
    return Fixture(path, extra={"images": images, **reference})


@pytest.fixture(scope="session")
def resnet50(graphs_dir) -> Fixture:
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    randomize_batch_norm(model)
    return Fixture(freeze_to_pb(model, graphs_dir / "resnet50.pb", input_name="input"), model)


@pytest.fixture
def images16():
    return np.random.default_rng(0).uniform(0, 1, (6, 16, 16, 3)).astype("float32")


INCEPTION_SIZE, INCEPTION_CHANNELS = 32, 6


@pytest.fixture(scope="session")
def inception_like(graphs_dir) -> Fixture:
    """Laid out like retrain.py's `classify_image_graph_def.pb`: the only placeholder is a JPEG
    string (`DecodeJpeg/contents`), the image enters at `Mul` (1, H, W, 3), the bottleneck is
    `pool_3`, and `pool_3/_reshape` reshapes it to a constant [1, C]; `_output_shapes` attrs
    pin the static batch of 1 as in the real file."""
    rng = np.random.default_rng(4)
    size, channels = INCEPTION_SIZE, INCEPTION_CHANNELS
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
        decoded = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
        image = tf.expand_dims(tf.cast(decoded, tf.float32, name="Cast"), 0, name="ExpandDims")
        resized = tf.compat.v1.image.resize_bilinear(image, [size, size], name="ResizeBilinear")
        scaled = tf.multiply(tf.subtract(resized, 128.0, name="Sub"), 1 / 128, name="Mul")

        def conv(x, name, out):
            weights = tf.constant(rng.normal(0, 0.3, (3, 3, int(x.shape[-1]), out)).astype("float32"),
                                  name=f"{name}/conv_weights")
            return tf.nn.relu(tf.nn.conv2d(x, weights, 2, "SAME", name=f"{name}/Conv2D"), name=f"{name}/Relu")

        x = conv(conv(scaled, "conv", 4), "conv_1", channels)
        pooled = tf.nn.avg_pool2d(x, size // 4, 1, "VALID", name="pool_3")
        flat = tf.reshape(pooled, tf.constant([1, channels], name="pool_3/_reshape/shape"), name="pool_3/_reshape")
        weights = tf.constant(rng.normal(0, 1, (channels, 5)).astype("float32"), name="softmax/weights")
        tf.nn.softmax(tf.matmul(flat, weights, name="softmax/logits/MatMul"), name="softmax")
    path = graphs_dir / "classify_image_graph_def.pb"
    path.write_bytes(graph.as_graph_def(add_shapes=True).SerializeToString())
    return Fixture(path, extra={"size": size, "channels": channels})


@pytest.fixture(scope="session")
def multi_output_saved_model(graphs_dir) -> Fixture:
    """A pitch tracker's SavedModel as older Keras wrote it: one serving signature returning three
    outputs of two shapes (contour, note, onset) from one trunk, `Dense`-style heads on a sequence
    (`tensordot`), and an object graph the TF2 loader rejects, so the TF1 loader reads it and
    every output is `StatefulPartitionedCall:i`."""

    class PitchTracker(tf.Module):
        def __init__(self):
            super().__init__()
            normal = lambda shape, seed: tf.Variable(tf.random.stateless_normal(shape, seed=[seed, 4]) * 0.5)  # noqa: E731
            self.trunk, self.contour, self.note, self.onset = (
                normal([3, 8, 16], 1), normal([16, 12], 2), normal([16, 5], 3), normal([21, 5], 4))
            self.optimizer_state = tf.Module()  # an old optimizer, revived as a plain object
            self.optimizer_state.slot = tf.Variable(tf.zeros([16, 12]), name="slot")

        def features(self, audio):
            return tf.nn.relu(tf.nn.conv1d(audio, self.trunk, 1, "SAME"), name="trunk")

        @tf.function(input_signature=[tf.TensorSpec([None, 40, 8], tf.float32, name="audio")])
        def serve(self, audio):
            trunk = self.features(audio)
            note = tf.sigmoid(tf.tensordot(trunk, self.note, 1), name="note")
            return {"contour": tf.sigmoid(tf.tensordot(trunk, self.contour, 1), name="contour"), "note": note,
                    "onset": tf.sigmoid(tf.tensordot(tf.concat([trunk, note], -1), self.onset, 1), name="onset")}

    tracker = PitchTracker()
    path = graphs_dir / "multi_output_saved_model"
    tf.saved_model.save(tracker, str(path), signatures={"serving_default": tracker.serve})
    break_object_graph(path, "optimizer_state", "contour", "slot")
    audio = np.random.default_rng(7).normal(0, 1, (3, 40, 8)).astype("float32")
    reference = {key: value.numpy() for key, value in tracker.serve(audio).items()}
    return Fixture(path, extra={"audio": audio, "trunk": tracker.features(audio).numpy(), **reference})


@pytest.fixture(scope="session")
def hub_module(graphs_dir) -> Fixture:
    """A TF1 Hub-style SavedModel: MetaGraphs tagged ["train"] (first, with dropout) and [],
    signatures `default` and `image_feature_vector`, no `serving_default`."""
    path = graphs_dir / "hub_module"
    builder = tf.compat.v1.saved_model.Builder(str(path))
    train_graph, _, train_signatures = hub_graph(training=True)
    with tf.compat.v1.Session(graph=train_graph) as session:
        session.run(tf.compat.v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(session, ["train"], signature_def_map=train_signatures)
    graph, tensors, signatures = hub_graph(training=False)
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        session.run(tf.compat.v1.global_variables_initializer())
        reference = session.run({"features": tensors["features"], "logits": tensors["logits"]},
                                {tensors["images"]: np.ones((2, 8, 8, 3), "float32")})
        builder.add_meta_graph([], signature_def_map=signatures)
    builder.save()
    return Fixture(path, extra=reference)


@pytest.fixture(scope="session")
def detection_graph(graphs_dir) -> Fixture:
    path = graphs_dir / "detection.pb"
    path.write_bytes(build_detection_graph().SerializeToString())
    return Fixture(path, extra={"feature_extractor_output": "FeatureExtractor/stage1/Relu:0",
                                "box_predictor_inputs": ["FeatureExtractor/stage0/Relu:0",
                                                         "FeatureExtractor/stage1/Relu:0"]})


@pytest.fixture(scope="session")
def audio(graphs_dir) -> Fixture:
    model = audio_net()
    return Fixture(freeze_to_pb(model, graphs_dir / "audio.pb", input_name="waveform"), model)


@pytest.fixture(scope="session")
def vectors(graphs_dir) -> Fixture:
    model = vector_mlp()
    return Fixture(freeze_to_pb(model, graphs_dir / "mlp.pb", input_name="vector"), model)


@pytest.fixture(scope="session")
def tokens(graphs_dir) -> Fixture:
    model = token_net()
    return Fixture(freeze_to_pb(model, graphs_dir / "tokens.pb", input_name="tokens"), model)


@pytest.fixture(scope="session")
def spectrogram(graphs_dir) -> Fixture:
    model = spectrogram_net()
    return Fixture(freeze_to_pb(model, graphs_dir / "spectrogram.pb", input_name="spectrogram"), model)
