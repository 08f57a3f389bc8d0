"""Use a finished run: `evaluate` it on labelled data, `predict` classes of image files."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transfer import datasets
from transfer.datasets.preprocessing import Preprocessing
from transfer.errors import TransferError
from transfer.reporting import classification_metrics
from transfer.pipeline import Batches, predict_batches
from transfer.training import MODEL_FILE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def load_run(run_dir) -> tuple[keras.Model, dict]:
    """The trained model (loaded in safe mode) and the config of a `transfer fit` run directory."""
    run_dir = Path(run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / MODEL_FILE
    if not config_path.is_file() or not model_path.is_file():
        raise TransferError(f"{str(run_dir)!r} is not a transfer run directory (needs config.json and {MODEL_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise TransferError(f"{config_path} is corrupt: {error}") from None
    return keras.models.load_model(model_path), config


def evaluate(run_dir, data, data_dir=None, batch_size: int = 32) -> dict:
    """Accuracy, per-class report and confusion matrix on every example of `data`."""
    model, config = load_run(run_dir)
    splits = datasets.load(data, data_dir=data_dir, validation_split=0.0)
    if splits.class_names != config["class_names"]:
        raise TransferError(f"data {data!r} has classes {splits.class_names}; the run was trained on "
                            f"{config['class_names']} (same names, same order)")
    batches = Batches(splits, Preprocessing.from_dict(config["preprocessing"]), batch_size, 0, None)
    probabilities, labels = [], []
    for role in ("train", "validation", "test"):
        dataset = batches.evaluation(role)
        if dataset is not None:
            outputs, y = predict_batches(model, dataset)
            probabilities.append(outputs)
            labels.append(y)
    return classification_metrics(np.concatenate(labels), np.concatenate(probabilities), splits.class_names)


def predict(run_dir, paths, top_k: int = 3) -> list[dict]:
    """Top-k classes with probabilities for each image file (or `.npy` array of images)."""
    model, config = load_run(run_dir)
    height, width, channels = model.inputs[0].shape[1:]
    fit_to_model = Preprocessing(size=None if height is None else (height, width), channels=channels)
    top_k = max(1, min(top_k, len(config["class_names"])))
    results = []
    for path in map(Path, paths):
        images = fit_to_model.geometry(tf.cast(_read_images(path), tf.float32))
        probabilities = np.asarray(model.predict_on_batch(images))
        for index, row in enumerate(probabilities):
            best = np.argsort(row)[::-1][:top_k]
            results.append({"image": str(path) if len(probabilities) == 1 else f"{path}[{index}]",
                            "top": [{"class": config["class_names"][i], "probability": float(row[i])} for i in best]})
    return results


def _read_images(path: Path) -> tf.Tensor:
    """A batch (N, H, W, C) from an image file or a `.npy` array of one or many images."""
    if not path.is_file():
        raise TransferError(f"image {str(path)!r} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise TransferError(f"{path} is not a readable .npy array: {error}") from None
        array = array[..., None] if array.ndim in (2, 3) and array.shape[-1] not in (1, 3, 4) else array
        return tf.constant(array[None] if array.ndim == 3 else array)
    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
    except tf.errors.OpError:
        raise TransferError(f"{path} is not a readable image (valid: {', '.join(IMAGE_SUFFIXES)}, .npy)") from None
    return image[None]
