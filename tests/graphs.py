"""Builders of the real TensorFlow graphs the tests use (no mocks of TensorFlow): Keras models,
frozen to `.pb`, saved as SavedModels or `.keras` files, and TF1-style graphs. `conftest.py` turns
them into session fixtures; a test that needs a builder itself imports it from here."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend before keras is imported)
import keras
import tensorflow as tf

from transfer import _compat


@dataclasses.dataclass
class Fixture:
    path: Path
    model: object = None  # the Keras model the graph was frozen from, for reference outputs
    extra: dict = dataclasses.field(default_factory=dict)


def freeze_to_pb(model, path: Path, input_name: str = "image") -> Path:
    """The plain TF way to freeze a Keras model: trace, convert variables, write the GraphDef."""
    spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype, name=input_name)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path.write_bytes(_compat.freeze_variables(function).graph.as_graph_def().SerializeToString())
    return path


def feature_model(inputs, features=None) -> keras.Model:
    """Raw examples -> features as a Keras model (preprocessing + FeatureLayer): the reference
    that extraction (`Inputs.feature_batch`) must match."""
    from transfer.layers.model import build_classifier

    return build_classifier(features or inputs.feature_layer(), keras.layers.Identity(), inputs.kind,
                            name="feature_extractor")


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


def break_object_graph(path: Path, holder: str, variable: str, slot: str) -> None:
    """Record `slot` as an optimizer slot of `variable` on a plain object, as older Keras writers
    did: `tf.saved_model.load` then fails with `'_UserObject' object has no attribute 'add_slot'`,
    while the MetaGraph (signatures and variables) stays fine for the TF1 loader."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto_path = path / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(proto_path.read_bytes())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    ids = {child.local_name: child.node_id for child in nodes[0].children}
    variable_id = _object_path(nodes, variable)
    holder_id = ids[holder]
    slot_id = next(c.node_id for c in nodes[holder_id].children if c.local_name == slot)
    nodes[holder_id].slot_variables.add(original_variable_node_id=variable_id, slot_name="momentum",
                                        slot_variable_node_id=slot_id)
    proto_path.write_bytes(saved.SerializeToString())
    with pytest.raises(AttributeError, match="add_slot"):
        tf.saved_model.load(str(path))


def _object_path(nodes, dotted: str) -> int:
    """The object-graph node id of `a.b.c` from the root."""
    node_id = 0
    for name in dotted.split("."):
        node_id = next(c.node_id for c in nodes[node_id].children if c.local_name == name)
    return node_id


def keras_features(model, layer_name: str, images) -> np.ndarray:
    """The original model's intermediate output: the reference a cut must reproduce."""
    return keras.Model(model.inputs, model.get_layer(layer_name).output).predict(images, verbose=0)


def extra_inputs_graph(path: Path, keep_prob: bool) -> Path:
    """A TF1 graph with an `is_training` PlaceholderWithDefault and, if `keep_prob`, a plain
    scalar `keep_prob` Placeholder that scales the features."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        is_training = tf.compat.v1.placeholder_with_default(False, [], name="is_training")
        weights = tf.constant(np.random.default_rng(5).normal(0, 0.5, (3, 3, 3, 4)).astype("float32"))
        x = tf.nn.relu(tf.nn.conv2d(images, weights, 1, "SAME"), name="conv/Relu")
        x = tf.where(is_training, x * 0.5, x, name="train_switch")
        if keep_prob:
            x = tf.multiply(x, tf.compat.v1.placeholder(tf.float32, [], name="keep_prob"), name="dropout")
        tf.reduce_mean(x, axis=[1, 2], name="features")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def hub_graph(training: bool):
    """One variant of a TF1 Hub module's graph (same variables); the training one has dropout."""
    rng = np.random.default_rng(5)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        kernel = tf.compat.v1.get_variable("conv/weights",
                                           initializer=rng.normal(0, 0.5, (3, 3, 3, 6)).astype("float32"),
                                           use_resource=False)
        features = tf.nn.relu(tf.nn.conv2d(images, kernel, 2, "SAME"), name="conv/Relu")
        if training:
            features = tf.nn.dropout(features, rate=0.5)
        pooled = tf.reduce_mean(features, axis=[1, 2], name="feature_vector")
        dense = tf.compat.v1.get_variable("logits/weights", initializer=rng.normal(0, 1, (6, 4)).astype("float32"),
                                          use_resource=False)
        logits = tf.matmul(pooled, dense, name="logits/MatMul")
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def
        signatures = {"default": signature({"images": images}, {"default": logits}),
                      "image_feature_vector": signature({"images": images}, {"default": pooled})}
    return graph, {"images": images, "features": features, "logits": logits}, signatures


def build_detection_graph(num_classes: int = 3, max_detections: int = 5) -> tf.compat.v1.GraphDef:
    """An Object-Detection-API-like frozen graph, TF1 control flow (Enter/Exit/Switch/Merge, TensorArrays):
    uint8 `image_tensor` of any size -> Preprocessor (each image resized to 32x32 in a `map_fn` while
    loop, scaled) -> FeatureExtractor (two conv stages) -> BoxPredictor_0/1 (convs reading each feature
    map) -> Postprocessor (box decoding, per-image NMS in a `map_fn` while loop) ->
    detection_boxes/scores/classes, num_detections."""
    rng = np.random.default_rng(6)

    def const(*shape):
        return tf.constant(rng.normal(0, 0.3, shape).astype("float32"))

    graph = tf.Graph()
    tf.compat.v1.disable_control_flow_v2()
    try:
        with graph.as_default():
            image = tf.compat.v1.placeholder(tf.uint8, [None, None, None, 3], name="image_tensor")
            with tf.compat.v1.name_scope("Preprocessor"):
                resize = lambda one: tf.compat.v1.image.resize_bilinear(tf.cast(one, tf.float32)[None], [32, 32])[0]  # noqa: E731
                resized = tf.map_fn(resize,
                                    image, fn_output_signature=tf.TensorSpec([32, 32, 3], tf.float32))
                x = resized * (2.0 / 255.0) - 1.0
            feature_maps = []
            with tf.compat.v1.name_scope("FeatureExtractor"):
                for i, channels in enumerate((8, 16)):
                    with tf.compat.v1.name_scope(f"stage{i}"):
                        x = tf.nn.relu(tf.nn.conv2d(x, const(3, 3, x.shape[-1], channels), 2, "SAME") + const(channels))
                    feature_maps.append(x)
            encodings, logits = [], []
            for i, feature_map in enumerate(feature_maps):
                with tf.compat.v1.name_scope(f"BoxPredictor_{i}"):
                    channels = feature_map.shape[-1]
                    box = tf.nn.conv2d(feature_map, const(1, 1, channels, 4), 1, "SAME", name="BoxEncodingPredictor")
                    cls = tf.nn.conv2d(feature_map, const(1, 1, channels, num_classes), 1, "SAME",
                                       name="ClassPredictor")
                    encodings.append(tf.reshape(box, [tf.shape(box)[0], -1, 4]))
                    logits.append(tf.reshape(cls, [tf.shape(cls)[0], -1, num_classes]))
            anchors = sum(int(m.shape[1]) * int(m.shape[2]) for m in feature_maps)
            with tf.compat.v1.name_scope("Postprocessor"):
                boxes = tf.concat(encodings, 1) * 0.1 + tf.constant(rng.uniform(0, 1, (anchors, 4)).astype("float32"))
                scores = tf.sigmoid(tf.concat(logits, 1))

                def per_image(args):
                    image_boxes, image_scores = args
                    best = tf.reduce_max(image_scores, axis=1)
                    keep = tf.image.non_max_suppression(image_boxes, best, max_detections)
                    pad = max_detections - tf.shape(keep)[0]
                    return (tf.pad(tf.gather(image_boxes, keep), [[0, pad], [0, 0]]),
                            tf.pad(tf.gather(best, keep), [[0, pad]]),
                            tf.pad(tf.cast(tf.gather(tf.argmax(image_scores, axis=1), keep), tf.float32), [[0, pad]]),
                            tf.cast(tf.shape(keep)[0], tf.float32))

                detected = tf.map_fn(per_image, (boxes, scores), fn_output_signature=(tf.float32,) * 4)
            for name, tensor in zip(("detection_boxes", "detection_scores", "detection_classes", "num_detections"),
                                    detected):
                tf.identity(tensor, name=name)
    finally:
        tf.compat.v1.enable_control_flow_v2()
    graph_def = graph.as_graph_def()
    assert {"Enter", "Exit", "Switch", "Merge", "NextIteration", "TensorArrayV3"} <= {n.op for n in graph_def.node}
    return graph_def


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


def small_feature_cnn(factor: float = 1e-7) -> keras.Model:
    """8x8 digits (0..16) -> stem conv -> pool -> conv `block` whose kernel is multiplied by
    `factor` (its ReLU output, the cut, is that much smaller: features at most ~3e-7 at 1e-7,
    as a backbone a user brought had) -> pooling -> 5 classes. Random weights, not trained."""
    keras.utils.set_random_seed(8)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Rescaling(1 / 16)(image)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="block")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(image, keras.layers.Dense(5, activation="softmax", name="logits")(x), name="small")
    block = model.get_layer("block")
    block.set_weights([w * factor for w in block.get_weights()])
    return model
