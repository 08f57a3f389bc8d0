"""FeatureLayer throughput against the plain TensorFlow ways, in one process, on the same inputs.

Network: keras.applications.ResNet50 (weights=None), frozen to a .pb and exported as a
SavedModel. Compared at batch 32:
  - at the penultimate cut (`auto`): the raw pruned ConcreteFunction (wrap_function + prune,
    the plain TF way) against FeatureLayer called eagerly and inside a compiled Keras model;
  - at the full output (TFSMLayer cannot cut): the raw pruned function, FeatureLayer, and
    Keras 3's `keras.layers.TFSMLayer` on the SavedModel.
Rounds interleave the variants so that machine drift hits all of them alike; the median
per-batch time is reported. Run: `python experiments/bench/feature_layer.py` (~5 min on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer._compat import freeze_variables
from transfer import FeatureLayer


def build_network(workdir: Path) -> tuple[Path, Path]:
    model = keras.applications.ResNet50(weights=None)
    spec = tf.TensorSpec([None, 224, 224, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    pb_path = workdir / "resnet50.pb"
    pb_path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    saved_model = workdir / "resnet50_saved_model"
    model.export(str(saved_model), verbose=False)
    return pb_path, saved_model


def raw_pruned(pb_path: Path, fetch: str):
    """The plain TF way: import the GraphDef into wrap_function and prune to the fetch."""
    graph_def = tf.compat.v1.GraphDef.FromString(pb_path.read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    return wrapped.prune(feeds=wrapped.graph.get_tensor_by_name("input:0"),
                         fetches=wrapped.graph.get_tensor_by_name(fetch))


def compiled_model(layer):
    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, layer(inputs))
    return tf.function(lambda x: model(x, training=False))


def measure(variants: dict, batch: np.ndarray, rounds: int, iterations: int) -> dict[str, float]:
    """Median seconds per batch of each variant, rounds interleaved."""
    tensor = tf.constant(batch)
    for run in variants.values():  # warm-up: tracing, first-call allocation
        np.asarray(run(tensor))
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(iterations):
                np.asarray(run(tensor))  # forces the result, as a consumer would
            times[name].append((time.perf_counter() - start) / iterations)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], baseline: str, batch_size: int) -> None:
    print(f"\n{title}")
    print(f"  {'variant':44s} {'ms/batch':>9s} {'images/s':>9s} {'vs ' + baseline:>22s}")
    for name, seconds in medians.items():
        ratio = medians[baseline] / seconds  # throughput ratio: >1 is faster than the baseline
        print(f"  {name:44s} {seconds * 1e3:9.1f} {batch_size / seconds:9.1f} {ratio:21.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.device_type for d in tf.config.list_logical_devices()]}, batch {args.batch_size}")
    batch = np.random.default_rng(0).uniform(0, 255, (args.batch_size, 224, 224, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as workdir:
        pb_path, saved_model = build_network(Path(workdir))
        layer = FeatureLayer(pb_path, cut="auto")
        cut = layer.backbone.cuts[0].name
        penultimate = {
            f"raw pruned ConcreteFunction ({cut})": raw_pruned(pb_path, cut),
            "FeatureLayer, eager call": layer,
            "FeatureLayer in a compiled keras.Model": compiled_model(layer),
        }
        medians = measure(penultimate, batch, args.rounds, args.iterations)
        report(f"penultimate features ({cut})", medians, next(iter(medians)), args.batch_size)

        output = next(iter(layer.backbone.outputs.values())).name
        full_layer = FeatureLayer(pb_path, cut=output)
        tfsm = keras.layers.TFSMLayer(str(saved_model), call_endpoint="serve")
        full = {
            f"raw pruned ConcreteFunction ({output})": raw_pruned(pb_path, output),
            "FeatureLayer at the output, eager call": full_layer,
            "keras.layers.TFSMLayer (SavedModel), eager call": tfsm,
            "FeatureLayer at the output, compiled model": compiled_model(full_layer),
            "TFSMLayer in a compiled keras.Model": compiled_model(tfsm),
        }
        medians = measure(full, batch, args.rounds, args.iterations)
        report("full network (TFSMLayer cannot cut)", medians, next(iter(medians)), args.batch_size)


if __name__ == "__main__":
    main()
