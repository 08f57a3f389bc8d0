"""A sweep's trials trained together: which ones can share one Keras model, and one group's run.

On cached features each setting alone pays Keras' whole per-model cost for microseconds of
arithmetic, so trials whose heads train the same way become branches of one model
(`transfer.training.branches`): frozen features (no thaw), a Keras head whose loss is its
output's alone (no weight penalty, which per-branch early stopping would not see; no refit, a
second fit of its own), the same batch size and optimizer. Each branch reads its own source, a
cut's features shuffled with its trial's seed exactly as it would be alone, and its head is made
after the same `set_random_seed`, so it starts and sees its batches as alone. Thaws and the other
trials train one at a time (`trials.train_setting`).
"""
from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from transfer import heads as registry
from transfer.features.feature_splits import SHUFFLE_BYTES
from transfer.heads.protocol import traits_of
from transfer.sweep.grid import EVAL_BATCH, setting_key
from transfer.training.branches import branched_model, train_branches
from transfer.training.sources import adapt_on_features, adapt_sample
from transfer.sweep.trials import quiet_retracing

MAX_BRANCHES = 64  # a bigger group traces a bigger step for little gain


@dataclasses.dataclass(frozen=True, eq=False)
class Trial:
    """One run of a sweep: a setting with one seed (told apart by identity, as its setting is a dict)."""

    name: str  # in the sweep's files and logs, e.g. `003-seed1`
    setting: dict
    seed: int


def head_key(setting: dict) -> str:
    """What decides how a setting's head is built (its learning rate, epochs ... do not)."""
    return setting_key((setting["head"], setting["head_options"], setting.get("thaw"), setting.get("cut")))


def joins(setting: dict, head) -> bool:
    """Whether a setting's trials can be branches of one model (`head`: built on its features)."""
    traits = traits_of(head)
    return (traits.keras and not setting.get("thaw") and not (traits.refits and head.refit)
            and not head.losses)


def groups(trials: list, features, joined: set) -> list:
    """The trials in the groups they train in, in the order of each group's first trial: those
    whose `head_key` is in `joined` by batch size and optimizer, as many together as MAX_BRANCHES
    and the shuffle buffers allow (each source, a cut with a seed, takes one; together at most
    what one stream may hold), each other trial alone."""
    ordered, open_groups = [], {}
    for trial in trials:
        if head_key(trial.setting) not in joined:
            ordered.append([trial])
            continue
        key = (trial.setting["batch_size"], trial.setting["optimizer"])
        group = open_groups.get(key)
        if group is None or not _room_for(group, trial, features):
            group = open_groups[key] = []
            ordered.append(group)
        group.append(trial)
    return ordered


def _room_for(group: list, trial: Trial, features) -> bool:
    sources = _sources([*group, trial])
    return len(group) < MAX_BRANCHES and sum(_split(features, cut).shuffle_bytes() for cut, _ in sources) <= max(
        SHUFFLE_BYTES, _split(features, trial.setting.get("cut")).shuffle_bytes())


def train_together(features, trials: list, patience, logs: list) -> list:
    """Train a group's trials as one model: each trial's metrics as `train_setting` gives them
    (`seconds`: the group's training time shared evenly), its TensorBoard scalars in `logs`."""
    sources = _sources(trials)
    cuts = list(dict.fromkeys(cut for cut, _ in sources))
    splits = [_split(features, cut).kept_in_memory() for cut in cuts]
    heads = []
    for trial in trials:
        keras.utils.set_random_seed(trial.seed)  # as alone: Keras draws initializer seeds at construction
        kind = registry.kind_of(trial.setting["head"])
        heads.append(kind.build(num_classes=len(splits[0].class_names), **trial.setting["head_options"]))
    source_of = [sources.index((trial.setting.get("cut"), trial.seed)) for trial in trials]
    model = branched_model([splits[cuts.index(cut)].feature_shapes for cut, _ in sources], heads, source_of)
    started = time.perf_counter()
    with quiet_retracing():
        samples = [adapt_sample(split, EVAL_BATCH) for split in splits]  # read once for every head
        for head, trial in zip(heads, trials):
            cut = cuts.index(trial.setting.get("cut"))
            adapt_on_features(head, splits[cut], None, EVAL_BATCH, sample=samples[cut])
        training = _training(splits, cuts, sources, source_of, trials[0].setting["batch_size"])
        runs = train_branches(model, heads, training, _evaluation(splits, cuts, sources, len(trials), "validation"),
                              epochs=[t.setting["epochs"] for t in trials], lrs=[t.setting["lr"] for t in trials],
                              optimizer=trials[0].setting["optimizer"], patience=patience)
    seconds = (time.perf_counter() - started) / len(trials)
    val, test = (_accuracies(model, _evaluation(splits, cuts, sources, len(trials), role), len(trials))
                 for role in ("validation", "test"))
    for run, log in zip(runs, logs):
        log.epochs(run.history)
    return [{"val_accuracy": v, "test_accuracy": t, "epochs_run": run.epochs_run, "seconds": seconds}
            for v, t, run in zip(val, test, runs)]


def _sources(trials: list) -> list:
    """(cut, seed) of each distinct source, in trial order."""
    return list(dict.fromkeys((trial.setting.get("cut"), trial.seed) for trial in trials))


def _split(features, cut):
    return features[cut] if isinstance(features, dict) else features


def _training(splits: list, cuts: list, sources: list, source_of: list, batch_size: int) -> tf.data.Dataset:
    """Each source's batches as alone (its seed set first: a shuffle's seed is paired with the
    global one), zipped: (every source's features, each branch's labels)."""
    streams = []
    for cut, seed in sources:
        keras.utils.set_random_seed(seed)
        streams.append(splits[cuts.index(cut)].training(batch_size, seed))
    return _joined(streams, list(range(len(sources))), source_of)


def _evaluation(splits: list, cuts: list, sources: list, branches: int, role: str) -> tf.data.Dataset | None:
    """A split's batches of every cut, zipped and fed to each source of that cut."""
    streams = [split.evaluation(role, EVAL_BATCH) for split in splits]
    if any(stream is None for stream in streams):
        return None
    return _joined(streams, [cuts.index(cut) for cut, _ in sources], [0] * branches)


def _joined(streams: list, stream_of_source: list, labels_of_branch: list) -> tf.data.Dataset:
    def join(*pairs):
        inputs = [x for s in stream_of_source for x in _listed(pairs[s][0])]
        labels = tf.stack([pairs[s][1] for s in labels_of_branch], axis=1)
        return (inputs[0] if len(inputs) == 1 else tuple(inputs)), labels

    return tf.data.Dataset.zip(tuple(streams)).map(join).prefetch(tf.data.AUTOTUNE)


def _listed(features) -> list:
    return list(features) if isinstance(features, (tuple, list)) else [features]


def _accuracies(model, dataset, branches: int) -> list:
    """Each branch's accuracy over a split (None for each when there is no such split)."""
    if dataset is None:
        return [None] * branches
    correct, total = np.zeros(branches), 0
    for inputs, labels in dataset.as_numpy_iterator():
        outputs = np.asarray(model(list(inputs) if isinstance(inputs, tuple) else inputs, training=False))
        correct += np.sum(np.argmax(outputs, axis=-1) == labels, axis=0)
        total += len(labels)
    return [float(c / total) if total else None for c in correct]
