"""Data sources by spec string, streamed as tf.data pipelines of (example, label) pairs.

An example is an image (image folders, TFDS image features, digits) or any array (npz arrays and
other TFDS features: waveforms, spectrograms, token ids, vectors), kept as stored; whether it
feeds the backbone as an image is decided later, against the backbone's input
(`transfer.data.input_kind.input_kind`).

Spec grammar (``load(spec)``; the CLI's ``--data SPEC``)::

    folder:PATH | PATH                  image folder: PATH/LABEL/*.png or PATH/SPLIT/LABEL/*.png
    npz:FILE | FILE.npz                 arrays x (N×...), y (optionally class_names, x_test/y_test)
    tfds:NAME[:SPLIT]                   TensorFlow Datasets, prepared in data_dir (no download)
    digits[:CLASSES]                    scikit-learn's 8x8 digits; CLASSES like 5-9 or 0,2,4
    ...?per_class=N                     any of them: train keeps N examples per class

``load("digits:5-9?per_class=10")`` gives five classes "5".."9" relabelled 0..4, ten training
examples per class, a stratified validation split and the rest as the test split.
"""
import functools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

import tensorflow as tf

from transfer.data_specs import SCHEMES, source_of, split_options
from transfer.errors import TransferError

from transfer.datasets.preprocessing import Augmentation, Preprocessing, preprocess, sidecar_path
from transfer.datasets.split import plan
from transfer.datasets.source import Source

__all__ = ["DataSplits", "load", "SCHEMES", "Preprocessing", "Augmentation", "preprocess",
           "sidecar_path"]



@dataclass(frozen=True)
class DataSplits:
    """Unbatched, unshuffled (example, int32 label) streams plus what models and caches need.

    `example_shape`/`example_dtype` describe one example as stored (an npz's x.shape[1:]);
    `images` says the examples are pictures (decoded image files, a TFDS Image feature, digits),
    which can only feed a backbone that takes images.

    `validation` and `test` are None when the source has none and none was carved out.
    `sizes` counts examples per split (None where unknown, e.g. a mocked TFDS split).
    `identity` is a JSON-able description that changes whenever the examples would (files and
    their sizes and mtimes, content hash, TFDS version, split settings): a cache key.
    """

    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    test: Optional[tf.data.Dataset]
    class_names: list
    example_shape: tuple
    example_dtype: tf.DType
    sizes: dict
    identity: dict
    images: bool = False
    windows: dict = field(default_factory=dict)  # role -> (skip, take) -> the stream of those examples only,
    # decoded alone (a shard's work item in a pipeline), where the source can; else skip on the stream

    def window(self, role: str, skip: int = 0, take: int = -1) -> tf.data.Dataset | None:
        """Examples [skip, skip + take) of a split (take -1: to the end), as its stream would
        give them; where the source allows, the skipped examples are not even read."""
        if role in self.windows and (skip or take >= 0):
            return self.windows[role](skip, take)
        stream = getattr(self, role)
        return None if stream is None else stream.skip(skip).take(take)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def element_spec(self) -> tuple:
        return (tf.TensorSpec(self.example_shape, self.example_dtype), tf.TensorSpec((), tf.int32))


def load(spec: str, *, data_dir=None, validation_split: float = 0.2, per_class=None,
         seed: int = 0) -> DataSplits:
    """Open the data named by `spec` (see the module docstring) and split it.

    data_dir: TFDS's data directory (default: TFDS's own, ~/tensorflow_datasets).
    validation_split: share of each class held out for validation when the source has no
        validation split (0: none); stratified and seeded by `seed`.
    per_class: keep N training examples per class (also ``?per_class=N`` in the spec); the
        rest become the test split when the source has none.
    """
    body, options = split_options(spec)
    if "per_class" in options:
        if per_class is not None and per_class != options["per_class"]:
            raise TransferError(f"per_class={per_class} contradicts {spec!r}; give it once")
        per_class = options["per_class"]
    source = _open(body, data_dir)
    roles = plan(source, validation_split, per_class, seed)
    streams, sizes = {}, {}
    windows = {}
    for role, (part_name, indices) in roles.items():
        part = source.parts[part_name]
        streams[role] = part.stream(indices)
        sizes[role] = part.size if indices is None else len(indices)
        if part.sliceable:
            windows[role] = functools.partial(_window, part, np.arange(part.size) if indices is None else indices)
    if sizes["train"] == 0:
        raise TransferError(f"data {spec!r} has no training examples")
    identity = {**source.identity, "example_shape": list(source.example_shape),
                "example_dtype": source.example_dtype.name,
                "split": {"validation_split": validation_split, "per_class": per_class,
                          "seed": seed, "sizes": sizes}}
    return DataSplits(streams["train"], streams.get("validation"), streams.get("test"),
                      list(source.class_names), tuple(source.example_shape), source.example_dtype,
                      sizes, identity, source.images, windows)


def _window(part, indices: np.ndarray, skip: int, take: int) -> tf.data.Dataset:
    return part.stream(np.asarray(indices)[skip:None if take < 0 else skip + take])


def _open(spec: str, data_dir) -> Source:
    """Dispatch a spec (without options) to its source module."""
    scheme, rest = source_of(spec)
    return _LOADERS[scheme](rest, data_dir)


def _folder(path, data_dir):
    from transfer.datasets.folder import load_folder

    return load_folder(path)


def _npz(path, data_dir):
    from transfer.datasets.arrays import load_npz

    return load_npz(path)


def _tfds(name_split, data_dir):
    from transfer.datasets.tfds_source import load_tfds

    name, _, split = name_split.partition(":")
    return load_tfds(name, split or None, data_dir)


def _digits(classes, data_dir):
    from transfer.datasets.arrays import load_digits

    return load_digits(classes)


_LOADERS = {"folder": _folder, "npz": _npz, "tfds": _tfds, "digits": _digits}
