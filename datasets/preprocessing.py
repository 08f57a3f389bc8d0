"""Make dataset images look like what a backbone was trained on: size, channels, dtype, range.

These settings belong to the model, not to the data, so they can sit in a JSON file beside the
model (see `sidecar_path`): ``model.pb`` → ``model.preprocessing.json``; a SavedModel folder
``net/`` → ``net.preprocessing.json``. For example::

    {"size": [224, 224], "channels": 3, "dtype": "float32", "scale": "caffe"}

Scales: "none" (keep values), "0..1" (x/255), "-1..1" (x/127.5 - 1), "caffe" (RGB→BGR, then
subtract the ImageNet mean [103.939, 116.779, 123.68]). dtype "uint8" is for graphs with a uint8
input (scale must then be "none").
"""
import dataclasses
import json
from pathlib import Path
from typing import Optional

import tensorflow as tf

from transfer.errors import TransferError, check_choice

SCALES = ("none", "0..1", "-1..1", "caffe")
DTYPES = ("float32", "uint8")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
SIDECAR_SUFFIX = ".preprocessing.json"


def sidecar_path(model_path) -> Path:
    """The preprocessing JSON beside a model: replaces a file's suffix, follows a folder's name."""
    path = Path(model_path)
    if path.is_dir() or not path.suffix:
        return path.with_name(path.name + SIDECAR_SUFFIX)
    return path.with_suffix(SIDECAR_SUFFIX)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a backbone's input expects. `size` (height, width) and `channels` None: keep."""

    size: Optional[tuple] = None
    channels: Optional[int] = None
    dtype: str = "float32"
    scale: str = "none"

    def __post_init__(self):
        size = None if self.size is None or tuple(self.size) == (None, None) else tuple(self.size)
        if size is not None and not (len(size) == 2 and all(isinstance(d, int) and d > 0
                                                             for d in size)):
            raise TransferError(f"size {self.size!r} is not valid; give (height, width) as "
                                "positive integers, or None to keep the image size")
        object.__setattr__(self, "size", size)
        if isinstance(self.dtype, tf.DType):
            object.__setattr__(self, "dtype", self.dtype.name)
        _choose("channels", self.channels, (None, 1, 3))
        _choose("dtype", self.dtype, DTYPES)
        _choose("scale", self.scale, SCALES)
        if self.dtype == "uint8" and self.scale != "none":
            raise TransferError(f"scale {self.scale!r} makes floats but dtype is 'uint8'; "
                                "use scale 'none' with uint8 inputs")
        if self.scale == "caffe" and self.channels == 1:
            raise TransferError("scale 'caffe' needs 3 channels (BGR) but channels is 1")

    @classmethod
    def for_input(cls, shape, dtype="float32", scale="none") -> "Preprocessing":
        """Match a backbone input of shape (batch, height, width, channels); None dims are kept."""
        return cls(size=tuple(shape[1:3]), channels=shape[3], dtype=tf.as_dtype(dtype), scale=scale)

    @classmethod
    def from_dict(cls, values: dict, where: str = "preprocessing") -> "Preprocessing":
        fields = [field.name for field in dataclasses.fields(cls)]
        if not isinstance(values, dict):
            raise TransferError(f"{where} must be a JSON object with keys {', '.join(fields)}")
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TransferError(f"unknown key(s) {', '.join(unknown)} in {where}; "
                                f"valid: {', '.join(fields)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path) -> "Preprocessing":
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise TransferError(f"preprocessing file {str(path)!r} does not exist") from None
        except (OSError, ValueError) as error:
            raise TransferError(f"cannot read preprocessing file {str(path)!r}: {error}") from None
        return cls.from_dict(values, where=str(path))

    @classmethod
    def beside(cls, model_path) -> Optional["Preprocessing"]:
        """The settings saved beside a model (`sidecar_path`), or None when there are none."""
        path = sidecar_path(model_path)
        return cls.from_json(path) if path.exists() else None

    def to_dict(self) -> dict:
        return {"size": None if self.size is None else list(self.size), "channels": self.channels,
                "dtype": self.dtype, "scale": self.scale}

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Preprocess one image (H, W, C) or a batch (N, H, W, C)."""
        return self.values(self.geometry(images))

    def geometry(self, images: tf.Tensor) -> tf.Tensor:
        """Channels (alpha dropped, gray↔RGB) and size; the dtype is kept unless resized."""
        channels = images.shape[-1]
        if self.channels is not None and channels in (2, 4):
            images, channels = images[..., : channels - 1], channels - 1
        if self.channels == 3 and channels == 1:
            images = tf.image.grayscale_to_rgb(images)
        elif self.channels == 1 and channels == 3:
            images = tf.image.rgb_to_grayscale(images)
        if self.size is not None and tuple(images.shape[-3:-1]) != self.size:
            images = tf.image.resize(images, self.size)
        return images

    def values(self, images: tf.Tensor) -> tf.Tensor:
        """Value range and dtype."""
        if self.dtype == "uint8":
            if images.dtype == tf.uint8:
                return images
            return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        images = tf.cast(images, tf.float32)
        if self.scale == "0..1":
            return images / 255.0
        if self.scale == "-1..1":
            return images / 127.5 - 1.0
        if self.scale == "caffe":
            if images.shape[-1] != 3:
                raise TransferError(f"scale 'caffe' needs 3-channel images, got {images.shape[-1]} "
                                    "channel(s); set channels to 3")
            return images[..., ::-1] - tf.constant(CAFFE_MEAN_BGR)
        return images


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random horizontal flip and pad-and-crop shift, for training without a feature cache.

    Cached features are computed once, so only uncached training can see augmented images.
    Seeded: the same seed gives the same images in the same epoch; each epoch differs.
    """

    flip: bool = True
    crop_padding: int = 0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise TransferError(f"crop_padding={self.crop_padding!r} must be an integer >= 0")

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment one image (H, W, C) with a stateless seed of shape [2]."""
        flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if self.crop_padding:
            pad = self.crop_padding
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
        return image


def preprocess(dataset: tf.data.Dataset, preprocessing: Preprocessing,
               augmentation: Optional[Augmentation] = None) -> tf.data.Dataset:
    """Map unbatched (image, label) pairs; augmentation runs at the model's size, before scaling."""
    autotune = tf.data.AUTOTUNE
    dataset = dataset.map(lambda x, y: (preprocessing.geometry(x), y), autotune)
    if augmentation is not None:
        seeds = tf.data.Dataset.random(augmentation.seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda pair, seed: (augmentation(pair[0], seed), pair[1]), autotune)
    return dataset.map(lambda x, y: (preprocessing.values(x), y), autotune)


def _choose(name: str, value, valid: tuple) -> None:
    check_choice(f"preprocessing {name}", value, valid)
