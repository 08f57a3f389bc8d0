"""What every Keras head shares: a class count, probabilities or logits, a feature-rank check.

A head is `body` (a list of layers run in order) followed by `classifier` (Dense to classes,
softmax unless `logits=True`). Subclasses only fill `body` and list their options; heads whose
layers do not chain (attention) override `build` and `call`.
"""
import numbers

import keras

from transfer import errors
from transfer.errors import TransferError, check_int


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


class Head(keras.layers.Layer):
    """Base of the Keras heads: features of an accepted rank in, class probabilities out."""

    is_keras = True  # the sklearn probe says False: a training loop branches on this
    head_name = "head"  # set by `register`
    ranks = (2, 3, 4)
    needs = "2-D, 3-D or 4-D features"

    def __init__(self, num_classes, logits=False, **kwargs):
        super().__init__(**kwargs)
        # one class would make the softmax a constant 1: nothing to learn
        self.num_classes = check_int(self.owner, "num_classes", num_classes, minimum=2)
        self.logits = bool(logits)
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

    def build(self, input_shape):
        self.check_rank(input_shape)
        for layer in [*self.body, self.classifier]:
            layer.build(input_shape)
            input_shape = layer.compute_output_shape(input_shape)

    def call(self, inputs, training=None):
        for layer in [*self.body, self.classifier]:
            inputs = layer(inputs, training=training)
        return inputs

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "logits": self.logits}
