"""Image folders, ``root/LABEL/*.png`` or ``root/SPLIT/LABEL/*.png``, streamed from file paths.

SPLIT is train, validation (or val) and test; class names are the sorted label folder names of
train. Every image is decoded once up front, in parallel through tf.data, so that a corrupt file
is named in a message rather than failing halfway through an epoch, and so that the element
spec (size, channels) is known before the first batch. Unreadable files are skipped with a
warning; when none is readable, or a class is left empty, that is an error.
"""
import hashlib
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer.errors import TransferError, TransferWarning

from transfer.datasets.source import Source, indexed_part

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
_NAMED = 3  # how many file names a message quotes


def load_folder(root) -> Source:
    """Read a folder of class folders (optionally under split folders) as a `Source`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise TransferError(f"data directory {str(root)!r} {what}")
    trees = _split_folders(root) or {"train": root}
    class_names = _class_folders(trees["train"], root)
    listed = {role: _list_images(tree, class_names, root) for role, tree in trees.items()}
    paths = [path for files, _ in listed.values() for path in files]
    shapes = _decodable(paths)
    _check_readable(root, trees, class_names, listed, shapes)
    channels = 1 if {shape[2] for shape in shapes.values()} <= {1, 2} else 3
    sizes = {shape[:2] for shape in shapes.values()}
    image_shape = (*sizes.pop(), channels) if len(sizes) == 1 else (None, None, channels)

    def decode(path, label):
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        return tf.ensure_shape(image, image_shape), label

    parts = {}
    for role, (files, labels) in listed.items():
        keep = [i for i, path in enumerate(files) if path in shapes]
        names = np.array([str(files[i]) for i in keep])
        parts[role] = indexed_part(names, np.asarray(labels)[keep], decode)
    identity = {
        "source": "folder",
        "root": str(root.resolve()),
        "layout": "flat" if trees["train"] == root else "split",
        "files": _listing_digest(root, paths),
        "skipped": sorted(str(p.relative_to(root)) for p in paths if p not in shapes),
    }
    return Source(parts, class_names, image_shape, tf.uint8, identity, images=True)


def _subfolders(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_folders(root: Path):
    """{role: folder} when root holds train/ (and validation/ or val/, test/); else None."""
    names = {p.name: p for p in _subfolders(root)}
    if "train" not in names or not set(names) <= set(SPLIT_FOLDERS):
        return None
    if "val" in names and "validation" in names:
        raise TransferError(f"{root} has both val/ and validation/; keep one")
    return {SPLIT_FOLDERS[name]: path for name, path in names.items()}


def _class_folders(tree: Path, root: Path) -> list:
    names = [p.name for p in _subfolders(tree)]
    if not names:
        raise TransferError(
            f"no class folders in {str(tree)!r}; expected {root}/LABEL/*.png "
            f"or {root}/train/LABEL/*.png"
        )
    return names


def _list_images(tree: Path, class_names: list, root: Path):
    """(files, labels) of every image under tree/LABEL/, in sorted order."""
    extra = [p.name for p in _subfolders(tree) if p.name not in class_names]
    if extra:
        raise TransferError(
            f"class folder(s) {', '.join(extra)} in {str(tree)!r} are not in "
            f"{str(root / 'train')!r}; classes: {', '.join(class_names)}"
        )
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = tree / name
        if not folder.is_dir():
            continue
        images = sorted(p for p in folder.rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise TransferError(
                f"class folder {str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        files += images
        labels += [label] * len(images)
    return files, labels


def _decodable(paths: list) -> dict:
    """{path: (height, width, channels)} of the files that decode; a parallel pass via tf.data."""

    def shape(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        return index, tf.shape(image)

    dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).enumerate()
    dataset = dataset.map(shape, tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    return {paths[i]: tuple(int(d) for d in s) for i, s in dataset.as_numpy_iterator()}


def _check_readable(root: Path, trees: dict, class_names: list, listed: dict, shapes: dict):
    """Error when nothing or a whole class is unreadable; warn when some files are skipped."""
    paths = [path for files, _ in listed.values() for path in files]
    bad = [p for p in paths if p not in shapes]
    if not bad:
        return
    if len(bad) == len(paths):
        raise TransferError(f"none of the {len(paths)} image files under {str(root)!r} could be "
                            f"decoded (corrupt or not an image): {_names(bad, root)}")
    for role, (files, labels) in listed.items():
        for label in sorted(set(labels)):
            group = [p for p, of in zip(files, labels) if of == label]
            if all(p not in shapes for p in group):
                folder = trees[role] / class_names[label]
                raise TransferError(f"class folder {str(folder)!r} has no readable images: "
                                    f"{_names(group, root)}")
    warnings.warn(f"skipped {len(bad)} of {len(paths)} image files under {str(root)!r} that "
                  f"could not be decoded (corrupt or not an image): {_names(bad, root)}",
                  TransferWarning, stacklevel=2)


def _names(paths: list, root: Path) -> str:
    """The first few paths relative to root, and how many more."""
    named = ", ".join(str(p.relative_to(root)) for p in paths[:_NAMED])
    return named + (f" and {len(paths) - _NAMED} more" if len(paths) > _NAMED else "")


def _listing_digest(root: Path, paths: list) -> dict:
    """Count and SHA-256 of (relative path, size, mtime) lines: changes when any file changes."""
    lines = []
    for path in paths:
        stat = path.stat()
        lines.append(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n")
    return {"count": len(paths), "sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}
