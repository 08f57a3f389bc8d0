"""Heads: small trainable classifiers on top of a cut's features, found by name.

`get("mlp", num_classes=10, hidden=(512,))` builds one; `available()` lists the names;
`@register("name")` adds one; third-party packages add theirs through the entry-point group
`transfer.heads`, and `get("package.module:Class", ...)` takes any importable head.
Keras heads return class probabilities (`logits=True` for logits); the `logreg` probe is a
scikit-learn estimator (`is_keras = False`). Every head standardizes its input (`standardize=True`):
a Keras head built in your own script needs `head.adapt(train_features)` before training.
"""
import transfer.errors  # noqa: F401  (runs transfer/__init__, which pins KERAS_BACKEND before keras is imported)

from .attention import AttentionHead
from .base import Head
from .conv import ConvHead
from .linear import LinearHead
from .mlp import MLPHead
from .multilayer import MultiLayerChoice, MultiLayerHead, choose_multilayer
from .pooling import POOLINGS, FeaturePooling, pool_array
from .registry import available, get, register, resolve
from .sklearn_probe import LogRegProbe
from .standardization import Standardization, StandardizationWarning

__all__ = [
    "POOLINGS",
    "AttentionHead",
    "ConvHead",
    "FeaturePooling",
    "Head",
    "LinearHead",
    "LogRegProbe",
    "MLPHead",
    "MultiLayerChoice",
    "MultiLayerHead",
    "Standardization",
    "StandardizationWarning",
    "available",
    "choose_multilayer",
    "get",
    "pool_array",
    "register",
    "resolve",
]
