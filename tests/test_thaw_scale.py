"""A thaw on a backbone whose cut features are tiny trains sensibly (issue 25, item 3).

The head standardizes the cut features with statistics taken at the start; on features of
scale 3e-7 an unscaled optimizer step of the thawed layer moves them by ~1e5 standard
deviations and the loss explodes. Each thawed layer's step is measured before training and
scaled down to at most `MAX_SHIFT` standard deviations (`transfer.training.thaw_steps`).
"""
import os

import keras
import numpy as np
import pytest

import transfer
import transfer.examples
from graphs import freeze_to_pb, small_feature_cnn
from transfer.layers.thawing import ThawedFeatureLayer
from transfer.training import thaw_steps
from transfer.training.keras_training import Diverged

DATA = "digits:5-9?per_class=10"
DIGITS = os.path.join(os.path.dirname(transfer.examples.__file__), "digits.pb")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return freeze_to_pb(small_feature_cnn(1e-7), tmp_path_factory.mktemp("small") / "small.pb")


def digit_images(count=64):
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[digits.target >= 5][:count].astype("float32")[..., None]


def scales(path, cut, last, lr=1e-3):
    layer = ThawedFeatureLayer(str(path), cut=cut, last=last)
    inputs = keras.Input((8, 8, 1))
    before = [w.numpy().copy() for w in layer.thawed_weights]
    measured = thaw_steps.thaw_step_scales(keras.Model(inputs, layer(inputs)), digit_images(), layer, lr)
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(layer.thawed_weights, before))  # set back
    return measured


def test_the_features_are_tiny_and_a_thawed_step_is_scaled_down_to_them(small):
    features = np.asarray(transfer.FeatureLayer(str(small), cut="gap")(digit_images()))
    assert 0 < features.max() <= 3e-7
    measured = scales(small, "gap", 1)
    assert list(measured) == [1] and 0 < measured[1] < 1e-3


def test_a_backbone_of_ordinary_scale_keeps_its_learning_rate():
    assert scales(DIGITS, "resnet_features", 5) == {index: 1.0 for index in range(1, 6)}


def fit(small, thaw, **options):
    return transfer.fit(str(small), DATA, cut="gap", head="linear", thaw=thaw, epochs=20, patience=None, lr=1e-3,
                        seed=0, export=(), verbose=0, **options)


@pytest.mark.slow
def test_a_thaw_on_tiny_features_trains_at_least_as_well_as_the_frozen_features(small, monkeypatch):
    frozen = fit(small, None)
    thawed = fit(small, 1)
    assert np.all(np.isfinite(thawed.history["loss"]))
    assert max(thawed.history["loss"]) < 10 * frozen.history["loss"][0]
    assert thawed.history["loss"][-1] < thawed.history["loss"][0]
    assert thawed.metrics["test"]["accuracy"] >= frozen.metrics["test"]["accuracy"] - 0.05
    monkeypatch.setattr(thaw_steps, "MAX_SHIFT", float("inf"))  # the step unscaled: what the issue saw
    with pytest.raises(Diverged, match=r"^training diverged: the training loss went from"):
        fit(small, 1)
