"""`conv`: convolutions over spatial features, global pooling, Dense to the classes.

For cuts taken before a backbone's last stage, where a little spatial processing still pays.
"""
import keras

from .base import ACTIVATION, DROPOUT, HEAD_OPTIONS, Head, check_int, check_rate, check_sizes
from .pooling import POOLING, FeaturePooling, check_pooling
from .protocol import Option
from .registry import register


@register("conv")
@keras.saving.register_keras_serializable(package="transfer")
class ConvHead(Head):
    """One "same"-padded Conv2D per entry of `filters`, then pooling, dropout and Dense."""

    # traits: the base's; it pools only after its convolutions, which read the positions
    options = (*HEAD_OPTIONS, Option("filters", (256,), "filter counts, e.g. 256 or 256,128"),
               Option("kernel_size", 3, "an integer >= 1"), ACTIVATION, POOLING, DROPOUT)
    ranks = (4,)
    needs = "4-D spatial features (batch, height, width, channels)"

    def __init__(
        self,
        num_classes,
        filters=(256,),
        kernel_size=3,
        activation="relu",
        pooling="avg",
        dropout=0.0,
        logits=False,
        standardize=True,
        **kwargs,
    ):
        super().__init__(num_classes, logits, standardize, **kwargs)
        self.filters = check_sizes(self.owner, "filters", filters)
        self.kernel_size = check_int(self.owner, "kernel_size", kernel_size)
        self.activation = activation
        self.pooling = check_pooling(self.owner, pooling)
        self.dropout = check_rate(self.owner, "dropout", dropout)
        self.body = [
            keras.layers.Conv2D(width, self.kernel_size, padding="same", activation=activation)
            for width in self.filters
        ]
        self.body.append(FeaturePooling(self.pooling))
        if self.dropout:
            self.body.append(keras.layers.Dropout(self.dropout))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "pooling": self.pooling,
            "dropout": self.dropout,
        }
