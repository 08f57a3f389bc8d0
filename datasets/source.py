"""The contract between a data source and `load`: labelled parts that stream chosen examples.

Splitting needs every label up front but the examples only while streaming, so a source hands
over, per split it stores, its labels and a function that streams the examples at given indices.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

# A stream function takes sorted example indices (None: all of them) and returns unbatched
# (example, int32 label) pairs in the stored order.
Stream = Callable[[Optional[np.ndarray]], tf.data.Dataset]


@dataclass
class Part:
    """One split as the source stores it; `labels` may be costly (a read pass), so it is lazy."""

    labels: Callable[[], np.ndarray]
    stream: Stream
    size: Optional[int] = None
    sliceable: bool = False  # `stream(indices)` reads only those examples (no decoding of the others)


@dataclass
class Source:
    """What a source module returns: parts keyed "train" (always), "validation", "test"."""

    parts: dict
    class_names: list
    example_shape: tuple
    example_dtype: tf.DType
    identity: dict
    images: bool = False  # pictures (files, a TFDS Image feature), not just arrays


def indexed_part(items: np.ndarray, labels: np.ndarray, decode=None) -> Part:
    """A part held as parallel arrays (file paths or examples) and labels, sliced by index.

    `decode`, if given, maps (item, label) to (example, label) while streaming.
    """
    labels = np.asarray(labels, np.int32)

    def stream(indices=None):
        chosen = slice(None) if indices is None else indices
        dataset = tf.data.Dataset.from_tensor_slices((items[chosen], labels[chosen]))
        return dataset if decode is None else dataset.map(decode, tf.data.AUTOTUNE)

    return Part(labels=lambda: labels, stream=stream, size=len(labels), sliceable=True)
