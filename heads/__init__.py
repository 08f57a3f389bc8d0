"""Heads: small trainable classifiers on top of a cut's features, found by name.

`get("mlp", num_classes=10, hidden=(512,))` builds one; `available()` lists the names;
`@register("name")` adds one; third-party packages add theirs through the entry-point group
`transfer.heads`, and `get("package.module:Class", ...)` takes any importable head.
Every kind of head declares its `traits` (`HeadTraits`: trained by Keras or fitted by
scikit-learn, reads several cuts, averages positions, adapts, ...) and its `options`
(`Option`s); `kind_of(name)` reads both before a head is built (`protocol.py`).
Keras heads return class probabilities (`logits=True` for logits); the `logreg` probe is a
scikit-learn estimator (`keras=False`). Every head standardizes its input (`standardize=True`):
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
from .protocol import REQUIRED, HeadTraits, Option, traits_of
from .registry import HeadKind, available, get, kind_of, register, resolve
from .sklearn_probe import LogRegProbe
from .standardization import Standardization, StandardizationWarning

__all__ = [
    "POOLINGS",
    "REQUIRED",
    "AttentionHead",
    "ConvHead",
    "FeaturePooling",
    "Head",
    "HeadKind",
    "HeadTraits",
    "LinearHead",
    "LogRegProbe",
    "MLPHead",
    "MultiLayerChoice",
    "MultiLayerHead",
    "Option",
    "Standardization",
    "StandardizationWarning",
    "available",
    "choose_multilayer",
    "get",
    "kind_of",
    "pool_array",
    "register",
    "resolve",
    "traits_of",
]
