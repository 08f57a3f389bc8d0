"""`mlp`: pooling, hidden Dense blocks, Dense to the classes: for features a line cannot split."""
import dataclasses

import keras

from .base import ACTIVATION, DROPOUT, HEAD_OPTIONS, Head, check_choice, check_rate, check_sizes
from .pooling import POOLING, FeaturePooling, check_pooling
from .protocol import Option
from .registry import register

NORMS = (None, "batch", "layer")


@register("mlp")
@keras.saving.register_keras_serializable(package="transfer")
class MLPHead(Head):
    """Hidden blocks of Dense(width) -> norm (None, "batch", "layer") -> activation -> dropout."""

    traits = dataclasses.replace(Head.traits, averages_positions=("pooling", "avg"))
    options = (*HEAD_OPTIONS, Option("hidden", (256,), "layer widths, e.g. 256 or 256,128"), ACTIVATION, DROPOUT,
               Option("norm", None, "none, batch or layer"), POOLING)

    def __init__(
        self,
        num_classes,
        hidden=(256,),
        activation="relu",
        dropout=0.0,
        norm=None,
        pooling="avg",
        logits=False,
        standardize=True,
        **kwargs,
    ):
        super().__init__(num_classes, logits, standardize, **kwargs)
        self.hidden = check_sizes(self.owner, "hidden", hidden)
        self.activation = activation
        self.dropout = check_rate(self.owner, "dropout", dropout)
        self.norm = check_choice(self.owner, "norm", norm, NORMS)
        self.pooling = check_pooling(self.owner, pooling)
        self.body = [FeaturePooling(self.pooling)]
        for width in self.hidden:
            self.body.append(keras.layers.Dense(width, use_bias=self.norm is None))
            if self.norm == "batch":
                self.body.append(keras.layers.BatchNormalization())
            elif self.norm == "layer":
                self.body.append(keras.layers.LayerNormalization())
            self.body.append(keras.layers.Activation(activation))
            if self.dropout:
                self.body.append(keras.layers.Dropout(self.dropout))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden": self.hidden,
            "activation": self.activation,
            "dropout": self.dropout,
            "norm": self.norm,
            "pooling": self.pooling,
        }
