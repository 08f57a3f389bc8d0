"""Where a head's training examples come from: raw examples through the whole model (the backbone
runs every epoch), or features from the cache (it never runs; with a thaw, the frozen prefix's
outputs), and the sample a head's input standardization is adapted on."""
from __future__ import annotations

import keras

from transfer.heads.protocol import traits_of
from transfer.layers.model import build_classifier, head_model
from transfer.training.settings import TrainingSettings
from transfer.training.thaw_steps import thaw_step_scales
from transfer.features.spec import CacheSpec

ADAPT_EXAMPLES = 1024  # training examples a head's input standardization is adapted on (`adapt_head`)


def training_source(inputs, feature_layer, settings: TrainingSettings, cache: CacheSpec, progress: bool,
                    pool: str = "none"):
    """Where the head's examples come from: raw examples through the backbone, or the cache."""
    if cache.dir is None:
        return _UncachedTraining(inputs, feature_layer)
    if not settings.thawing:
        return _CachedTraining(inputs.cached_features(cache, progress=progress, pool=pool),
                               settings.batch_size, settings.seed)
    # the cache holds the frozen prefix's outputs, never pooled (`pool` is for frozen features): the
    # thawed suffix trains from them and needs them whole
    return _CachedTraining(inputs.cached_prefix(feature_layer, cache, progress=progress),
                           settings.batch_size, settings.seed, suffix=feature_layer.suffix())


def adapt_head(head, source) -> None:
    """Adapt a head's input standardization (`transfer.heads`) on what it will see at the start of
    training: the features of at most ADAPT_EXAMPLES training examples, spread over the split;
    with a thaw, the thawed layers' outputs before they train. Heads that do not adapt (their
    traits), or built with standardize=False: nothing to do."""
    if not (traits_of(head).adapts and head.standardize):
        return
    inputs = source.model(keras.layers.Identity())
    head.adapt(inputs.predict_on_batch(x) for x, _ in source.adapt_batches())


def measured_thaw_steps(source, feature_layer, lr: float, batch_size: int = 32) -> dict[int, float]:
    """Each thawed layer's learning-rate scale (`transfer.training.thaw_steps`), measured on the
    first batch of the sample the head adapts on, through what the head will see; `source` may
    also be `FeatureSplits` of a thaw's prefix outputs with `feature_layer`'s suffix (a sweep:
    batches of the setting's `batch_size`, so that its best setting retrained by `fit` measures
    the same batch and trains the same)."""
    if not hasattr(source, "adapt_batches"):
        source = _CachedTraining(source, batch_size, 0, feature_layer.suffix())
    examples, _ = next(iter(source.adapt_batches()))
    return thaw_step_scales(source.model(keras.layers.Identity()), examples, feature_layer, lr)


def adapt_on_features(head, features, suffix=None, batch_size: int = 256, sample=None) -> None:
    """`adapt_head` for a head trained on `FeatureSplits` (a sweep), through `suffix` for a thaw;
    `sample`: its batches read already (`adapt_sample`), for many heads on the same features."""
    if sample is None:
        adapt_head(head, _CachedTraining(features, batch_size, 0, suffix))
    elif traits_of(head).adapts and head.standardize:
        head.adapt(iter(sample))


def adapt_sample(features, batch_size: int = 256) -> list | None:
    """The batches `adapt_on_features` adapts a head on without a thaw, read once (None for
    features of several tensors: each head reads them itself)."""
    if len(features.feature_shapes) != 1:
        return None
    return [x for x, _ in _CachedTraining(features, batch_size, 0).adapt_batches().as_numpy_iterator()]


def spread_sample(stream, count: int, size: int | None = None):
    """At most `count` examples of an unshuffled stream, every k-th over all of it when its size is
    known (`size`, else the stream's cardinality), so a split stored class by class gives every class."""
    size = size or int(stream.cardinality())  # < 0: unknown
    every = -(-size // count) if size > 0 else 1
    return (stream.shard(every, 0) if every > 1 else stream).take(count)


class _UncachedTraining:
    """The head trains inside the whole model, on raw examples: the backbone runs every epoch."""

    def __init__(self, inputs, feature_layer):
        self.inputs, self.feature_layer = inputs, feature_layer
        self.num_classes = inputs.splits.num_classes

    def model(self, head):
        return build_classifier(self.feature_layer, head, self.inputs.kind)

    def training(self):
        return self.inputs.batches.training()

    def split(self, role):
        return self.inputs.batches.evaluation(role)

    def adapt_batches(self):
        sample = spread_sample(self.inputs.splits.train, ADAPT_EXAMPLES, self.inputs.splits.sizes.get("train"))
        return self.inputs.kind.batchable(sample, None).batch(self.inputs.batches.batch_size)


class _CachedTraining:
    """The head trains on cached features: the backbone never runs. With `suffix` (a thaw), the
    cache holds the frozen prefix's outputs and the thawed suffix trains with the head."""

    def __init__(self, features, batch_size: int, seed: int, suffix=None):
        self.features, self.batch_size, self.seed, self.suffix = features, batch_size, seed, suffix
        self.num_classes = len(features.class_names)

    def model(self, head):
        return head_model(self.features.feature_shapes, head, self.suffix)

    def training(self):
        return self.features.training(self.batch_size, self.seed)

    def split(self, role):
        return self.features.evaluation(role, self.batch_size)

    def adapt_batches(self):
        return spread_sample(self.features.train, ADAPT_EXAMPLES).batch(self.batch_size)
