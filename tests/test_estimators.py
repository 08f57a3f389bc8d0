"""FeatureExtractor inside scikit-learn pipelines, cross-validation and the cache."""
import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from transfer.features.estimators import FeatureExtractor
from transfer.features.inputs import open_inputs

from graphs import feature_model


def digits_5_to_9(count=200):
    digits = load_digits()
    keep = digits.target >= 5
    return digits.images[keep][:count].astype("float32"), digits.target[keep][:count]


def test_pipeline_cross_validates_with_a_frozen_backbone():
    images, labels = digits_5_to_9()
    pipeline = make_pipeline(FeatureExtractor("example:digits", cut="block2_out"), LogisticRegression(max_iter=2000))
    scores = cross_val_score(pipeline, images, labels, cv=3)
    assert scores.mean() > 0.85, scores


def test_features_equal_the_backbone_and_params_follow_sklearn_rules():
    images, _ = digits_5_to_9(20)
    extractor = FeatureExtractor("example:digits", cut="block2_out", pooling="avg")
    assert extractor.get_params()["cut"] == "block2_out" and not hasattr(extractor, "backbone_")
    features = extractor.fit(images).transform(images)
    inputs = open_inputs("example:digits", "digits", cut="block2_out")
    expected = feature_model(inputs).predict(images[..., None], verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    flat = clone(extractor).set_params(pooling="flatten").fit(images).transform(images)
    assert features.shape == (20, 32) and flat.shape == (20, 4 * 4 * 32)


def test_cache_keeps_each_array_once(tmp_path):
    images, _ = digits_5_to_9(40)
    extractor = FeatureExtractor("example:digits", cut="resnet_features", cache_dir=tmp_path).fit(images)
    first = extractor.transform(images)
    files = sorted(tmp_path.rglob("*.npy"))
    stamps = [f.stat().st_mtime_ns for f in files]
    np.testing.assert_array_equal(extractor.transform(images), first)
    assert sorted(tmp_path.rglob("*.npy")) == files and [f.stat().st_mtime_ns for f in files] == stamps
    extractor.transform(images[:10])  # other content: another entry
    assert len(sorted(tmp_path.rglob("features-*.npy"))) == 2


def test_no_tensorflow_deprecation_or_retracing_warnings(tmp_path):
    """The Python API stays quiet: freezing for the exports used to print extract_sub_graph's
    deprecation notice, and cross-validating a FeatureExtractor a retracing warning per fold."""
    import logging

    from tensorflow.python.eager.polymorphic_function import polymorphic_function
    from tensorflow.python.util import deprecation

    import transfer

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    deprecation._PRINTED_WARNING.clear()  # each notice prints once per process: make it print again
    # The retracing notice counts the traces of every Keras model's predict function in the
    # process (keyed by its code): count only this test's, so it passes or fails on its own.
    polymorphic_function._frequent_tracing_detector_manager._detectors.clear()
    try:
        transfer.fit("example:digits", "digits:5-9?per_class=10", cut="block2_out", head="linear",
                     head_options={"pooling": "flatten"}, epochs=1, verbose=0, export=("pb",), out=tmp_path / "run")
        digits = load_digits()
        chosen = digits.target < 5
        images, labels = digits.images[chosen][:100].astype("float32"), digits.target[chosen][:100]
        pipeline = make_pipeline(FeatureExtractor("example:digits", cut="block2_out"), LogisticRegression(max_iter=200))
        cross_val_score(pipeline, images, labels, cv=5)
    finally:
        logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert not [m for m in messages if "deprecat" in m.lower() or "retracing" in m], messages
