"""`FeatureExtractor`: a frozen backbone as a scikit-learn transformer.

`make_pipeline(FeatureExtractor("model.pb", cut="..."), LogisticRegression())` can be fitted,
cross-validated and grid-searched like any pipeline. With `cache_dir`, the features of an image
array are kept in the feature cache under the array's content hash, so the folds of a
cross-validation (and every later run) extract each image once.
"""
from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from transfer.datasets import DataSplits
from transfer.heads.pooling import pool_array
from transfer.input_kind import ImageInput
from transfer.pipeline import Batches, Inputs, model_input_shape, resolve_preprocessing


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Images (n, height, width, channels) -> features (n, d) of `backbone` at `cut`.

    `pooling` turns spatial features into vectors: "flatten" (keep every position), "avg" or
    "max"; 2-D features pass through. Follows scikit-learn's rules: `__init__` only stores.
    """

    def __init__(self, backbone, cut="auto", signature=None, scale=None, pooling="flatten", batch_size=32,
                 cache_dir=None):
        self.backbone = backbone
        self.cut = cut
        self.signature = signature
        self.scale = scale
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    def fit(self, X, y=None):
        """Nothing to learn: load and check the backbone once, so that `transform` is cheap."""
        from transfer.backbone import Backbone

        self.backbone_ = Backbone.load(self.backbone, cut=self.cut, signature=self.signature)
        self.preprocessing_ = resolve_preprocessing(self.backbone_, scale=self.scale)
        self.n_features_in_ = int(np.prod(np.shape(X)[1:]))
        return self

    def transform(self, X):
        check_is_fitted(self, "backbone_")
        images = np.asarray(X, dtype="float32")
        if images.ndim == 3:  # gray images without a channel axis
            images = images[..., None]
        inputs = self._inputs(images)
        if self.cache_dir is None:
            batches = inputs.batches.evaluation("train")
            features = np.concatenate([np.asarray(inputs.feature_batch(x)) for x, _ in batches])
        else:
            from transfer.cache import FeatureCache

            entries = FeatureCache(self.cache_dir).extract(inputs, progress=False)
            features, _ = entries["train"].arrays()
        features = pool_array(features, self.pooling) if features.ndim > 2 else features
        return features.reshape(len(images), -1)

    def _inputs(self, images: np.ndarray) -> Inputs:
        """The array as a one-split dataset whose identity is its content hash (the cache key)."""
        labels = np.zeros(len(images), "int32")
        identity = {"source": "array", "sha256": hashlib.sha256(images.tobytes()).hexdigest(),
                    "shape": list(images.shape)}
        splits = DataSplits(tf.data.Dataset.from_tensor_slices((images, labels)), None, None, ["-"],
                            images.shape[1:], tf.float32, {"train": len(images)}, identity, images=True)
        kind = ImageInput(self.preprocessing_, model_input_shape(splits, self.preprocessing_))
        return Inputs(self.backbone_, splits, kind, Batches(splits, kind, self.batch_size, 0, None))
