"""transfer: reuse frozen TensorFlow graphs and SavedModels as Keras feature layers.

The public names are imported lazily so that `transfer --help` and `import transfer` stay
fast; TensorFlow loads on first use of the API.
"""
from transfer._backend import ensure_tensorflow_backend
from transfer.errors import TransferError

ensure_tensorflow_backend()

__version__ = "0.1.0"

_LAZY = {
    "Backbone": "transfer.backbone",
    "FeatureLayer": "transfer.layer",
    "inspect_graph": "transfer.inspection",
}

__all__ = ["TransferError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transfer' has no attribute {name!r}")
