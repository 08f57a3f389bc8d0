"""From a backbone and a data spec to what training and extraction both need.

`open_inputs` loads the backbone and the data, decides once how the examples reach the backbone
(`input_kind`: as images, or as arrays as they are), and builds the tf.data pipelines
(`Batches`): one place, so that `fit`, `extract` and `sweep` see exactly the same examples in
the same order.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer import datasets
from transfer.graph.backbone import Backbone
from transfer.graph.spec import FIELDS as BACKBONE_FIELDS, BackboneSpec
from transfer.datasets.preprocessing import Augmentation, Preprocessing
from transfer.errors import TransferError
from transfer.data.input_kind import ArrayInput, ImageInput, InputKind
from transfer.data.spec import FIELDS as DATA_FIELDS, DataSpec
from transfer.features.cache import FeatureCache
from transfer.features.extraction import Extraction
from transfer.layers.feature_layer import FeatureLayer

SHUFFLE_BYTES = 2**30
_TRACED_PREPARE = {}  # an input kind's settings (JSON) -> its `prepare` as a tf.function


@dataclasses.dataclass
class Inputs:
    backbone: Backbone
    splits: datasets.DataSplits
    kind: InputKind  # how raw examples reach the backbone: images (preprocessed) or arrays as they are
    batches: "Batches"
    engine: str = "tf"  # what runs the backbone when features are extracted (`transfer.features.engines`)
    data_spec: DataSpec | None = None  # the data's spec when they came from a spec string: what a
    # pipeline's worker loads again (`Extraction.description`)
    chosen_engine: object = dataclasses.field(default=None, repr=False, compare=False)  # once chosen
    _prepare: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def feature_layer(self) -> FeatureLayer:
        return FeatureLayer(self.backbone, name="features")

    def extract(self, cache_dir=None, dtype: str = "float32", shard_size=None, progress: bool = True,
                pool: str | None = None, runner=None) -> dict:
        """Every split's cache entries, one per cut (`{role: [Entry, ...]}`), extracting what is
        not there yet in one pass (`transfer.features.cache`, `transfer.features.extraction`). `runner`:
        where the pass runs: None (this process), or a runner made by `transfer.features.runners.get_runner`
        (`get_runner("beam")`: on Apache Beam), which this layer only calls."""
        if runner is not None and not callable(getattr(runner, "extract", None)):
            raise TransferError(f"runner {runner!r}: give a runner made by transfer.features.runners.get_runner, "
                                "e.g. get_runner('beam')")
        cache = FeatureCache(cache_dir, shard_size=shard_size)
        extraction = Extraction(self, cache.root if cache.local else None, pool)  # a converted engine stays local
        if runner is None:
            return cache.extract(extraction, dtype=dtype, progress=progress)
        return runner.extract(cache, extraction, dtype=dtype, progress=progress)

    def cached_features(self, cache_dir=None, dtype: str = "float32", shard_size=None, progress: bool = True,
                        pool: str | None = None, runner=None) -> FeatureSplits:
        """Every split's features from the feature cache, extracting what is not there yet; with
        several cuts, each example holds one tensor per cut (in cut order)."""
        entries = self.extract(cache_dir, dtype, shard_size, progress, pool, runner)
        return FeatureSplits.of_entries(entries, self.splits.class_names)

    def cached_features_by_cut(self, cache_dir=None, dtype: str = "float32", progress: bool = True,
                               pool: str | None = None, joined: str | None = None,
                               runner=None) -> dict[str, FeatureSplits]:
        """Each cut's features on their own (a sweep over cuts), all extracted in one pass; with
        `joined`, also every cut's together under that key (a head that reads several cuts)."""
        entries = self.extract(cache_dir, dtype, progress=progress, pool=pool, runner=runner)
        by_cut = {cut.spec: FeatureSplits.of_entries({role: [listed[index]] for role, listed in entries.items()},
                                                     self.splits.class_names)
                  for index, cut in enumerate(self.backbone.cuts)}
        if joined is not None:
            by_cut[joined] = FeatureSplits.of_entries(entries, self.splits.class_names)
        return by_cut

    def cached_prefix(self, thawed, cache_dir=None, dtype: str = "float32", progress: bool = True,
                      runner=None) -> FeatureSplits:
        """The outputs of a thaw's frozen prefix (`ThawedFeatureLayer`) from the feature cache:
        what its thawed suffix trains on."""
        prefix = dataclasses.replace(self, backbone=thawed.prefix_backbone, chosen_engine=None)  # its own engine
        return prefix.cached_features(cache_dir, dtype, progress=progress, runner=runner)

    def input_range(self, batches: int = 64) -> list[float]:
        """[min, max] of the raw training examples (up to `batches` batches, before scaling): what
        a run records so that predict/evaluate can say when inputs are on another scale."""
        low, high = np.inf, -np.inf
        for examples, _ in self.batches.evaluation("train").take(batches):
            values = np.asarray(examples, np.float64)
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        return [low, high]

    def extraction_engine(self, cache_dir=None):
        """The engine that runs the backbone for `feature_batch`, chosen once (`transfer.features.engines`;
        ONNX Runtime is checked against TensorFlow, and timed for `auto`, on the first batch)."""
        if self.chosen_engine is None:
            from transfer.features.engines import choose_engine

            first = self.batches.evaluation("train", take=self.batches.batch_size)
            sample = next(iter(first))[0] if self.engine != "tf" else None
            self.chosen_engine = choose_engine(self.backbone, self.engine, self.prepared(sample) if sample is not None
                                         else None, cache_dir)
        return self.chosen_engine

    def feature_batch(self, examples):
        """Features of one batch of raw examples (a dict keyed by cut spec when several cuts): what
        extraction runs, and what the Keras model of the same FeatureLayer computes, bit for bit
        except where the scale feeds a conv directly (grappler folds it into the weights: ~2 ulp).

        The preprocessing runs as a small tf.function, then the backbone's pruned function is
        called: no Keras model is built and nothing is traced over the whole graph, so the graph
        is optimised only on the pruned function's first call, once per Backbone, as for the raw
        pruned function. The preprocessing is a graph, not eager ops, because grappler rewrites
        it as in the Keras model (x / 255 becomes x * (1 / 255): not the same last bit).
        """
        return (self.chosen_engine or self.backbone)(self.prepared(examples))

    def prepared(self, examples):
        """A batch of raw examples as the backbone takes them (resized, scaled, cast); traced once
        per input setting."""
        if self._prepare is None:  # one per input setting: every FeatureExtractor fold shares it (no retracing)
            key = json.dumps(self.kind.to_config(), sort_keys=True)
            if key not in _TRACED_PREPARE:
                _TRACED_PREPARE[key] = tf.function(self.kind.prepare, reduce_retracing=True)
            self._prepare = _TRACED_PREPARE[key]
        return self._prepare(examples)


@dataclasses.dataclass
class FeatureSplits:
    """Features already extracted by a backbone (the cache's, or in memory): what cached training
    and sweeps train heads on."""

    train: tf.data.Dataset  # unbatched (features, int32 label) pairs
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    feature_shapes: list  # one example's shape per tensor, e.g. [(4, 4, 32)]; several: one per cut, or
    class_names: list     # a thawed suffix's inputs (each example is then a tuple of tensors)

    @classmethod
    def of_entries(cls, entries: dict, class_names: list) -> FeatureSplits:
        """`{role: [Entry, ...]}` (one entry per tensor, `FeatureCache.extract`) as streamed splits."""
        streams = {role: _zipped([entry.dataset() for entry in listed]) for role, listed in entries.items()}
        shapes = [shape for entry in entries["train"] for shape in entry.feature_shapes]
        return cls(streams["train"], streams.get("validation"), streams.get("test"), shapes, class_names)

    def training(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Shuffled batches; the shuffle buffer holds at most ~1 GiB of features."""
        example_bytes = sum(4 * int(np.prod([size or 1 for size in shape])) for shape in self.feature_shapes)
        buffer = max(1, min(10_000, SHUFFLE_BYTES // example_bytes))
        return self.train.shuffle(buffer, seed=seed).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def evaluation(self, role: str, batch_size: int = 256) -> tf.data.Dataset | None:
        stream = getattr(self, role)
        return None if stream is None else stream.batch(batch_size).prefetch(tf.data.AUTOTUNE)



def _zipped(streams: list) -> tf.data.Dataset:
    """(features, label) streams of the same examples as one stream of ((features, ...), label)."""
    if len(streams) == 1:
        return streams[0]
    return tf.data.Dataset.zip(tuple(streams)).map(lambda *pairs: (tuple(f for f, _ in pairs), pairs[0][1]))


def open_inputs(backbone, data, *, batch_size: int = 32, augment: bool = False, crop_padding: int = 0,
                engine: str = "tf", **options) -> Inputs:
    """Load what a command needs; every user mistake here is one TransferError line.

    `backbone`: a `Backbone`, a `BackboneSpec` or a path (`example:NAME`); `data`: a `DataSpec`,
    a data spec string or `DataSplits`. `options`: the fields of either spec given as keywords
    (cut, signature, inputs, feeds, allow_ops, max_memory; data_dir, validation_split, per_class,
    seed, preprocessing, scale), applied to it. `engine`: what runs the backbone when features
    are extracted (`transfer.features.engines`)."""
    from transfer.features.engines import check_engine

    check_engine(engine)
    backbone, data = specs_of(backbone, data, options, owner="open_inputs")
    if not isinstance(backbone, Backbone):
        backbone = backbone.load()
    splits = data.load()
    if splits.num_classes < 2:
        raise TransferError(f"data has {splits.num_classes} class(es) ({', '.join(splits.class_names)}); "
                            "a classifier needs at least 2")
    where = data.data if data.named else "the data"
    kind = input_kind(backbone, splits, data.preprocessing, data.scale, where)
    seed = data.seed
    augmentation = Augmentation(flip=augment, crop_padding=crop_padding, seed=seed) if augment or crop_padding else None
    if augmentation is not None and not kind.images:
        kind.refuse("augmentation (--augment, --crop-padding)")
    return Inputs(backbone, splits, kind, Batches(splits, kind, batch_size, seed, augmentation), engine,
                  data_spec=data if data.named else None)


def specs_of(backbone, data, options: dict, owner: str) -> tuple:
    """(`backbone` as a Backbone or BackboneSpec, `data` as a DataSpec), the keyword `options` of
    either spec applied; an unknown keyword is one line naming the valid ones. Options of a
    backbone's spec are ignored when `backbone` is a loaded `Backbone` already."""
    from transfer.errors import check_keywords

    check_keywords(owner, options, (*BACKBONE_FIELDS, *DATA_FIELDS))
    if not isinstance(backbone, Backbone):
        backbone = BackboneSpec.of(backbone, **{k: v for k, v in options.items() if k in BACKBONE_FIELDS})
    data = DataSpec.of(data, **{k: v for k, v in options.items() if k in DATA_FIELDS})
    return backbone, data


def input_kind(backbone: Backbone, splits, preprocessing=None, scale=None, where: str = "the data") -> InputKind:
    """Images or arrays, decided once (README "Non-image inputs").

    Images: the data are pictures (image files, a TFDS Image feature, digits), or the backbone
    takes images (rank 4 with 1 or 3 channels, float or uint8) and each example looks like one
    ((height, width) or (height, width, channels)); they are resized, channel-matched and scaled,
    so data of exactly the input's shape pass unchanged. Anything else passes as it is, after a
    check of its shape and dtype against the input's.
    """
    (spec,) = backbone.input_specs
    looks_like_image = len(splits.example_shape) == 2 or (
        len(splits.example_shape) == 3 and splits.example_shape[-1] in (1, 2, 3, 4))
    if splits.images or (takes_images(spec) and looks_like_image):
        prep = resolve_preprocessing(backbone, preprocessing, scale)
        kind = ImageInput(prep, model_input_shape(splits, prep))
    else:
        kind = ArrayInput.of(spec, splits.example_shape)
        if preprocessing is not None:
            kind.refuse("preprocessing settings (--preprocessing)")
        if scale not in (None, "none"):
            kind.refuse(f"--scale {scale!r}")
    try:
        kind.check(splits.example_shape, splits.example_dtype, where)
    except TransferError as error:
        hint = backbone.image_input_hint()  # a JPEG string, a scalar, a batch of 1: where to feed instead
        raise TransferError(f"{error}; {hint}" if hint else str(error)) from None
    return kind


def takes_images(spec: tf.TensorSpec) -> bool:
    """A batch of images: (batch, height, width, 1 or 3 channels), float or uint8 pixels."""
    return (spec.shape.rank == 4 and spec.shape[-1] in (1, 3, None)
            and (spec.dtype.is_floating or spec.dtype == tf.uint8))


def resolve_preprocessing(backbone: Backbone, preprocessing=None, scale: str | None = None) -> Preprocessing:
    """Explicit settings, else the JSON beside the backbone, else what the graph's input says."""
    if isinstance(preprocessing, (str, Path)):
        preprocessing = Preprocessing.from_json(preprocessing)
    elif isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if preprocessing is None and backbone.path.exists():
        preprocessing = Preprocessing.beside(backbone.path)
    if preprocessing is None:
        (spec,) = backbone.input_specs
        hint = backbone.image_input_hint()  # a JPEG string, a scalar, a batch of 1: where to feed instead
        if spec.shape.rank != 4 or hint:
            raise TransferError(f"fit needs a backbone that takes images (batch, height, width, channels); "
                                f"its input {spec.name!r} has shape {spec.shape}" + (f"; {hint}" if hint else ""))
        preprocessing = Preprocessing.for_input(spec.shape.as_list(), "uint8" if spec.dtype == tf.uint8 else "float32")
    if scale is not None:
        preprocessing = dataclasses.replace(preprocessing, scale=scale)
    return preprocessing


def model_input_shape(splits, prep: Preprocessing) -> tuple:
    """The data's image shape when it already has the backbone's size; else any size is accepted."""
    height, width, *channels = splits.example_shape
    channels = channels[0] if channels else 1  # gray (height, width) gets a channel axis
    if prep.size is None or (height, width) == tuple(prep.size):
        return (height, width, channels)
    return (None, None, channels)



class Batches:
    """The tf.data pipelines: examples made batchable as `kind` says (images resized to the
    backbone's size, float32; arrays cast to the input's dtype)."""

    def __init__(self, splits, kind: InputKind, batch_size: int, seed: int, augmentation):
        self.splits, self.batch_size, self.seed, self.augmentation = splits, batch_size, seed, augmentation
        self.kind = kind

    def training(self) -> tf.data.Dataset:
        size = self.splits.sizes.get("train") or 10_000
        stream = self.splits.train.shuffle(min(size, 10_000), seed=self.seed, reshuffle_each_iteration=True)
        return self._batched(stream, self.augmentation)

    def evaluation(self, role: str, skip: int = 0, take: int = -1, batch_size: int | None = None):
        """Unshuffled batches of one split, optionally of examples [skip, skip + take) only
        (where the source allows, the others are not read: a pipeline's shard), of this
        pipeline's batch size or `batch_size`."""
        stream = self.splits.window(role, skip, take)
        return None if stream is None else self._batched(stream, None, batch_size)

    def _batched(self, stream, augmentation, batch_size: int | None = None) -> tf.data.Dataset:
        batched = self.kind.batchable(stream, augmentation).batch(batch_size or self.batch_size)
        return batched.prefetch(tf.data.AUTOTUNE)


def predict_batches(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs and labels of a batched (example, label) dataset, in one pass."""
    predict, outputs, labels = _batch_predictor(model), [], []
    for examples, y in dataset:
        outputs.append(np.asarray(predict(examples)))
        labels.append(y.numpy())
    if not outputs:
        return np.zeros((0,)), np.zeros((0,), "int32")
    return np.concatenate(outputs), np.concatenate(labels)


def _batch_predictor(model):
    """`model.predict_on_batch`; for a model made under a strategy with several replicas, its
    call traced once instead: there Keras 3.15's `predict_on_batch` runs the whole batch on every
    replica and returns the outputs once per replica (and fails across workers)."""
    if model.distribute_strategy.num_replicas_in_sync == 1:
        return model.predict_on_batch
    return tf.function(lambda examples: model(examples, training=False), reduce_retracing=True)


def open_extraction(description: dict) -> Extraction:
    """The extraction `Extraction.description` describes, made again in another process (a
    pipeline's worker): its backbone loaded and checked, its data opened from their spec."""
    inputs = open_inputs(BackboneSpec.from_dict(description["backbone"]), DataSpec.from_dict(description["data"]),
                         batch_size=description["batch_size"], engine=description["engine"])
    return Extraction(inputs, description["engine_dir"], description["pool"])
