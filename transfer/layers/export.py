"""Deployable forms of a trained classifier: SavedModel, frozen `.pb`, TFLite.

All take raw images (what the run's data gives, before preprocessing), or for a non-image
backbone the arrays its input takes, and return class probabilities. The frozen graph names
its feature tensor `features` (several cuts: `features_cut0`, `features_cut1`, … in cut order) and its
output `probabilities`, so `transfer inspect` and `--backbone … --cut features` accept it again.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import tensorflow as tf

from transfer import _compat
from transfer.graph.freezing import freeze_function
from transfer.layers.model import model_parts, raw_input_spec

SAVED_MODEL = "saved_model"
FROZEN_GRAPH = "model.pb"
TFLITE = "model.tflite"


def serving_function(model):
    preprocessing, features, head = model_parts(model)

    @tf.function(input_signature=[raw_input_spec(model)])
    def serve(raw):
        extracted = features(preprocessing(raw))
        if isinstance(extracted, dict):  # several cuts (a multi-layer head): features_cut0, features_cut1, ...
            named = [tf.identity(t, name=f"features_cut{number}") for number, t in enumerate(extracted.values())]
        else:
            named = tf.identity(extracted, name="features")
        return {"probabilities": tf.identity(head(named, training=False), name="probabilities")}

    return serve


def export_saved_model(model, path: Path) -> Path:
    module = tf.Module()
    module.model = model  # tracks the head's variables
    module.serve = serving_function(model)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def export_frozen_graph(model, path: Path) -> Path:
    frozen = freeze_function(serving_function(model).get_concrete_function())
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


def export_all(model, directory: Path, formats) -> dict[str, str]:
    """Write the requested formats into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    if "savedmodel" in formats:
        written["savedmodel"] = export_saved_model(model, directory / SAVED_MODEL)
    if "pb" in formats:
        written["pb"] = export_frozen_graph(model, directory / FROZEN_GRAPH)
    if "tflite" in formats:
        written["tflite"] = export_tflite(model, directory / TFLITE)
    return {name: str(path) for name, path in written.items()}
