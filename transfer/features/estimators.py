"""`FeatureExtractor`: a frozen backbone as a scikit-learn transformer.

`make_pipeline(FeatureExtractor("model.pb", cut="..."), LogisticRegression())` can be fitted,
cross-validated and grid-searched like any pipeline. With `cache_dir`, the features of an
array are kept in the feature cache under the array's content hash, so the folds of a
cross-validation (and every later run) extract each example once.
"""
from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from transfer.datasets import DataSplits
from transfer.datasets.arrays import stored_dtype
from transfer.heads.pooling import pool_array
from transfer.data.batches import Batches
from transfer.data.input_kind import input_kind
from transfer.features.calibration import CALIBRATION
from transfer.features.inputs import Inputs
from transfer.features.spec import CacheSpec
from transfer.graph.spec import BackboneSpec


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Examples (n, ...) -> features (n, d) of `backbone` at `cut`: images (n, height, width[,
    channels]) for an image backbone, else the arrays its input takes (waveforms, token ids...).

    `pooling` turns spatial features into vectors: "flatten" (keep every position), "avg" or
    "max"; 2-D features pass through. `inputs`, `feeds`, `allow_ops`: where and with what the
    graph is fed, as for `Backbone.load`; `engine`: "tf", "onnxruntime", "openvino" or "auto", `precision`:
    "fp32" or "int8" (`transfer.features.engines`; int8 is calibrated on `calibration_size` examples
    of the X given to `fit`).
    Follows scikit-learn's rules: `__init__` only stores, each setting its own keyword (so
    `clone` and grid search see them); `fit` makes the `BackboneSpec` and `CacheSpec` from them.
    """

    def __init__(self, backbone, cut="auto", signature=None, scale=None, pooling="flatten", batch_size=32,
                 cache_dir=None, inputs=None, feeds=None, allow_ops=(), engine="tf", precision="fp32",
                 calibration_size=CALIBRATION):
        self.backbone = backbone
        self.cut = cut
        self.signature = signature
        self.inputs = inputs
        self.feeds = feeds
        self.allow_ops = allow_ops
        self.scale = scale
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.engine = engine
        self.precision = precision
        self.calibration_size = calibration_size

    def fit(self, X, y=None):
        """Nothing to learn: load the backbone and decide once how X reaches it (images or arrays,
        `transfer.data.input_kind.input_kind`), so that `transform` is cheap."""
        # pooling is done here, after the cache
        self.cache_ = CacheSpec.of(self.cache_dir, engine=self.engine, precision=self.precision,
                                   calibration_size=self.calibration_size)
        self.backbone_ = BackboneSpec(self.backbone, cut=self.cut, signature=self.signature, inputs=self.inputs,
                                      feeds=self.feeds, allow_ops=self.allow_ops).load()
        splits = _splits(_examples(X))
        self.input_kind_ = input_kind(self.backbone_, splits, scale=self.scale, where="X")
        self.engine_ = self._inputs(splits).extraction_engine(self.cache_.dir)  # checked and timed on X, once
        self.n_features_in_ = int(np.prod(np.shape(X)[1:]))
        return self

    def transform(self, X):
        check_is_fitted(self, "backbone_")
        examples = _examples(X)
        splits = _splits(examples)
        self.input_kind_.check(splits.example_shape, splits.example_dtype, "X")
        inputs = self._inputs(splits, self.engine_)
        if self.cache_.dir is None:
            batches = inputs.batches.evaluation("train")
            features = np.concatenate([np.asarray(inputs.feature_batch(x)) for x, _ in batches])
        else:
            features, _ = inputs.extract(self.cache_, progress=False)["train"][0].arrays()
        features = pool_array(features, self.pooling) if features.ndim > 2 else features
        return features.reshape(len(examples), -1)

    def _inputs(self, splits: DataSplits, engine=None) -> Inputs:
        return Inputs(self.backbone_, splits, self.input_kind_,
                      Batches(splits, self.input_kind_, self.batch_size, 0, None), self.cache_.engine,
                      self.cache_.precision, self.cache_.calibration_size, chosen_engine=engine)


def _examples(X) -> np.ndarray:
    """X as stored data: floats as float32, integers as int32, uint8 pixels as they are."""
    return stored_dtype(np.asarray(X), "X")


def _splits(examples: np.ndarray) -> DataSplits:
    """The array as a one-split dataset whose identity is its content hash (the cache key)."""
    labels = np.zeros(len(examples), "int32")
    identity = {"source": "array", "sha256": hashlib.sha256(examples.tobytes()).hexdigest(),
                "shape": list(examples.shape), "dtype": examples.dtype.name}
    return DataSplits(tf.data.Dataset.from_tensor_slices((examples, labels)), None, None, ["-"],
                      examples.shape[1:], tf.as_dtype(examples.dtype), {"train": len(examples)}, identity)
