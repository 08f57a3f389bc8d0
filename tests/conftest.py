"""Real TensorFlow graphs for the tests, built once per session: no mocks of TensorFlow.

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

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend before keras is imported)
import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2


@dataclasses.dataclass
class Fixture:
    path: Path
    model: object = None  # the Keras model the graph was frozen from, for reference outputs
    extra: dict = dataclasses.field(default_factory=dict)


def freeze_to_pb(model, path: Path, input_name: str = "image") -> Path:
    """The plain TF way to freeze a Keras model: trace, convert variables, write the GraphDef."""
    spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype, name=input_name)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path.write_bytes(convert_variables_to_constants_v2(function).graph.as_graph_def().SerializeToString())
    return path


def randomize_batch_norm(model, seed: int = 0) -> None:
    """Give batch-norm layers non-trivial statistics so a wrong cut cannot pass by accident."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def tiny_cnn() -> keras.Model:
    keras.utils.set_random_seed(1)
    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(image)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    probabilities = keras.layers.Dense(5, activation="softmax", name="logits")(x)
    model = keras.Model(image, probabilities, name="tiny")
    randomize_batch_norm(model)
    return model


def all_conv_cnn() -> keras.Model:
    """SqueezeNet-style classifier: a conv to the classes, global pooling, softmax."""
    keras.utils.set_random_seed(2)
    image = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(6, 3, activation="relu", name="fire")(image)
    x = keras.layers.Conv2D(4, 1, activation="relu", name="class_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    probabilities = keras.layers.Softmax(name="probs")(x)
    return keras.Model(image, probabilities, name="squeeze")


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
    from tensorflow.core.protobuf import saved_model_pb2

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
    proto_path = path / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(proto_path.read_bytes())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    ids = {child.local_name: child.node_id for child in nodes[0].children}
    kernel_id, holder_id = ids["kernel"], ids["optimizer_state"]
    slot_id = next(c.node_id for c in nodes[holder_id].children if c.local_name == "slot")
    nodes[holder_id].slot_variables.add(original_variable_node_id=kernel_id, slot_name="momentum",
                                        slot_variable_node_id=slot_id)
    proto_path.write_bytes(saved.SerializeToString())
    with pytest.raises(AttributeError, match="add_slot"):
        tf.saved_model.load(str(path))
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


def keras_features(model, layer_name: str, images) -> np.ndarray:
    """The original model's intermediate output: the reference a cut must reproduce."""
    return keras.Model(model.inputs, model.get_layer(layer_name).output).predict(images, verbose=0)


@pytest.fixture
def images16():
    return np.random.default_rng(0).uniform(0, 1, (6, 16, 16, 3)).astype("float32")


def audio_net() -> keras.Model:
    keras.utils.set_random_seed(4)
    wave = keras.Input((1024, 1), name="waveform")
    x = keras.layers.Conv1D(8, 9, strides=4, activation="relu", name="conv1")(wave)
    x = keras.layers.Conv1D(16, 9, strides=4, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(wave, keras.layers.Dense(5, activation="softmax", name="logits")(x), name="audio")


def vector_mlp() -> keras.Model:
    keras.utils.set_random_seed(5)
    vector = keras.Input((4,), name="vector")
    x = keras.layers.Dense(16, activation="relu", name="hidden")(vector)
    x = keras.layers.Dense(8, activation="relu", name="embedding")(x)
    return keras.Model(vector, keras.layers.Dense(3, activation="softmax", name="logits")(x), name="mlp")


def token_net() -> keras.Model:
    keras.utils.set_random_seed(6)
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 8, name="embed")(tokens)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(tokens, keras.layers.Dense(4, activation="softmax", name="logits")(x), name="text")


def spectrogram_net() -> keras.Model:
    keras.utils.set_random_seed(7)
    frames = keras.Input((20, 12, 1), name="spectrogram")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(frames)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(frames, keras.layers.Dense(3, activation="softmax", name="logits")(x), name="spec")


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
