"""Seeded, stratified choice of which stored examples become train, validation and test.

Stratified so that every class keeps its share in each split even when data is small; seeded so
that the same seed gives the same split (a feature cache and a rerun must see the same examples).
Indices are returned sorted, so streams keep the stored order.
"""
import numpy as np

from transfer.errors import TransferError

from transfer.datasets.source import Source


def stratified_split(labels: np.ndarray, fraction: float, seed: int):
    """Split indices into (kept, held out) with about `fraction` of each class held out.

    A class with two or more examples keeps at least one and gives at least one; a class with a
    single example stays in the kept part (it cannot be in both).
    """
    rng = np.random.default_rng([seed, 0])
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < 2 or fraction == 0:
            continue
        count = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        held.extend(members[:count])
    held = np.sort(np.asarray(held, np.int64))
    return np.setdiff1d(np.arange(len(labels)), held), held


def per_class_split(labels: np.ndarray, per_class: int, seed: int, class_names: list):
    """Split indices into (`per_class` examples of each class, the rest), seeded."""
    rng = np.random.default_rng([seed, 1])
    chosen = []
    for label in range(len(class_names)):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise TransferError(
                f"per_class={per_class} but class {class_names[label]!r} has only "
                f"{len(members)} training example(s); use per_class <= {len(members)}"
            )
        chosen.extend(rng.choice(members, per_class, replace=False))
    chosen = np.sort(np.asarray(chosen, np.int64))
    return chosen, np.setdiff1d(np.arange(len(labels)), chosen)


def plan(source: Source, validation_split: float, per_class, seed: int) -> dict:
    """Map each role (train, validation, test) to (stored part, sorted indices or None = all).

    Validation comes from the source when it has one, else is carved from train. With
    `per_class`, train keeps that many examples per class and the rest become the test split
    (when the source has none; otherwise the rest is dropped).
    """
    if not 0 <= validation_split < 1:
        raise TransferError(f"validation_split={validation_split!r} must be in [0, 1)")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise TransferError(f"per_class={per_class!r} must be a positive integer")
    parts = source.parts
    roles = {"train": ("train", None)}
    train_labels = None
    if "validation" in parts:
        roles["validation"] = ("validation", None)
    elif validation_split > 0:
        train_labels = parts["train"].labels()
        kept, held = stratified_split(train_labels, validation_split, seed)
        roles["train"], roles["validation"] = ("train", kept), ("train", held)
    if "test" in parts:
        roles["test"] = ("test", None)
    if per_class is not None:
        train_labels = parts["train"].labels() if train_labels is None else train_labels
        pool = roles["train"][1]
        pool = np.arange(len(train_labels)) if pool is None else pool
        chosen, rest = per_class_split(train_labels[pool], per_class, seed, source.class_names)
        roles["train"] = ("train", pool[chosen])
        roles.setdefault("test", ("train", pool[rest]))
    return roles
