"""Pretrain a small Xception-style network on procedural shapes; freeze it to `experiments/bignet/bignet.pb`.

Source task: 32x32 gray images of one of `len(SHAPES)` shapes (disk, ring, squares, triangles,
bars, plus, ellipse, three dots, grating, crescent, L), each at a random position, scale,
rotation, stroke contrast and thickness, on a random brightness gradient with Gaussian noise and
a faint distractor line. Nothing to download: `shapes()` draws them. `compare.py` transfers the
frozen network to another domain, scikit-learn's handwritten digits upscaled to 32x32.

The network (`build_backbone`): a stem (conv, BN, ReLU), two Xception entry blocks (ReLU,
separable conv, BN, ReLU, separable conv, BN, max-pool stride 2, plus a strided 1x1 conv + BN
shortcut, added), `--middle` middle blocks at 8x8 (three ReLU / separable conv / BN, residual
add), an exit separable conv + BN + ReLU and global average pooling, named `features` in the
frozen graph; every Keras layer output is a candidate cut (`transfer inspect bignet.pb`).
Run: `python experiments/bignet/pretrain.py` (265 s on 2 shared CPU cores; `bignet.pb` is committed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretraining import pretrain_and_freeze  # noqa: E402  (the pretraining scripts' shared part)

OUT = Path(__file__).resolve().parent / "bignet.pb"
SIZE = 32
SHAPES = ("disk", "ring", "square", "square_outline", "triangle", "triangle_outline", "bar", "two_bars",
          "plus", "ellipse_outline", "three_dots", "grating", "crescent", "corner")


def _soft(distance, pixel):
    """Inside (distance < 0) -> 1, outside -> 0, with an edge about one pixel wide."""
    return 1.0 / (1.0 + np.exp(np.clip(distance / pixel, -30, 30)))


def _shape(kind: str, x, y, width, pixel):
    """Intensity in [0, 1] of `kind` in its own frame (unit size) at coordinates x, y."""
    r = np.hypot(x, y)
    box = np.maximum(abs(x), abs(y))
    if kind == "disk":
        return _soft(r - 1, pixel)
    if kind == "ring":
        return _soft(abs(r - 0.8) - width, pixel)
    if kind == "square":
        return _soft(box - 0.85, pixel)
    if kind == "square_outline":
        return _soft(abs(box - 0.8) - width, pixel)
    angles = np.pi / 2 + 2 * np.pi / 3 * np.arange(3)
    if kind.startswith("triangle"):
        tri = np.max([x * np.cos(a) + y * np.sin(a) for a in angles], axis=0)
    if kind == "triangle":
        return _soft(tri - 0.5, pixel)
    if kind == "triangle_outline":
        return _soft(abs(tri - 0.45) - width * 0.8, pixel)
    if kind == "bar":
        return _soft(np.maximum(abs(y) - width, abs(x) - 1), pixel)
    if kind == "two_bars":
        return _soft(np.maximum(abs(abs(y) - 0.5) - width, abs(x) - 1), pixel)
    if kind == "plus":
        return _soft(np.maximum(np.minimum(abs(x), abs(y)) - width, box - 1), pixel)
    if kind == "ellipse_outline":
        return _soft(abs(np.hypot(x, y / 0.45) - 0.9) - width * 1.4, pixel)
    if kind == "three_dots":
        dots = [np.hypot(x - 0.7 * np.cos(a), y - 0.7 * np.sin(a)) for a in angles]
        return _soft(np.min(dots, axis=0) - 0.3, pixel)
    if kind == "grating":
        return _soft(r - 1, pixel) * (np.sin(7 * x) > 0)
    if kind == "crescent":
        return _soft(np.maximum(r - 1, 0.8 - np.hypot(x - 0.5, y)), pixel)
    if kind == "corner":  # an L
        return _soft(np.minimum(np.maximum(abs(x + 0.7) - width, abs(y) - 1),
                                np.maximum(abs(y + 0.7) - width, abs(x) - 1)), pixel)
    raise ValueError(kind)


def shapes(count: int, seed: int):
    """`count` images (count, 32, 32, 1) in about [0, 1] and their labels, classes balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(SHAPES)
    rng.shuffle(labels)
    grid = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1  # pixel centres in [-1, 1]
    u, v = np.meshgrid(grid, grid)
    images = np.empty((count, SIZE, SIZE), "float32")
    for i, label in enumerate(labels):
        scale = rng.uniform(0.35, 0.75)
        cx, cy = rng.uniform(-1 + scale, 1 - scale, 2) * 0.9
        theta = rng.uniform(0, 2 * np.pi)
        aspect = rng.uniform(0.8, 1.25)
        du, dv = u - cx, v - cy
        x = (du * np.cos(theta) + dv * np.sin(theta)) / (scale * aspect)
        y = (-du * np.sin(theta) + dv * np.cos(theta)) / (scale / aspect)
        ink = _shape(SHAPES[label], x, y, width=rng.uniform(0.12, 0.25), pixel=2 / SIZE / scale)
        # a faint distractor line anywhere, a brightness gradient and noise
        a = rng.uniform(0, np.pi)
        line = _soft(abs(np.cos(a) * u + np.sin(a) * v - rng.uniform(-1, 1)) - 0.04, 2 / SIZE)
        gx, gy = rng.uniform(-0.2, 0.2, 2)
        background = rng.uniform(0, 0.25) + gx * u + gy * v
        image = background + rng.uniform(0.5, 1.0) * ink + rng.uniform(0, 0.3) * line
        images[i] = image + rng.normal(0, rng.uniform(0.02, 0.12), image.shape)
    return images[..., None], labels.astype("int32")


def separable(x, filters: int, name: str):
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sepconv")(x)
    return keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)


def entry_block(x, filters: int, name: str):
    """Xception entry flow: two separable convs, a strided max-pool, a strided 1x1 shortcut."""
    shortcut = keras.layers.Conv2D(filters, 1, strides=2, use_bias=False, name=f"{name}_shortcut")(x)
    shortcut = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_shortcut_bn")(shortcut)
    y = keras.layers.ReLU(name=f"{name}_relu1")(x)
    y = separable(y, filters, f"{name}_1")
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = separable(y, filters, f"{name}_2")
    y = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def middle_block(x, name: str):
    """Xception middle flow: three ReLU / separable conv / BN, residual."""
    y = x
    for i in (1, 2, 3):
        y = keras.layers.ReLU(name=f"{name}_relu{i}")(y)
        y = separable(y, x.shape[-1], f"{name}_{i}")
    return keras.layers.Add(name=f"{name}_add")([x, y])


def build_backbone(middle: int = 2, width: int = 32) -> keras.Model:
    """32x32x1 images (about 0..1) -> 3 * width pooled features."""
    image = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Conv2D(width // 2, 3, padding="same", use_bias=False, name="stem_conv")(image)
    x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = entry_block(x, width, "entry1")  # 16x16
    x = entry_block(x, 2 * width, "entry2")  # 8x8
    for number in range(1, middle + 1):
        x = middle_block(x, f"middle{number}")
    x = separable(x, 3 * width, "exit")
    x = keras.layers.ReLU(name="exit_relu")(x)
    features = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(image, features, name="bignet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=14000, help="training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--middle", type=int, default=2, help="middle blocks")
    parser.add_argument("--width", type=int, default=32, help="channels of the first entry block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    x_train, y_train = shapes(args.train, args.seed)
    x_test, y_test = shapes(2000, args.seed + 1000)
    print(f"drew {len(x_train) + len(x_test)} images in {time.perf_counter() - started:.0f} s", flush=True)
    backbone = build_backbone(args.middle, args.width)
    steps = args.epochs * -(-len(x_train) // 64)
    accuracy = pretrain_and_freeze(
        backbone, len(SHAPES), (x_train, y_train), (x_test, y_test), args.out, "features", epochs=args.epochs,
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)), verbose=2)
    print(f"shapes held-out accuracy {accuracy:.3f}; {backbone.count_params()} parameters; wrote {args.out} "
          f"({args.out.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
