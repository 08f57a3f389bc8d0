"""`attention`: a learned query attends over the positions, then Dense to the classes.

Average pooling weighs every position alike; attention pooling learns which positions (image
regions, sequence steps) carry the class. It sees positions as a set: where a feature sits only
counts through what the backbone already wrote into the feature itself.
"""
import keras
from keras import ops

from .base import DROPOUT, HEAD_OPTIONS, Head, check_int, check_rate
from .protocol import Option
from .registry import register


@register("attention")
@keras.saving.register_keras_serializable(package="transfer")
class AttentionHead(Head):
    """MultiHeadAttention from one learned query token over (batch, positions, channels)."""

    options = (*HEAD_OPTIONS, Option("num_heads", 4, "an integer >= 1"), Option("key_dim", 64, "an integer >= 1"),
               DROPOUT)
    ranks = (3, 4)
    needs = (
        "3-D sequence (batch, positions, channels) "
        "or 4-D spatial (batch, height, width, channels) features"
    )

    def __init__(self, num_classes, num_heads=4, key_dim=64, dropout=0.0, logits=False, standardize=True, **kwargs):
        super().__init__(num_classes, logits, standardize, **kwargs)
        self.num_heads = check_int(self.owner, "num_heads", num_heads)
        self.key_dim = check_int(self.owner, "key_dim", key_dim)
        self.dropout = check_rate(self.owner, "dropout", dropout)
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, self.key_dim, dropout=self.dropout, name="attention"
        )

    def build(self, input_shape):
        self.check_rank(input_shape)
        self.build_standardization(input_shape)
        batch, channels = input_shape[0], input_shape[-1]
        self.query = self.add_weight(
            name="query", shape=(1, 1, channels), initializer="random_normal"
        )
        self.attention.build((batch, 1, channels), (batch, None, channels))
        self.classifier.build((batch, channels))

    def call(self, inputs, training=None):
        inputs = self.standardized(inputs, training)
        batch, channels = ops.shape(inputs)[0], inputs.shape[-1]
        positions = ops.reshape(inputs, (batch, -1, channels))
        query = ops.broadcast_to(self.query, (batch, 1, channels))
        pooled = self.attention(query, positions, training=training)[:, 0]
        return self.classifier(pooled)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "dropout": self.dropout,
        }
