"""transfer: reuse frozen TensorFlow graphs and SavedModels as Keras feature layers.

Importing the package registers its Keras classes (FeatureLayer, the preprocessing layer, the
heads), so that `keras.models.load_model` finds them in a fresh process after `import transfer`.
"""
import sys
from pathlib import Path

from transfer._backend import ensure_tensorflow_backend, import_tensorflow_quietly
from transfer._version import __version__
from transfer.errors import TransferError

ensure_tensorflow_backend()

_PUBLIC = {  # name -> module: the API, imported with TensorFlow
    "heads": None, "Backbone": "graph.backbone", "inspect_graph": "graph.inspection",
    "FeatureLayer": "layers.feature_layer", "PreprocessingLayer": "layers.model",
    "ThawedFeatureLayer": "layers.thawing", "thaw": "layers.thawing", "FeatureExtractor": "features.estimators",
    "GradualUnfreezing": "training.callbacks", "TwoStageSchedule": "training.callbacks",
    "GroupedOptimizer": "training.optimizers", "evaluate": "training.prediction", "predict": "training.prediction",
    "ReleaseTracedSteps": "training.trace_memory", "fit": "training.fitting", "TrainingSettings": "training.settings",
}


def load_tensorflow() -> None:
    """Import TensorFlow (quietly) and every module of the API, which registers the Keras classes
    (FeatureLayer, heads, ...) so that `keras.models.load_model` finds them."""
    import importlib

    import_tensorflow_quietly()
    for name, module in _PUBLIC.items():
        globals()[name] = getattr(importlib.import_module(f"transfer.{module}"), name) if module else \
            importlib.import_module(f"transfer.{name}")


def _run_as_the_command() -> bool:
    """`transfer --help`, argument errors and `transfer cache ls` must not wait ~10 s for
    TensorFlow: the `transfer` command loads it only for the commands that run a graph."""
    if bool(sys.argv) and Path(sys.argv[0]).name == "transfer":
        return True
    run = list(getattr(sys, "orig_argv", ()))  # `python -m transfer` / `python -m transfer.cli`
    return "-m" in run[:-1] and run[run.index("-m") + 1] in ("transfer", "transfer.cli")


def __getattr__(name):
    if name in _PUBLIC:
        load_tensorflow()
        return globals()[name]
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")


if not _run_as_the_command():
    load_tensorflow()

__all__ = ["Backbone", "FeatureExtractor", "FeatureLayer", "GradualUnfreezing", "GroupedOptimizer",
           "PreprocessingLayer", "ReleaseTracedSteps", "TrainingSettings", "TransferError", "TwoStageSchedule",
           "evaluate", "fit", "heads", "inspect_graph", "predict", "thaw", "ThawedFeatureLayer", "__version__"]
