"""Heads on features far from unit scale: standardized inputs (the default) against none.

Issue 12 found it: on a graph whose cut features are small (mean 0.046), the `conv` head trained
with Adam 1e-3 reached 0.234 test accuracy while `logreg` reached 0.845. This rebuilds that
situation reproducibly: a small CNN pretrained on scikit-learn's digits 0-4, whose last conv
layer's kernel and bias are then scaled down so that its ReLU output (the cut, 4x4x32, named
`small_features`) has mean 0.046 on the target images (a ReLU passes a positive factor through:
the features carry the same information, only smaller). Frozen to a `.pb`, it is transferred to
digits 5-9 with N labels per class (`digits:5-9?per_class=N`, a stratified 20 % validation split
for early stopping, the rest as test) with every head, `standardize` on (the default) and off.
Test accuracy, mean ± std over seeds. Run: `python experiments/scale/compare.py` (3.5 min of CPU
per feature mean; `--means 0.046 0.0046` for two, `--heads linear --lr 0.01` for some rows).
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
import tensorflow as tf
from sklearn.datasets import load_digits

from transfer.graph.freezing import freeze_function

CUT = "small_features"
MEANS = (0.046,)  # the mean of the features in the issue
HEADS = {"conv": {}, "linear": {}, "mlp": {}, "logreg": {}}


def build_backbone() -> keras.Model:
    """8x8 digits (0..16) -> stem conv -> pool -> conv `block` (its ReLU output is the cut)."""
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Rescaling(1 / 16)(image)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="block")(x)
    return keras.Model(image, x, name="small_backbone")


def small_feature_graph(path: Path, target_mean: float, seed: int = 0) -> float:
    """Pretrain on digits 0-4, shrink the cut's layer to `target_mean`, freeze to `path`; the factor."""
    keras.utils.set_random_seed(seed)
    digits = load_digits()
    images = digits.images.astype("float32")[..., None]
    source = digits.target < 5
    backbone = build_backbone()
    model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, "softmax")])
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(images[source], digits.target[source], epochs=15, batch_size=64, verbose=0)
    factor = target_mean / float(np.mean(backbone.predict(images[~source], verbose=0)))
    block = backbone.get_layer("block")
    block.set_weights([w * factor for w in block.get_weights()])

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")])
    def serve(image):
        features = tf.identity(backbone(image, training=False), name=CUT)
        return tf.reduce_mean(features, axis=[1, 2])

    path.write_bytes(freeze_function(serve.get_concrete_function()).graph_def.SerializeToString())
    return factor


def feature_statistics(pb: Path, spec: str) -> tuple[float, float]:
    layer = transfer.FeatureLayer(str(pb), cut=CUT)
    images = np.stack([x for x, _ in transfer.datasets.load(spec).train.as_numpy_iterator()]).astype("float32")
    features = np.asarray(layer(images))
    return float(features.mean()), float(features.std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--means", type=float, nargs="+", default=MEANS, help="feature means to shrink the cut to")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    args = parser.parse_args()
    for target_mean in args.means:
        compare(target_mean, args)


def compare(target_mean: float, args) -> None:
    """One graph shrunk to `target_mean`; every head in `args.heads`, standardize on and off."""
    spec = f"digits:5-9?per_class={args.per_class}"
    with tempfile.TemporaryDirectory() as work:
        pb = Path(work) / "small.pb"
        factor = small_feature_graph(pb, target_mean)
        mean, std = feature_statistics(pb, spec)
        print(f"cut {CUT} (4x4x32): block layer scaled by {factor:.4f}; features on the training images: "
              f"mean {mean:.4f}, std {std:.4f}")
        print(f"{'head':8s} {'standardize':>11s} {'test accuracy':>16s} {'s/run':>6s}  per seed")
        for head in args.heads:
            options = HEADS[head]
            for standardize in (True, False):
                started = time.perf_counter()
                scores = [transfer.fit(str(pb), spec, cut=CUT, head=head,
                                       head_options={**options, "standardize": standardize},
                                       epochs=args.epochs, lr=args.lr, seed=seed, cache_dir=Path(work) / "cache",
                                       export=(), verbose=0).metrics["test"]["accuracy"]
                          for seed in range(args.seeds)]
                seconds = (time.perf_counter() - started) / args.seeds
                spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
                print(f"{head:8s} {str(standardize).lower():>11s} {statistics.mean(scores):.3f} ± {spread:.3f}   "
                      f"{seconds:6.1f}  " + " ".join(f"{s:.3f}" for s in scores), flush=True)


if __name__ == "__main__":
    main()
