"""What every Keras head shares: a class count, probabilities or logits, a feature-rank check,
standardized inputs.

A head is `standardization` (per-channel mean and variance, adapted on training features; None
with `standardize=False`), `body` (a list of layers run in order) and `classifier` (Dense to
classes, softmax unless `logits=True`). Subclasses only fill `body` and declare their `options`
(and `traits` where they differ: `transfer.heads.protocol`); heads whose layers do not chain
(attention) override `build` and `call`.

Adapting: `transfer.fit` and sweeps call `head.adapt(...)` on the training features before
training. In your own script, call `head.adapt(train_features)` (an array, or a tf.data.Dataset
of feature batches or of (features, labels) batches) before `model.fit`. A head never adapted
standardizes with mean 0 and variance 1, i.e. not at all, and warns (`StandardizationWarning`)
when it is trained that way.
"""
import numbers

import keras
import numpy as np

from transfer import errors
from transfer.errors import TransferError, check_int

from .protocol import REQUIRED, HeadTraits, Option
from .standardization import Moments, Standardization, feature_batches, warn_not_adapted

# The options every Keras head takes, and two that several share (`options` of the head classes).
HEAD_OPTIONS = (
    Option("num_classes", REQUIRED, "an integer >= 2 (set from the data by fit and sweeps)"),
    Option("logits", False, "true or false: return logits instead of probabilities"),
    Option("standardize", True, "true or false: standardize the features per channel first"),
)
DROPOUT = Option("dropout", 0.0, "a rate in [0, 1)")
ACTIVATION = Option("activation", "relu", "a Keras activation name")


def check_choice(owner, option, value, choices):
    """Return `value` if it is one of `choices`, else a one-line error naming owner and option."""
    return errors.check_choice(f"{owner}: {option}", value, choices)


def check_sizes(owner, option, value):
    """An int or a sequence of ints (layer widths) as a tuple of positive ints."""
    values = value if hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    return tuple(check_int(owner, option, v) for v in values)


def check_rate(owner, option, value):
    """`value` as a float in [0, 1) (a dropout rate), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise TransferError(f"{owner}: {option}={value!r} must be a number in [0, 1)")
    return float(value)


def check_flag(owner, option, value):
    """`value` if it is True or False (JSON/TOML `true`/`false`), else a one-line error."""
    if not isinstance(value, (bool, np.bool_)):
        raise TransferError(f"{owner}: {option}={value!r} must be true or false")
    return bool(value)


class Head(keras.layers.Layer):
    """Base of the Keras heads: features of an accepted rank in, class probabilities out."""

    traits = HeadTraits(adapts=True, logits=True)  # trained by Keras, on one cut
    options = HEAD_OPTIONS
    head_name = "head"  # set by `register`
    ranks = (2, 3, 4)
    needs = "2-D, 3-D or 4-D features"

    def __init__(self, num_classes, logits=False, standardize=True, **kwargs):
        super().__init__(**kwargs)
        # one class would make the softmax a constant 1: nothing to learn
        self.num_classes = check_int(self.owner, "num_classes", num_classes, minimum=2)
        self.logits = bool(logits)
        self.standardize = check_flag(self.owner, "standardize", standardize)
        one = self.standardize and not self.traits.several_cuts  # several: per cut, by the head
        self.standardization = Standardization(name="standardization") if one else None
        self._warned = False
        self.body = []
        self.classifier = keras.layers.Dense(
            self.num_classes, activation=None if self.logits else "softmax", name="classifier"
        )

    @property
    def owner(self):
        """How errors name this head."""
        return f"head {self.head_name!r}"

    def check_rank(self, input_shape):
        """Refuse, at build time, features this head cannot read."""
        if len(input_shape) not in self.ranks or input_shape[-1] is None:
            raise TransferError(f"{self.owner} needs {self.needs}, got shape {tuple(input_shape)}")

    @property
    def adapted(self) -> bool:
        """Whether the input standardization has its statistics (always True without one)."""
        return self.standardization is None or self.standardization.adapted

    def adapt(self, features, steps=None):
        """Set the input standardization's per-channel mean and variance from training features;
        returns the head. `features`: an array (batch, ..., channels), or batches of them (a
        tf.data.Dataset or any iterable; (features, labels) pairs give their features); `steps`:
        read at most that many batches. Without standardization, nothing to do."""
        if self.standardization is None:
            return self
        moments = Moments()
        for batch in feature_batches(features, steps):
            self.check_rank(batch.shape)
            moments.update(batch)
        if moments.mean is None:
            raise TransferError(f"{self.owner}: adapt was given no features")
        self.standardization.set_statistics(moments)
        return self

    def build(self, input_shape):
        self.check_rank(input_shape)
        self.build_standardization(input_shape)
        for layer in [*self.body, self.classifier]:
            layer.build(input_shape)
            input_shape = layer.compute_output_shape(input_shape)

    def build_standardization(self, input_shape):
        """Build the standardization for these features, unless `adapt` built it already."""
        if self.standardization is None:
            return
        if not self.standardization.built:
            self.standardization.build(input_shape)
        elif self.standardization.mean.shape[0] != input_shape[-1]:
            raise TransferError(f"{self.owner} was adapted on features with {self.standardization.mean.shape[0]} "
                                f"channels, got shape {tuple(input_shape)}")

    def standardized(self, inputs, training=None):
        """The head's inputs standardized; training on a never-adapted head warns once."""
        if self.standardization is None:
            return inputs
        self.warn_if_not_adapted(training)
        return self.standardization(inputs)

    def warn_if_not_adapted(self, training):
        """Once per head: say it trains on a standardization that was never adapted."""
        if training and not self._warned and not self.adapted:
            self._warned = True
            warn_not_adapted(self.owner)

    def call(self, inputs, training=None):
        inputs = self.standardized(inputs, training)
        for layer in [*self.body, self.classifier]:
            inputs = layer(inputs, training=training)
        return inputs

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "logits": self.logits,
                "standardize": self.standardize}
