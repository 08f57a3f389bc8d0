"""Deployable forms of a trained classifier: SavedModel, frozen `.pb`, TFLite.

All take raw images (what the run's data gives, before preprocessing), or for a non-image
backbone the arrays its input takes, and return class probabilities. The frozen graph names
its feature tensor `features` (several cuts: `features_cut0`, `features_cut1`, … in cut order) and its
output `probabilities`, so `transfer inspect` and `--backbone … --cut features` accept it again.
A deployed model says what class 2 is without the run's config.json: the SavedModel and the
frozen graph also return `classes` (each example's class names, in the order of its
probabilities) and `predicted_class`; the export folder holds `labels.txt` (one name per line, as
retrain.py's output_labels.txt), which is also the TFLite model's labels file.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import tensorflow as tf

from transfer import _compat
from transfer.graph.freezing import freeze_function
from transfer.layers.model import model_parts, raw_input_spec
from transfer.text import printable

SAVED_MODEL = "saved_model"
FROZEN_GRAPH = "model.pb"
TFLITE = "model.tflite"
LABELS = "labels.txt"


def serving_function(model, class_names=None):
    """The exported computation: raw inputs -> {"probabilities"}, and with `class_names`, also
    {"classes": (batch, classes) names, "predicted_class": (batch,) the most likely one}."""
    preprocessing, features, head = model_parts(model)

    @tf.function(input_signature=[raw_input_spec(model)])
    def serve(raw):
        extracted = features(preprocessing(raw))
        if isinstance(extracted, dict):  # several cuts (a multi-layer head): features_cut0, features_cut1, ...
            named = [tf.identity(t, name=f"features_cut{number}") for number, t in enumerate(extracted.values())]
        else:
            named = tf.identity(extracted, name="features")
        probabilities = tf.identity(head(named, training=False), name="probabilities")
        if class_names is None:
            return {"probabilities": probabilities}
        names = tf.constant(list(class_names), name="class_names")
        return {"probabilities": probabilities,
                "classes": tf.identity(tf.broadcast_to(names, tf.shape(probabilities)), name="classes"),
                "predicted_class": tf.gather(names, tf.argmax(probabilities, axis=-1), name="predicted_class")}

    return serve


def export_saved_model(model, path: Path, class_names=None) -> Path:
    module = tf.Module()
    module.model = model  # tracks the head's variables
    module.serve = serving_function(model, class_names)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def export_frozen_graph(model, path: Path, class_names=None) -> Path:
    frozen = freeze_function(serving_function(model, class_names).get_concrete_function())
    path.write_bytes(frozen.graph_def.SerializeToString())
    return path


def export_tflite(model, path: Path) -> Path:
    """Converted from a SavedModel of the *frozen* serving function: converting one with variables
    keeps them as TFLite resource variables that the interpreter never initialises."""
    function = serving_function(model).get_concrete_function()
    frozen = _compat.freeze_variables(function)

    @tf.function(input_signature=function.structured_input_signature[0])
    def serve(raw):
        return {"probabilities": frozen(raw)[0]}

    module = tf.Module()
    module.serve = serve
    with tempfile.TemporaryDirectory() as constants_only:
        tf.saved_model.save(module, constants_only, signatures={"serving_default": serve})
        path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(constants_only).convert())
    return path


def export_all(model, directory: Path, formats, class_names) -> dict[str, str]:
    """Write the requested formats into `directory`, with `labels.txt` (class names from file or
    folder names, escaped as `printable` so that each stays on its line)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {"labels": directory / LABELS}
    written["labels"].write_text("".join(f"{printable(name)}\n" for name in class_names), encoding="utf-8")
    if "savedmodel" in formats:
        written["savedmodel"] = export_saved_model(model, directory / SAVED_MODEL, class_names)
    if "pb" in formats:
        written["pb"] = export_frozen_graph(model, directory / FROZEN_GRAPH, class_names)
    if "tflite" in formats:
        written["tflite"] = export_tflite(model, directory / TFLITE)
    return {name: str(path) for name, path in written.items()}
