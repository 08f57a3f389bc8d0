"""What the pretraining scripts share: a backbone trained with a softmax classifier on its source
task, then frozen with its classifier, its output named as a cut, and written as a `.pb`."""
from __future__ import annotations

from pathlib import Path

import transfer  # noqa: F401  (pins the Keras backend)
import keras

from transfer.files import write_atomic
from transfer.graph.freezing import freeze_keras_model


def pretrain_and_freeze(backbone: keras.Model, num_classes: int, train: tuple, test: tuple, out: Path,
                        cut_name: str, *, epochs: int, optimizer=None, verbose: int = 0) -> float:
    """Train `backbone` + a softmax `classifier` on `train` (x, y), batch 64 (Adam 3e-3 unless
    `optimizer`), write the frozen graph to `out` (the backbone's output named `cut_name`);
    return the accuracy on `test` (x, y)."""
    classifier = keras.layers.Dense(num_classes, activation="softmax", name="classifier")
    model = keras.Sequential([backbone, classifier])
    model.compile(optimizer=optimizer or keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=64, verbose=verbose)
    _, accuracy = model.evaluate(*test, verbose=0)
    write_atomic(out, freeze_keras_model(backbone, classifier, cut_name=cut_name).graph_def.SerializeToString())
    return accuracy
