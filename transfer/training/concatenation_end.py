"""A selecting head never worse on validation than keeping every cut.

`multilayer` selects cuts with a penalty trained by Adam; on data where every cut helps, plain
concatenation (a logistic regression on all the pooled features) beat it (issue 22: 0.930 against
0.895 on a 54-cut network). For a head that declares the no-sparsity end of its path
(`HeadTraits.concatenates`), `transfer.fit` fits that end too, on the same training features,
and keeps whichever scores higher on validation (a tie keeps the sparser, trained head).
"""
from __future__ import annotations

import numpy as np
import keras

from transfer.heads.protocol import traits_of
from transfer.training.prediction import predict_batches


class _Joined(keras.layers.Layer):
    """A head's `joined` step as a layer: what its classifier reads, computed inside the model."""

    def __init__(self, head, **kwargs):
        super().__init__(**kwargs)
        self.head = head

    def call(self, inputs):
        return self.head.joined(inputs, training=False)


def keep_better_end(head, model, source) -> dict | None:
    """After `head` trained in `model` (`source`: the training source, `transfer.training.sources`):
    the no-sparsity end fitted and kept when its validation accuracy is higher. Returns both
    accuracies and which was kept (for the run's metrics), or None where it does not apply (no
    validation split, a head without that end, or one told not to try it: `concatenation=False`)."""
    validation = source.split("validation")
    if validation is None or not traits_of(head).concatenates or not head.concatenation:
        return None
    trained = _accuracy(model, validation)
    saved = (head.classifier.get_weights(), head.mask.numpy(), head.strength, head.refitted,
             head.classifier.kernel.regularizer)
    joined, labels = predict_batches(source.model(_Joined(head)), source.split("train"))
    head.fit_concatenation(joined, labels)
    concatenation = _accuracy(model, validation)
    kept = "concatenation" if concatenation > trained else "trained"
    if kept == "trained":
        weights, mask, head.strength, head.refitted, head.classifier.kernel.regularizer = saved
        head.classifier.set_weights(weights)
        head.mask.assign(mask)
    return {"trained_val_accuracy": trained, "concatenation_val_accuracy": concatenation, "kept": kept}


def _accuracy(model, dataset) -> float:
    probabilities, labels = predict_batches(model, dataset)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
