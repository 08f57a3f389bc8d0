"""`linear`: pooling, then one Dense to the classes: the standard linear probe."""
import dataclasses

import keras

from .base import DROPOUT, HEAD_OPTIONS, Head, check_rate
from .pooling import POOLING, FeaturePooling, check_pooling
from .registry import register


@register("linear")
@keras.saving.register_keras_serializable(package="transfer")
class LinearHead(Head):
    """Pool features to vectors (`pooling`: avg, max, flatten or grid2), optional dropout, Dense."""

    traits = dataclasses.replace(Head.traits, averages_positions=("pooling", "avg"))
    options = (*HEAD_OPTIONS, POOLING, DROPOUT)

    def __init__(self, num_classes, pooling="avg", dropout=0.0, logits=False, standardize=True, **kwargs):
        super().__init__(num_classes, logits, standardize, **kwargs)
        self.pooling = check_pooling(self.owner, pooling)
        self.dropout = check_rate(self.owner, "dropout", dropout)
        self.body = [FeaturePooling(self.pooling)]
        if self.dropout:
            self.body.append(keras.layers.Dropout(self.dropout))

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "dropout": self.dropout}
