"""What the feature cache extracts from: a backbone's cuts over one dataset's splits, as numpy batches.

`Extraction` is the cache's extractor (see `transfer.features.cache.FeatureCache.extract`): it names the
outputs (one per cut, each cached as its own entry), says what decides each output's features
(the key's ingredients), and computes batches of them. Every cut comes from one pass of the
backbone (one pruned function with all cuts as outputs); a pass for only some cuts (the others
are cached already) prunes the graph to those. The cache knows nothing of backbones or tf.data,
and this module nothing of files.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np
import tensorflow as tf

from transfer.errors import check_choice
from transfer.choices import POOLS
from transfer.graph.spec import BackboneSpec
from transfer.features.pooled_cuts import DerivedAverages, derived_averages, pool_positions
from transfer.heads.pooling import grid_map_shape

ROLES = ("train", "validation", "test")


def ingredients(backbone, cut, input_kind, identity: dict, role: str, dtype: str, engine: str = "tf",
                pool: str = "none", precision: str = "fp32", calibration: dict | None = None) -> dict:
    """What decides one cut's features of one split: the key is made from exactly this (the
    engine, its precision and the pooling only when not the default, so that older keys stay
    valid; an INT8 model's features also depend on the training examples it was calibrated on)."""
    return {
        **({"engine": engine} if engine != "tf" else {}),
        **({"precision": precision, "calibration": calibration} if precision != "fp32" else {}),
        "backbone": {"fingerprint": backbone.fingerprint, "signature": backbone.loaded.signature,
                     "inputs": [t.name for t in backbone.inputs], "cut": cut.name,
                     **({"feeds": backbone.feed_values} if backbone.feeds else {})},  # old keys stay valid
        **({"pool": pool} if pool != "none" else {}),
        "input": input_kind.recipe(),  # the preprocessing of images; arrays go in as they are
        "data": identity,
        "role": role,
        "dtype": dtype,
    }


def check_pool(pool: str | None) -> str:
    return check_choice("pool", pool or "none", POOLS, flag="--pool")


class Extraction:
    """The cuts of `inputs.backbone` over `inputs`' splits (`transfer.features.inputs.Inputs`), for the cache.

    `engine_dir`: where a converted engine is kept (the cache's `onnx/`, `openvino/`). `pool`: `avg` or
    `max` reduces every axis between batch and channels before storing (a cut sweep's probe
    pools anyway, and a 56x56x256 cut then costs 1 KiB per example instead of 3 MiB); `grid2`
    averages them into a 2x2 grid of cells (`heads.pooling.grid_map`), 4x that, from which a
    head pools to the grid or to (near) the average.
    """

    def __init__(self, inputs, engine_dir=None, pool: str | None = None):
        self.inputs, self.engine_dir, self.pool = inputs, engine_dir, check_pool(pool)
        self.cuts = {cut.spec: cut for cut in inputs.backbone.cuts}
        self.engine = inputs.extraction_engine(engine_dir)  # chosen (checked, timed) once
        self._by_outputs = {tuple(self.cuts): inputs}
        self._pooled_functions = {}

    # -- the cache's extractor interface -----------------------------------------------------

    @property
    def outputs(self) -> list[str]:
        """One cache entry per output (cut spec) and split."""
        return list(self.cuts)

    @property
    def roles(self) -> list[str]:
        return [role for role in ROLES if getattr(self.inputs.splits, role) is not None]

    @property
    def batch_size(self) -> int:
        return self.inputs.batches.batch_size

    @property
    def note(self) -> str:
        return self.engine.note

    @property
    def backbone_source(self) -> str:
        """The backbone's path (or `example:NAME`), as a new entry's manifest records it for
        `transfer cache ls` (not part of the key: a moved file keeps its entries)."""
        return str(self.inputs.backbone.loaded.source)

    def size(self, role: str) -> int | None:
        return self.inputs.splits.sizes.get(role)

    def count(self, role: str) -> int:
        """A split's examples: its known size, else counted (read once, without the backbone)."""
        size = self.size(role)
        if size is None:
            stream = getattr(self.inputs.splits, role)
            size = int(stream.reduce(tf.constant(0, tf.int64), lambda count, *_: count + 1))
        return size

    def recipe(self, role: str, output: str, dtype: str) -> dict:
        inputs = self.inputs
        calibration = getattr(self.engine.run, "calibration", None)
        return ingredients(inputs.backbone, self.cuts[output], inputs.kind, inputs.splits.identity, role, dtype,
                           self.engine.name, self.pool, self.engine.precision, calibration)

    def batches(self, role: str, outputs: list[str], batch_size: int, skip: int = 0,
                take: int = -1) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        """([one float array per output], int32 labels) per batch of examples [skip, skip + take)."""
        inputs = self._inputs_for(tuple(outputs))
        features_of = self._features_function(tuple(outputs), inputs)
        for examples, labels in inputs.batches.evaluation(role, skip=skip, take=take, batch_size=batch_size):
            features = features_of(examples)
            listed = [features[spec] for spec in outputs] if isinstance(features, dict) else [features]
            yield [np.asarray(f) for f in listed], labels.numpy().astype("int32")

    # -- the same extraction in another process (a pipeline's worker) --------------------------

    def description(self) -> dict | None:
        """Plain data from which `transfer.features.inputs.open_extraction` makes this extraction again
        in another process (a pipeline's worker), or None when the data did not come from a spec
        (arrays in memory)."""
        inputs = self.inputs
        if inputs.data_spec is None:
            return None
        data = dataclasses.replace(inputs.data_spec, preprocessing=inputs.kind.to_config().get("preprocessing"),
                                   scale=None)  # as resolved: the same images, wherever the worker runs
        return {"backbone": BackboneSpec.of_backbone(inputs.backbone).to_dict(), "data": data.to_dict(),
                "batch_size": self.batch_size, "engine": self.engine.name, "precision": self.engine.precision,
                "calibration_size": self.inputs.calibration_size,
                "pool": self.pool,
                "engine_dir": None if self.engine_dir is None else str(self.engine_dir)}

    # -- helpers -------------------------------------------------------------------------------

    def _inputs_for(self, outputs: tuple) -> object:
        """Inputs whose backbone computes exactly `outputs`: the whole backbone, or a subset of
        its cuts with its own engine, when some cuts are cached already."""
        if outputs not in self._by_outputs:
            part = self.inputs.backbone.subset(list(outputs))
            subset = dataclasses.replace(self.inputs, backbone=part, chosen_engine=None)
            subset.extraction_engine(self.engine_dir)
            self._by_outputs[outputs] = subset
        return self._by_outputs[outputs]

    def _features_function(self, outputs: tuple, inputs):
        """Raw examples -> features, pooled as asked. When TensorFlow runs the backbone, the
        pooling is traced with it into one function: the full-size maps of many cuts then never
        leave the graph (measured on ResNet50's 177 cuts: 1.6x a batch when every map was pooled
        after the call), and averages that follow from other cuts' are derived from them
        (`transfer.features.pooled_cuts`)."""
        if self.pool == "none":
            return inputs.feature_batch
        if inputs.extraction_engine(self.engine_dir).name != "tf":  # ONNX Runtime: pooled after its run
            return lambda examples: pool_positions(inputs.feature_batch(examples), self.pool)
        if outputs not in self._pooled_functions:
            self._pooled_functions[outputs] = _pooled_function(inputs.backbone, self.pool)
        pooled = self._pooled_functions[outputs]
        return lambda examples: pooled(inputs.prepared(examples))


def _pooled_function(backbone, pool: str):
    """Prepared examples -> {cut spec: pooled features (numpy)}, the backbone and pooling in one
    trace. Its outputs leave the graph as one concatenated tensor when they can (float32
    vectors): one conversion to numpy a batch instead of one per cut (~0.2 ms each: 2 s of
    a 177-cut extraction)."""
    plan = derived_averages(backbone) if pool == "avg" else DerivedAverages([c.spec for c in backbone.cuts], {})
    computing = backbone.subset(plan.computed) if plan.derived else backbone
    specs = backbone.feature_specs
    pooled_shapes = {spec: _pooled_shape(value.shape, pool) for spec, value in specs.items()}
    joined = all(value.dtype == tf.float32 and None not in pooled_shapes[spec] for spec, value in specs.items())

    def pooled(prepared):
        features = computing(prepared)
        features = features if isinstance(features, dict) else {plan.computed[0]: features}
        averages = plan.complete(pool_positions(features, pool))
        listed = [averages[spec] for spec in specs]
        return tf.concat([tf.reshape(x, (-1, math.prod(pooled_shapes[spec]))) for spec, x in zip(specs, listed)],
                         axis=1) if joined else listed

    traced = _AnyBatch(pooled)
    ends = np.cumsum([math.prod(shape) for shape in pooled_shapes.values()])[:-1] if joined else None  # splits

    def run(prepared) -> dict:
        outputs = traced(prepared)
        if not joined:
            return {spec: np.asarray(output) for spec, output in zip(specs, outputs)}
        return {spec: part.reshape(-1, *pooled_shapes[spec])
                for spec, part in zip(specs, np.split(np.asarray(outputs), ends, axis=1))}

    return run


def _pooled_shape(shape: tf.TensorShape, pool: str) -> tuple:
    """One example's shape once pooled: (channels,) for `avg`/`max` (a 2-D cut as it is), the
    grid of cells and channels for `grid2`; None where a size is unknown."""
    sizes = tuple(shape.as_list()) if shape.rank is not None else (None, None)
    if pool == "grid2":
        return grid_map_shape(sizes) if len(sizes) <= 2 or sizes[-1] is not None else (None,)
    return (sizes[-1],) if len(sizes) >= 2 else (None,)


class _AnyBatch:
    """`function` traced once for any batch size (the last, smaller batch of a split included):
    each trace of a graph with many outputs is optimised anew by grappler, seconds on a large
    network. A new trace only for another example shape (inputs of any spatial size)."""

    def __init__(self, function):
        # Plain Python, no control flow to convert: autograph would only cost seconds a trace.
        self.function, self.traced = tf.function(function, autograph=False), {}

    def __call__(self, prepared):
        specs = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), prepared)
        key = str(specs)
        if key not in self.traced:
            self.traced[key] = self.function.get_concrete_function(specs)
        return self.traced[key](prepared)
