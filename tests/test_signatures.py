"""Every output of a SavedModel signature by its key; TF1 Hub modules (`default` signature, untagged MetaGraph)."""
import json

import numpy as np
import pytest

from transfer import Backbone
from transfer.loading import load_graph
from test_cli import assert_user_error, run_cli


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
    assert_user_error(capsys, ["inspect", str(multi_output_saved_model.path), "--cut", "notes"],
                      r"^transfer inspect: error: unknown cut 'notes'; closest: note\b")
    assert_user_error(capsys, ["inspect", str(multi_output_saved_model.path), "--cut", "onsets"],
                      r"unknown cut 'onsets'; closest: onset\b")


def test_unknown_signature_lists_the_available_ones(capsys, multi_output_saved_model, hub_module):
    assert_user_error(capsys, ["inspect", str(multi_output_saved_model.path), "--signature", "serve"],
                      r"unknown signature 'serve' in .*multi_output_saved_model; available: serving_default$")
    assert_user_error(capsys, ["inspect", str(hub_module.path), "--signature", "image_features"],
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
