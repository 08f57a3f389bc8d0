"""One training step with the last residual block thawed, against native Keras, in one process.

Network: keras.applications.ResNet50 (weights=None), batch 16 at 224x224, a linear head on the
pooled features, Adam, batch norm in inference mode everywhere (thaw keeps the moving
statistics constant; the native model is called with training=False to match). Variants:
  - native Keras: the same network with only conv5_block3's layers trainable;
  - transfer: the frozen .pb, `thaw(..., from_scope="conv5_block3_1_conv")` (the same 6 weight
    layers), the frozen prefix run without gradient, the thawed suffix differentiated;
  - transfer with the prefix cached in memory: the prefix outputs computed once, each step runs
    the thawed suffix only;
  - transfer with the prefix cached on disk: `fit --thaw --cache-dir`'s path. The prefix
    outputs of a small image set are extracted into a real feature cache; each step takes the
    next batch from the cache's shuffled tf.data stream (`FeatureSplits.training`), so the
    time includes reading the shards.
Every step is one tf.function (forward, backward, Adam update); median of interleaved rounds.
Run: `python experiments/bench/thaw.py` (~7 min on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import transfer
import keras
from transfer.features.inputs import open_inputs
import tensorflow as tf
from transfer._compat import freeze_variables

BLOCK = "conv5_block3_"


def frozen_resnet(workdir: Path):
    model = keras.applications.ResNet50(weights=None)
    spec = tf.TensorSpec([None, 224, 224, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path = workdir / "resnet50.pb"
    path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    return model, path


def step_function(forward, variables, head):
    """One compiled training step: forward, loss, gradients for `variables` + head, Adam update."""
    optimizer = keras.optimizers.Adam(1e-4)
    trained = list(variables) + list(head.trainable_weights)
    optimizer.build(trained)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, head(forward(x)), from_logits=True)
            loss = tf.reduce_mean(loss)
        optimizer.apply(tape.gradient(loss, trained), trained)
        return loss

    return step


def linear_head():
    head = keras.layers.Dense(10)
    head.build((None, 2048))
    return head


def measure(steps: dict, batches: dict, rounds: int) -> dict:
    """Median seconds per step; `batches[name]()` gives a step's (inputs, labels), timed with it."""
    for name, step in steps.items():  # trace and warm up
        step(*batches[name]()).numpy()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(*batches[name]()).numpy()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def disk_cached_prefix(thawed, workdir: Path, batch_size: int, images: int):
    """The prefix outputs of `images` random images in a real feature cache: the batches a
    cached thaw trains on, read back from the shards (shuffled, as fit reads them)."""
    rng = np.random.default_rng(1)
    data = workdir / "images.npz"
    np.savez(data, x=rng.integers(0, 256, (images, 224, 224, 3), dtype="uint8"), y=np.arange(images) % 10)
    inputs = open_inputs(thawed.backbone, str(data), validation_split=0, batch_size=batch_size)
    features = inputs.cached_prefix(thawed, workdir / "cache", progress=False)
    stream = iter(features.training(batch_size, seed=0).repeat())

    def next_batch():
        boundary, labels = next(stream)
        return (list(boundary) if isinstance(boundary, tuple) else [boundary]), labels

    return next_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cached-images", type=int, default=64, help="images in the on-disk prefix cache")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, devices: "
          f"{[d.device_type for d in tf.config.list_logical_devices()]}, batch {args.batch_size}")
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (args.batch_size, 224, 224, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 10, args.batch_size))
    with tempfile.TemporaryDirectory() as workdir:
        native, pb_path = frozen_resnet(Path(workdir))
        features = keras.Model(native.inputs, native.get_layer("avg_pool").output)
        native_variables = [w for layer in features.layers if layer.name.startswith(BLOCK)
                            for w in layer.weights if "moving" not in w.path]
        thawed = transfer.thaw(pb_path, from_scope=BLOCK + "1_conv", cut="avg_pool")
        print(thawed.description)
        counts = (len(thawed.trainable_weights), len(native_variables))
        assert counts[0] == counts[1], counts
        boundary = thawed.prefix(images)
        steps = {
            "native Keras, conv5_block3 trainable": step_function(lambda x: features(x, training=False),
                                                                  native_variables, linear_head()),
            "transfer thaw (frozen prefix + thawed suffix)": step_function(thawed, thawed.trainable_weights,
                                                                           linear_head()),
            "transfer thaw, prefix cached in memory": step_function(thawed.from_boundary,
                                                                    thawed.trainable_weights, linear_head()),
            "transfer thaw, prefix cached on disk": step_function(thawed.from_boundary, thawed.trainable_weights,
                                                                  linear_head()),
        }
        batches = {name: (lambda: (images, labels)) for name in steps}
        batches["transfer thaw, prefix cached in memory"] = lambda: (boundary, labels)
        batches["transfer thaw, prefix cached on disk"] = disk_cached_prefix(thawed, Path(workdir), args.batch_size,
                                                                             args.cached_images)
        medians = measure(steps, batches, args.rounds)
    baseline = medians["native Keras, conv5_block3 trainable"]
    print(f"\n  {'variant':48s} {'s/step':>8s} {'time vs native':>15s} {'speed-up':>9s}")
    for name, seconds in medians.items():
        print(f"  {name:48s} {seconds:8.3f} {seconds / baseline:14.3f}x {baseline / seconds:8.2f}x")


if __name__ == "__main__":
    main()
