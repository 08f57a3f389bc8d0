"""Every output of a SavedModel signature by its key; TF1 Hub modules (`default` signature, untagged MetaGraph)."""
import json

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer import Backbone
from transfer.graph.loading import load_graph
from cli_checks import run_cli, user_error


def test_inspect_lists_each_output_with_its_key_tensor_and_shape(capsys, multi_output_saved_model):
    code, out, err = run_cli(capsys, "inspect", str(multi_output_saved_model.path), "--json")
    assert code == 0, err
    outputs = json.loads(out)["outputs"]
    assert [o["key"] for o in outputs] == ["contour", "note", "onset"]
    assert len({o["tensor"] for o in outputs}) == 3
    assert all(o["tensor"].startswith("StatefulPartitionedCall:") for o in outputs)  # the TF1 loader's names
    assert [o["shape"] for o in outputs] == [[None, 40, 12], [None, 40, 5], [None, 40, 5]]
    candidates = json.loads(out)["candidates"]
    assert {o["tensor"] for o in outputs} <= {c["tensor"] for c in candidates}
    # tensordot's (batch x time, channels) products only look batch-first: no candidates
    assert not [c for c in candidates if "Tensordot" in c["tensor"]], candidates


def test_inspect_text_shows_output_keys(capsys, multi_output_saved_model):
    code, out, err = run_cli(capsys, "inspect", str(multi_output_saved_model.path))
    assert code == 0, err
    assert "note     StatefulPartitionedCall:1  float32  (None, 40, 5)" in out


def test_an_output_key_is_a_cut(capsys, multi_output_saved_model):
    code, out, err = run_cli(capsys, "inspect", str(multi_output_saved_model.path), "--cut", "note", "--json")
    assert code == 0, err
    report = json.loads(out)
    note = next(o for o in report["outputs"] if o["key"] == "note")
    assert report["cuts"][0]["tensor"] == note["tensor"] and report["cuts"][0]["reason"] == "output name"
    audio, expected = multi_output_saved_model.extra["audio"], multi_output_saved_model.extra
    backbone = Backbone.load(multi_output_saved_model.path, cut="note")
    np.testing.assert_allclose(backbone(audio).numpy(), expected["note"], rtol=1e-5, atol=1e-6)
    both = Backbone.load(multi_output_saved_model.path, cut="onset,contour")(audio)
    np.testing.assert_allclose(both["onset"].numpy(), expected["onset"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both["contour"].numpy(), expected["contour"], rtol=1e-5, atol=1e-6)


def test_auto_on_a_multi_output_model_is_the_shared_trunk(multi_output_saved_model):
    """Dense on a sequence multiplies a (batch x time) reshape: auto is the layer output before it."""
    backbone = Backbone.load(multi_output_saved_model.path)
    assert backbone.cuts[0].name.endswith("/trunk:0"), backbone.cuts[0]
    audio = multi_output_saved_model.extra["audio"]
    np.testing.assert_allclose(backbone(audio).numpy(), multi_output_saved_model.extra["trunk"], rtol=1e-5, atol=1e-6)


def test_unknown_output_key_names_the_closest_keys(capsys, multi_output_saved_model):
    user_error(capsys, ["inspect", str(multi_output_saved_model.path), "--cut", "notes"],
                      r"^transfer inspect: error: unknown cut 'notes'; closest: note\b")
    user_error(capsys, ["inspect", str(multi_output_saved_model.path), "--cut", "onsets"],
                      r"unknown cut 'onsets'; closest: onset\b")


def test_unknown_signature_lists_the_available_ones(capsys, multi_output_saved_model, hub_module):
    user_error(capsys, ["inspect", str(multi_output_saved_model.path), "--signature", "serve"],
                      r"unknown signature 'serve' in .*multi_output_saved_model; available: serving_default$")
    user_error(capsys, ["inspect", str(hub_module.path), "--signature", "image_features"],
                      r"unknown signature 'image_features' in .*; available: default, image_feature_vector$")


def test_hub_module_loads_without_flags_from_its_default_signature(hub_module):
    loaded = load_graph(hub_module.path)
    assert loaded.signature == "default" and loaded.outputs == {"default": "logits/MatMul:0"}
    images = np.ones((2, 8, 8, 3), "float32")
    logits = Backbone.load(hub_module.path, cut="default")
    np.testing.assert_allclose(logits(images).numpy(), hub_module.extra["logits"], rtol=1e-5, atol=1e-5)
    features = Backbone.load(hub_module.path, cut="conv/Relu")
    np.testing.assert_allclose(features(images).numpy(), hub_module.extra["features"], rtol=1e-5, atol=1e-5)


def test_inspect_says_it_used_the_hub_default_signature(capsys, hub_module):
    code, out, err = run_cli(capsys, "inspect", str(hub_module.path))
    assert code == 0, err
    assert "SavedModel (signature default)" in out
    assert "no 'serving_default' signature: used 'default' (the TF Hub convention); --signature chooses another" in out
    code, out, err = run_cli(capsys, "inspect", str(hub_module.path), "--signature", "image_feature_vector", "--json")
    report = json.loads(out)
    assert report["signature"] == "image_feature_vector" and report["signature_note"] is None
    assert [(o["key"], o["tensor"]) for o in report["outputs"]] == [("default", "feature_vector:0")]


def test_a_keras3_saved_model_that_only_the_tf1_loader_reads_freezes_with_its_trained_values(tmp_path):
    """Keras 3 saves each variable twice (the layers read one handle, the checkpoint restores
    another); the TF1 loader restores only the second, so its readers are pointed at it."""
    from collections import deque

    from graphs import break_object_graph
    from tensorflow.core.protobuf import saved_model_pb2

    keras.utils.set_random_seed(3)
    audio = keras.Input((40, 8), name="audio")
    trunk = keras.layers.Conv1D(16, 3, padding="same", activation="relu", name="trunk")(audio)
    model = keras.Model(audio, {"note": keras.layers.Dense(5, activation="sigmoid", name="note")(trunk),
                                "contour": keras.layers.Dense(12, activation="sigmoid", name="contour")(trunk)})
    module = tf.Module()
    module.model = model
    module.optimizer_state = tf.Module()
    module.optimizer_state.slot = tf.Variable(tf.zeros([16, 12]), name="slot")
    module.serve = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None, 40, 8], tf.float32, "audio")])
    path = tmp_path / "keras3_saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    nodes = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes()).meta_graphs[0] \
        .object_graph_def.nodes
    queue, seen, variable = deque([(0, "")]), {0}, None
    while queue and variable is None:  # the dotted object path of one of the model's variables
        node_id, dotted = queue.popleft()
        if nodes[node_id].WhichOneof("kind") == "variable" and dotted.startswith("model."):
            variable = dotted
        for child in nodes[node_id].children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                queue.append((child.node_id, f"{dotted}.{child.local_name}".strip(".")))
    break_object_graph(path, "optimizer_state", variable, "slot")  # tf.saved_model.load now fails
    inputs = np.random.default_rng(8).normal(size=(3, 40, 8)).astype("float32")
    backbone = Backbone.load(path, cut="note")
    np.testing.assert_allclose(backbone(inputs), model(inputs)["note"], rtol=1e-5, atol=1e-6)


# -- a waveform model whose batch norm has one channel (issue 20) -----------------------------


class HarmonicFrontEnd(tf.Module):
    """Shaped like a real audio SavedModel: waveforms (None, 1024, 1), reshaped to frames and
    `ExpandDims` to (None, 32, 32, 1), an inference-mode `FusedBatchNormV3` on that one channel
    (its per-channel mean and variance are (1,): no batch), a conv, several signature outputs."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(5)
        self.kernel = tf.Variable(rng.normal(0, 1, (3, 3, 1, 4)).astype("float32"))
        self.dense = tf.Variable(rng.normal(0, 1, (4, 3)).astype("float32"))
        self.norm = [tf.Variable([value]) for value in (1.5, 0.1, 0.2, 2.0)]  # scale, offset, mean, variance

    @tf.function(input_signature=[tf.TensorSpec((None, 1024, 1), tf.float32, name="waveform")])
    def serve(self, waveform):
        frames = tf.expand_dims(tf.reshape(waveform, [-1, 32, 32]), -1)
        scale, offset, mean, variance = self.norm
        normed, _, _ = tf.compat.v1.nn.fused_batch_norm(frames, scale, offset, mean=mean, variance=variance,
                                                        is_training=False)
        embedding = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(normed, self.kernel, 1, "SAME")), [1, 2])
        logits = tf.matmul(embedding, self.dense)
        return {"embedding": embedding, "logits": logits, "probabilities": tf.nn.softmax(logits)}


def test_a_one_channel_batch_norm_does_not_fix_the_batch(tmp_path, capsys):
    front_end = HarmonicFrontEnd()
    path = tmp_path / "harmonic"
    tf.saved_model.save(front_end, str(path), signatures={"serving_default": front_end.serve})
    graph = load_graph(path).graph_def
    assert "FusedBatchNormV3" in {node.op for node in graph.node}
    waveforms = np.random.default_rng(0).normal(0, 1, (80, 1024, 1)).astype("float32")
    backbone = Backbone.load(path, cut="embedding")
    np.testing.assert_allclose(backbone(waveforms[:32]), front_end.serve(waveforms[:32])["embedding"], atol=1e-5)
    np.savez(tmp_path / "waves.npz", x=waveforms, y=np.arange(80) % 3)
    code, out, err = run_cli(capsys, "fit", "--backbone", str(path), "--cut", "embedding", "--head", "linear",
                             "--data", f"npz:{tmp_path / 'waves.npz'}", "--batch-size", "32", "--epochs", "1",
                             "--export", "none", "--out", str(tmp_path / "run"))
    assert code == 0, err
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history["training"]["epochs_run"] == 1
