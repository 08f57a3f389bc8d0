"""FeatureLayer inside real Keras models: functional, Sequential, subclassed, fit, save/load."""
import shutil

import numpy as np
import pytest
import tensorflow as tf
from graphs import freeze_to_pb, keras_features, tiny_cnn

import keras
from transfer.errors import TransferWarning
from transfer import Backbone, FeatureLayer, TransferError


def labels_for(images):
    return (images[:, :, :, 0].mean(axis=(1, 2)) > 0.5).astype("int32")


def test_layer_is_frozen_and_reproduces_features(tiny, images16):
    layer = FeatureLayer(tiny.path, cut="conv2")
    assert layer.trainable is False
    np.testing.assert_allclose(layer(images16), keras_features(tiny.model, "conv2", images16), rtol=1e-5, atol=1e-5)
    assert layer.weights == [] and layer.trainable_weights == []
    layer.trainable = True  # nothing to train even then: the graph is constants
    assert layer.trainable_weights == []


def test_functional_model_fits_and_only_the_head_learns(tiny, images16):
    keras.utils.set_random_seed(0)
    images = keras.Input((16, 16, 3))
    features = FeatureLayer(tiny.path, cut="gap")(images)
    assert tuple(features.shape) == (None, 8)
    model = keras.Model(images, keras.layers.Dense(2, activation="softmax")(features))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    frozen_before = model.layers[1](images16).numpy()
    head_before = [w.numpy().copy() for w in model.trainable_weights]
    model.fit(images16, labels_for(images16), epochs=2, verbose=0)
    assert len(model.trainable_weights) == 2  # the Dense kernel and bias only
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(head_before, model.trainable_weights))
    np.testing.assert_array_equal(model.layers[1](images16), frozen_before)
    assert model.predict(images16, verbose=0).shape == (6, 2)


def test_sequential_and_subclassed_models(tiny, images16):
    sequential = keras.Sequential([keras.Input((16, 16, 3)), FeatureLayer(tiny.path, cut="conv2"),
                                   keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    assert sequential.predict(images16, verbose=0).shape == (6, 3)

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.features = FeatureLayer(tiny.path)
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.features(x))

    model = Classifier()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images16, labels_for(images16), epochs=1, verbose=0)
    assert model(images16).shape == (6, 3)


def test_several_cuts_in_a_functional_model(tiny, images16):
    images = keras.Input((16, 16, 3))
    features = FeatureLayer(tiny.path, cut="conv1,gap")(images)
    assert set(features) == {"conv1", "gap"} and tuple(features["conv1"].shape) == (None, 14, 14, 4)
    pooled = keras.layers.GlobalAveragePooling2D()(features["conv1"])
    model = keras.Model(images, keras.layers.Concatenate()([pooled, features["gap"]]))
    assert model.predict(images16, verbose=0).shape == (6, 12)


def test_tf_function_and_tf_data(tiny, images16):
    layer = FeatureLayer(tiny.path, cut="gap")
    dataset = tf.data.Dataset.from_tensor_slices(images16).batch(4).map(tf.function(layer))
    np.testing.assert_allclose(np.concatenate(list(dataset.as_numpy_iterator())), layer(images16), rtol=1e-6)


def test_save_and_load_keras_file_in_safe_mode(tiny, images16, tmp_path):
    images = keras.Input((16, 16, 3))
    model = keras.Model(images, keras.layers.Dense(2)(FeatureLayer(tiny.path, cut="gap")(images)))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)  # safe_mode=True is the default
    np.testing.assert_allclose(restored.predict(images16, verbose=0), model.predict(images16, verbose=0), rtol=1e-6)
    config = restored.layers[1].get_config()
    assert config["backbone"] == str(tiny.path) and config["cut"] == "gap" and len(config["fingerprint"]) == 64
    assert FeatureLayer.from_config(config).get_config() == config


def test_changed_backbone_file_gives_the_embedded_graph_not_silently_different_features(tmp_path, images16):
    backbone_path = freeze_to_pb(tiny_cnn(), tmp_path / "backbone.pb")
    images = keras.Input((16, 16, 3))
    model = keras.Model(images, FeatureLayer(backbone_path, cut="gap")(images))
    model.save(tmp_path / "model.keras")
    other = tiny_cnn()
    other.get_layer("conv1").set_weights([w + 1.0 for w in other.get_layer("conv1").get_weights()])
    freeze_to_pb(other, backbone_path)
    with pytest.warns(TransferWarning, match=r"backbone .*backbone\.pb changed since this layer was saved; using the "
                                             r"graph the model file embeds"):
        restored = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(restored.predict(images16, verbose=0), model.predict(images16, verbose=0), rtol=1e-6)
    # Without the embedded graph (a config alone), a changed file is an error.
    config = {key: value for key, value in model.layers[1].get_config().items() if key != "embedded"}
    with pytest.raises(TransferError, match=r"backbone .*backbone\.pb changed since this layer was saved"):
        FeatureLayer.from_config(config)


def test_a_keras_file_loads_after_its_backbone_file_is_deleted(tiny, images16, tmp_path):
    backbone_path = tmp_path / "moving.pb"
    shutil.copy(tiny.path, backbone_path)
    model = keras.Sequential([keras.Input((16, 16, 3)), FeatureLayer(backbone_path, cut="gap,conv2")])
    model.save(tmp_path / "model.keras")
    backbone_path.unlink()
    restored = keras.models.load_model(tmp_path / "model.keras")  # safe mode: the embedded graph is checked
    expected, got = model.predict(images16, verbose=0), restored.predict(images16, verbose=0)
    for key in ("gap", "conv2"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6)
    assert restored.layers[0].get_config() == model.layers[0].get_config()
    config = {key: value for key, value in model.layers[0].get_config().items() if key != "embedded"}
    with pytest.raises(TransferError, match=r"moving\.pb' does not exist"):
        FeatureLayer.from_config(config)


def test_a_corrupt_embedded_graph_is_refused(tiny, tmp_path):
    import zipfile

    backbone_path = tmp_path / "moving.pb"
    shutil.copy(tiny.path, backbone_path)
    keras.Sequential([keras.Input((16, 16, 3)), FeatureLayer(backbone_path)]).save(tmp_path / "model.keras")
    backbone_path.unlink()
    with zipfile.ZipFile(tmp_path / "model.keras") as source, \
            zipfile.ZipFile(tmp_path / "tampered.keras", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[:-1] + b"x" if item.filename.endswith("backbone.pb") else data)
    with pytest.raises(Exception, match="embedded in the model file is corrupt"):
        keras.models.load_model(tmp_path / "tampered.keras")


def test_allowed_unsafe_ops_need_safe_mode_off(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 2], name="image")
        tf.identity(image + tf.cast(tf.strings.length(tf.io.read_file(str(tmp_path / "x.pb"))), tf.float32), name="out")
    path = tmp_path / "x.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    model = keras.Sequential([keras.Input((2,)), FeatureLayer(path, cut="out", allow_ops=["ReadFile"])])
    model.save(tmp_path / "unsafe.keras")
    with pytest.raises(TransferError, match=r"ReadFile.*safe_mode=False"):
        keras.models.load_model(tmp_path / "unsafe.keras")
    restored = keras.models.load_model(tmp_path / "unsafe.keras", safe_mode=False)
    assert restored.predict(np.zeros([1, 2], "float32"), verbose=0)[0, 0] == path.stat().st_size


def test_wrong_input_shape_is_caught_when_building_the_model(tiny):
    with pytest.raises(TransferError,
                       match=r"input 'image' expects shape \(None, 16, 16, 3\), got \(None, 32, 32, 3\)"):
        FeatureLayer(tiny.path)(keras.Input((32, 32, 3)))
    with pytest.raises(TransferError, match=r"expects shape \(None, 16, 16, 3\), got \(None, 16, 3\)"):
        FeatureLayer(tiny.path)(keras.Input((16, 3)))


def test_a_loaded_backbone_as_a_layer(tiny, images16):
    backbone = Backbone.load(tiny.path, cut="dw")
    layer = FeatureLayer(backbone, name="features")  # the graph is not loaded again
    assert layer.name == "features" and layer.backbone is backbone
    np.testing.assert_allclose(layer(images16), backbone(images16))
