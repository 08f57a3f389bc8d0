"""In-memory arrays: NumPy ``.npz`` files and scikit-learn's digits (the built-in example).

An npz holds ``x`` (N examples of any shape: images N×H×W or N×H×W×C, waveforms N×samples×1,
spectrograms, token ids N×T, vectors N×D) and ``y`` (integer labels 0..K-1), optionally
``class_names`` (K strings) and held-out splits ``x_validation``/``y_validation`` and
``x_test``/``y_test``. It is read with ``allow_pickle=False``: an npz is data, never code.
Examples keep their shape; floats become float32, integers int32 (uint8 pixels stay uint8).
"""
import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer.errors import TransferError

from transfer.datasets.source import Source, indexed_part

_SPLIT_KEYS = {"train": ("x", "y"), "validation": ("x_validation", "y_validation"),
               "test": ("x_test", "y_test")}


def load_npz(path) -> Source:
    """Read an npz of images and labels as a `Source`, checking shapes and label range."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferError(f"npz file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        reason = " ".join(str(error).split())
        raise TransferError(f"cannot read npz file {str(path)!r} as plain arrays "
                            f"(transfer never unpickles): {reason}") from None
    where = f"npz file {str(path)!r}"
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise TransferError(
            f"{where} has no array {' or '.join(map(repr, missing))}; it needs 'x' (N examples: "
            f"images N×H×W×C, arrays N×...) and 'y' (integer labels); found: {', '.join(arrays) or 'nothing'}"
        )
    for x, y in _SPLIT_KEYS.values():
        if (x in arrays) != (y in arrays):
            present, absent = (x, y) if x in arrays else (y, x)
            raise TransferError(f"{where} has {present!r} but not its pair {absent!r}")
    splits = {role: (arrays[x], arrays[y]) for role, (x, y) in _SPLIT_KEYS.items() if x in arrays}
    names = arrays.get("class_names")
    if names is not None:
        names = [str(name) for name in np.asarray(names).reshape(-1)]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    identity = {"source": "npz", "path": str(path.resolve()), "sha256": digest}
    return array_source(splits, names, identity, where)


def load_digits(classes=None) -> Source:
    """scikit-learn's 8×8 digits (1797 images, bundled: no download) as a `Source`.

    Pixels are float32 in 0..16 (the data's own range, kept as is: the example backbone is
    trained on it). `classes` picks a subset such as "5-9" or "0,2,4"; labels are renumbered
    0..K-1 and the class names are the digits ("5".."9").
    """
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    kept = parse_classes(classes)
    mask = np.isin(data.target, kept)
    x = data.images[mask].astype(np.float32)[..., None]
    y = np.searchsorted(kept, data.target[mask])
    identity = {"source": "digits", "classes": kept}
    return array_source({"train": (x, y)}, [str(c) for c in kept], identity, "digits", images=True)


def parse_classes(text) -> list:
    """'5-9' → [5, 6, 7, 8, 9]; '0,2,4' → [0, 2, 4]; None or '' → all ten digits."""
    if not text:
        return list(range(10))
    chosen = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d)\s*(?:-\s*(\d)\s*)?", item)
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise TransferError(
                f"digits classes {text!r} are not valid; use digits 0..9 as ranges and lists, "
                "e.g. digits:5-9 or digits:0,2,4"
            )
        chosen.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return sorted(chosen)


def array_source(splits: dict, class_names, identity: dict, where: str, images: bool = False) -> Source:
    """Check {role: (x, y)} arrays and make a `Source`; class_names None → "0".."K-1"."""
    parts, shapes = {}, set()
    for role, (x, y) in splits.items():
        if x.ndim < 2:
            raise TransferError(f"{where}: examples of {role} have shape {x.shape}; expected N×... "
                                "(one row per example, e.g. N×H×W×C images or N×D vectors)")
        if len(x) == 0:
            raise TransferError(f"{where}: {role} has no examples (its x array is empty)")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TransferError(f"{where}: labels of {role} must be a 1-D integer array, "
                                f"got {y.dtype} with shape {y.shape}")
        if len(x) != len(y):
            raise TransferError(f"{where}: {role} has {len(x)} examples but {len(y)} labels")
        x = stored_dtype(x, f"{where}: examples of {role}")
        parts[role], shapes = (x, y), shapes | {(x.shape[1:], x.dtype)}
    if len(shapes) > 1:
        raise TransferError(f"{where}: splits differ in example shape or dtype: "
                            f"{sorted(map(str, shapes))}")
    if class_names is None:
        class_names = [str(i) for i in range(max(int(y.max()) for _, y in parts.values()) + 1)]
    for role, (x, y) in parts.items():
        bad = np.unique(y[(y < 0) | (y >= len(class_names))])
        if len(bad):
            raise TransferError(
                f"{where}: labels of {role} must be in 0..{len(class_names) - 1} "
                f"({len(class_names)} classes); found {', '.join(map(str, bad[:10]))}"
            )
        parts[role] = indexed_part(x, y)
    example_shape, dtype = shapes.pop()
    return Source(parts, class_names, tuple(example_shape), tf.as_dtype(dtype), identity, images)


def stored_dtype(x: np.ndarray, what: str) -> np.ndarray:
    """float32 for floats, int32 for integers (token ids, samples), uint8 pixels as they are."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(np.int32)
        if x.min() < info.min or x.max() > info.max:
            raise TransferError(f"{what} have values outside int32 ({x.min()}..{x.max()})")
        return x.astype(np.int32)
    raise TransferError(f"{what} have dtype {x.dtype}; expected numbers (integers or floats)")
