"""From a backbone and a data spec to what training and extraction both need.

`open_inputs` loads the backbone and the data, decides once how the examples reach the backbone
(`transfer.data.input_kind`: as images, or as arrays as they are), and builds the tf.data
pipelines (`transfer.data.batches.Batches`): one place, so that `fit`, `extract` and `sweep` see
exactly the same examples in the same order. `Inputs` then extracts their features into the cache
(`FeatureSplits`, `transfer.features.feature_splits`).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow as tf

from transfer import datasets
from transfer.graph.backbone import Backbone
from transfer.graph.spec import FIELDS as BACKBONE_FIELDS, BackboneSpec
from transfer.datasets.preprocessing import Augmentation
from transfer.detail import detail
from transfer.errors import TransferError, check_keywords
from transfer.data.batches import Batches
from transfer.data.input_kind import InputKind, input_kind
from transfer.data.spec import FIELDS as DATA_FIELDS, DataSpec
from transfer.features.cache import FeatureCache
from transfer.features.calibration import CALIBRATION, check_size
from transfer.features.extraction import Extraction
from transfer.features.feature_splits import FeatureSplits
from transfer.features.spec import CacheSpec
from transfer.layers.feature_layer import FeatureLayer
from transfer.text import printable

_TRACED_PREPARE = {}  # an input kind's settings (JSON) -> its `prepare` as a tf.function


@dataclasses.dataclass
class Inputs:
    backbone: Backbone
    splits: datasets.DataSplits
    kind: InputKind  # how raw examples reach the backbone: images (preprocessed) or arrays as they are
    batches: "Batches"
    engine: str = "tf"  # what runs the backbone when features are extracted (`transfer.features.engines`)
    precision: str = "fp32"  # int8: a quantized model runs it, calibrated on training examples
    calibration_size: int = CALIBRATION  # int8: how many (`transfer.features.calibration`)
    data_spec: DataSpec | None = None  # the data's spec when they came from a spec string: what a
    # pipeline's worker loads again (`Extraction.description`)
    chosen_engine: object = dataclasses.field(default=None, repr=False, compare=False)  # once chosen
    _prepare: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def feature_layer(self) -> FeatureLayer:
        return FeatureLayer(self.backbone, name="features")

    def extract(self, cache: CacheSpec | str | None = None, *, shard_size=None, progress: bool = True,
                **options) -> dict:
        """Every split's cache entries, one per cut (`{role: [Entry, ...]}`), extracting what is
        not there yet in one pass (`transfer.features.cache`, `transfer.features.extraction`).
        `cache`: a `CacheSpec` or the cache's directory; `options`: CacheSpec fields to change
        (dtype, pool, runner: where the pass runs, this process or e.g. Apache Beam; a runner
        made by `transfer.features.runners.get_runner`, which this layer only calls)."""
        cache = CacheSpec.of(cache, **options)
        store = FeatureCache(cache.dir, shard_size=shard_size)
        extraction = Extraction(self, store.root if store.local else None, cache.pool)  # a converted engine stays local
        if cache.runner_name == "local":
            return store.used(store.extract(extraction, dtype=cache.dtype, progress=progress))
        if isinstance(cache.runner, str):  # a name: the runner's options are the caller's to give
            raise TransferError(f"runner {cache.runner!r}: give a runner made by "
                                "transfer.features.runners.get_runner, e.g. get_runner('beam')")
        return store.used(cache.runner.extract(store, extraction, dtype=cache.dtype, progress=progress))

    def cached_features(self, cache: CacheSpec | str | None = None, *, shard_size=None, progress: bool = True,
                        **options) -> FeatureSplits:
        """Every split's features from the feature cache, extracting what is not there yet; with
        several cuts, each example holds one tensor per cut (in cut order)."""
        entries = self.extract(cache, shard_size=shard_size, progress=progress, **options)
        return FeatureSplits.of_entries(entries, self.splits.class_names)

    def cached_features_by_cut(self, cache: CacheSpec | str | None = None, *, progress: bool = True,
                               joined: str | None = None, **options) -> dict[str, FeatureSplits]:
        """Each cut's features on their own (a sweep over cuts), all extracted in one pass; with
        `joined`, also every cut's together under that key (a head that reads several cuts)."""
        entries = self.extract(cache, progress=progress, **options)
        by_cut = {cut.spec: FeatureSplits.of_entries({role: [listed[index]] for role, listed in entries.items()},
                                                     self.splits.class_names)
                  for index, cut in enumerate(self.backbone.cuts)}
        if joined is not None:
            by_cut[joined] = FeatureSplits.of_entries(entries, self.splits.class_names)
        return by_cut

    def cached_prefix(self, thawed, cache: CacheSpec | str | None = None, *, progress: bool = True,
                      **options) -> FeatureSplits:
        """The outputs of a thaw's frozen prefix (`ThawedFeatureLayer`) from the feature cache:
        what its thawed suffix trains on (as they are: a prefix's outputs are never pooled)."""
        prefix = dataclasses.replace(self, backbone=thawed.prefix_backbone, chosen_engine=None)  # its own engine
        return prefix.cached_features(CacheSpec.of(cache, **{**options, "pool": None}), progress=progress)

    def announce(self, data: DataSpec, progress: bool = True) -> None:
        """Say what was found before the slow work (`fit`, `sweep`), when `progress`."""
        if progress:
            print("\n".join(self.describe(data.data if data.named else "arrays")), flush=True)
        for cut, (key, spec) in zip(self.backbone.cuts, self.backbone.feature_specs.items()):
            detail(f"cut {key}: tensor {cut.name}, shape {tuple(spec.shape[1:])} {spec.dtype.name}")

    def describe(self, where: str) -> list[str]:
        """What was found, one line each: the data's classes and splits, the backbone and its
        cuts' shapes (names from files: `printable`)."""
        splits = self.splits
        sizes = ", ".join(f"{splits.sizes[role]} {role}" for role in ("train", "validation", "test")
                          if splits.sizes.get(role))
        shapes = [f"{key} {tuple(spec.shape[1:])} {spec.dtype.name}"
                  for key, spec in self.backbone.feature_specs.items()]
        cuts = "; ".join(shapes) if len(shapes) <= 3 else f"{len(shapes)} cuts, from {shapes[0]} to {shapes[-1]}"
        return [printable(f"data: {where}: {splits.num_classes} classes; {sizes} examples"),
                printable(f"backbone: {self.backbone.loaded.source}, cut at {cuts}")]

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
        a converted engine is checked against TensorFlow, and timed for `auto`, on the first batch; an
        INT8 one is calibrated and checked on training examples, `transfer.features.calibration`)."""
        if self.chosen_engine is None:
            from transfer.features.calibration import Calibration
            from transfer.features.engines import choose_engine

            first = self.batches.evaluation("train", take=self.batches.batch_size)
            sample = next(iter(first))[0] if self.engine != "tf" else None
            calibration = Calibration(self, self.calibration_size) if self.precision == "int8" else None
            self.chosen_engine = choose_engine(self.backbone, self.engine, self.prepared(sample) if sample is not None
                                               else None, cache_dir, self.precision, calibration)
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


def open_inputs(backbone, data, *, batch_size: int = 32, augment: bool = False, crop_padding: int = 0,
                engine: str = "tf", precision: str = "fp32", calibration_size: int = CALIBRATION, **options) -> Inputs:
    """Load what a command needs; every user mistake here is one TransferError line.

    `backbone`: a `Backbone`, a `BackboneSpec` or a path (`example:NAME`); `data`: a `DataSpec`,
    a data spec string or `DataSplits`. `options`: the fields of either spec given as keywords
    (cut, signature, inputs, feeds, allow_ops, max_memory; data_dir, validation_split, per_class,
    seed, preprocessing, scale), applied to it. `engine`, `precision`: what runs the backbone when
    features are extracted, in what arithmetic (`transfer.features.engines`); `calibration_size`:
    how many training examples an INT8 model is calibrated on."""
    from transfer.features.engines import check_engine

    check_engine(engine, precision)
    check_size(calibration_size)
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
    return Inputs(backbone, splits, kind, Batches(splits, kind, batch_size, seed, augmentation), engine, precision,
                  calibration_size,
                  data_spec=data if data.named else None)


def specs_of(backbone, data, options: dict, owner: str) -> tuple:
    """(`backbone` as a Backbone or BackboneSpec, `data` as a DataSpec), the keyword `options` of
    either spec applied; an unknown keyword is one line naming the valid ones. Options of a
    backbone's spec are ignored when `backbone` is a loaded `Backbone` already."""
    check_keywords(owner, options, (*BACKBONE_FIELDS, *DATA_FIELDS))
    if not isinstance(backbone, Backbone):
        backbone = BackboneSpec.of(backbone, **{k: v for k, v in options.items() if k in BACKBONE_FIELDS})
    data = DataSpec.of(data, **{k: v for k, v in options.items() if k in DATA_FIELDS})
    return backbone, data


def open_extraction(description: dict) -> Extraction:
    """The extraction `Extraction.description` describes, made again in another process (a
    pipeline's worker): its backbone loaded and checked, its data opened from their spec."""
    inputs = open_inputs(BackboneSpec.from_dict(description["backbone"]), DataSpec.from_dict(description["data"]),
                         batch_size=description["batch_size"], engine=description["engine"],
                         precision=description.get("precision", "fp32"),
                         calibration_size=description.get("calibration_size", CALIBRATION))
    return Extraction(inputs, description["engine_dir"], description["pool"])
