"""Pretrain the built-in example backbone and freeze it to `transfer/examples/digits.pb`.

A small ResNet-style CNN learns scikit-learn's digits 0-4 (8x8 gray, pixel values 0..16); the
frozen graph names its penultimate tensor `resnet_features`. The README's main job transfers
it to digits 5-9. Run: `python experiments/digits/pretrain.py` (about 30 s on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretraining import pretrain_and_freeze  # noqa: E402  (the pretraining scripts' shared part)

OUT = Path(__file__).resolve().parents[2] / "transfer" / "examples" / "digits.pb"
PRETRAIN_CLASSES = range(0, 5)


def residual_block(x, filters: int, name: str):
    shortcut = x if x.shape[-1] == filters else keras.layers.Conv2D(filters, 1, name=f"{name}_proj")(x)
    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn2")(y)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([shortcut, y]))


def build_backbone() -> keras.Model:
    """8x8x1 digits (0..16) -> 32 pooled features."""
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Rescaling(1 / 16, name="scale")(image)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(x)
    x = residual_block(x, 16, "block1")
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = residual_block(x, 32, "block2")
    features = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(image, features, name="digits_resnet")


def load_split(classes, seed: int):
    digits = load_digits()
    keep = np.isin(digits.target, list(classes))
    x = digits.images[keep].astype("float32")[..., None]
    y = digits.target[keep] - min(classes)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    x_train, x_test, y_train, y_test = load_split(PRETRAIN_CLASSES, args.seed)
    accuracy = pretrain_and_freeze(build_backbone(), len(PRETRAIN_CLASSES), (x_train, y_train), (x_test, y_test),
                                   args.out, "resnet_features", epochs=args.epochs)
    print(f"digits 0-4 held-out accuracy {accuracy:.3f}; wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
