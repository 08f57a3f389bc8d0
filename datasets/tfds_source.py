"""TensorFlow Datasets by name, read from a prepared data_dir; this never downloads.

Preparing a TFDS dataset needs a network (and may take hours), so it is a step the user runs on
purpose; an unprepared dataset is a one-line error that says how to prepare it. The dataset's
own validation and test splits are used when it has them. The example is the dataset's
supervised input (an image, audio, a tensor of fixed rank), the label a class label.
"""
import difflib
import functools

import numpy as np
import tensorflow as tf

from transfer.errors import TransferError

from transfer.datasets.source import Part, Source


def _tfds():
    """tensorflow-datasets is an extra (~230 MB with pyarrow): only `tfds:` data needs it."""
    try:
        import tensorflow_datasets
    except ImportError:
        raise TransferError("tfds: data needs tensorflow-datasets; install it: pip install 'transfer[tfds]'") from None
    return tensorflow_datasets


def load_tfds(name: str, split=None, data_dir=None) -> Source:
    """Open TFDS dataset `name` (optionally "name/config"); `split` replaces "train"."""
    tfds = _tfds()

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(name, known, n=3) or known[:3]
        raise TransferError(f"unknown TFDS dataset {name!r}; closest: {', '.join(close)} "
                            "(tfds.list_builders() lists all)") from None
    except ValueError:  # a malformed name
        raise TransferError(f"{name!r} is not a TFDS dataset name; "
                            "use NAME or NAME/CONFIG, e.g. tfds:mnist") from None
    features = builder.info.features
    input_key, label_key = builder.info.supervised_keys or ("image", "label")
    example, label = (features[key] if key in features else None for key in (input_key, label_key))
    shape = getattr(example, "shape", None)
    if shape is None or not len(shape) or not hasattr(label, "names"):
        raise TransferError(f"TFDS dataset {name!r} is not a classification dataset: it needs an input "
                            f"(image, audio or tensor, one per example) and a class label; "
                            f"features: {', '.join(features)}")
    images = isinstance(example, tfds.features.Image)
    stored = list(builder.info.splits)  # empty when unknown (not prepared, or mocked in tests)
    roles = {"train": split or "train"}
    roles.update({role: role for role in ("validation", "test")
                  if role in stored and role != roles["train"]})
    parts = {role: _part(builder, name, stored_split, input_key if images else None)
             for role, stored_split in roles.items()}
    identity = {"source": "tfds", "name": name, "version": str(builder.info.version),
                "splits": roles}
    return Source(parts, list(label.names), tuple(shape), tf.as_dtype(example.tf_dtype), identity, images)


def _part(builder, name: str, split: str, image_key) -> Part:
    """A TFDS split; the labels come from one pass that skips image decoding (`image_key`)."""
    tfds = _tfds()

    @functools.cache
    def labels():
        skip = {image_key: tfds.decode.SkipDecoding()} if image_key else None
        batches = _read(builder, name, split, decoders=skip).map(lambda x, y: y).batch(65536)
        return np.concatenate([np.zeros(0, np.int64), *batches.as_numpy_iterator()])

    def stream(indices=None):
        dataset = _read(builder, name, split)
        if indices is not None:
            mask = np.zeros(len(labels()), bool)
            mask[indices] = True
            keep = tf.constant(mask)
            dataset = dataset.enumerate().filter(lambda i, pair: keep[i]).map(lambda i, pair: pair)
        return dataset.map(lambda x, y: (x, tf.cast(y, tf.int32)))

    try:
        size = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        size = None
    return Part(labels=labels, stream=stream, size=size)


def _read(builder, name: str, split: str, **options) -> tf.data.Dataset:
    """`as_dataset` in stored order, with its failures turned into one-line errors."""
    try:
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False, **options)
    except AssertionError:  # tfds' way of saying "not prepared"
        root = builder.data_dir_root
        raise TransferError(
            f"TFDS dataset {name!r} is not prepared in {str(root)!r} and transfer does not "
            f"download; on a machine with network run `tfds build {name} --data_dir {root}` "
            f"(or python -m tensorflow_datasets.scripts.download_and_prepare "
            f"--datasets={name} --data_dir={root}) and copy that folder here"
        ) from None
    except ValueError as error:  # unknown split name or bad slice
        splits = ", ".join(builder.info.splits) or "unknown"
        raise TransferError(f"TFDS dataset {name!r} has no split {split!r} "
                            f"({' '.join(str(error).split())}); splits: {splits}") from None
