"""The names a user chooses among, each list in one place.

The CLI offers them (argparse `choices`, help texts) without importing TensorFlow, and the modules
that act on them check values against the same tuples, so a new engine, strategy or format is
added here once.
"""
from __future__ import annotations

from pathlib import Path

ENGINES = ("tf", "onnxruntime", "openvino", "auto")  # what runs the frozen backbone when features are extracted
PRECISIONS = ("fp32", "int8")  # the arithmetic it runs in: int8 is a quantized model (OpenVINO, NNCF)
INT8_ENGINES = ("openvino", "auto")  # the engines --precision int8 runs on
RUNNERS = ("local", "beam", "dask")  # where extraction runs (dask: beam on a Dask cluster)
STRATEGIES = ("default", "mirrored", "multiworker")  # where training runs (tf.distribute)
POOLS = ("none", "avg", "max", "grid2")  # what extraction may do to spatial features before they are stored
CACHE_DTYPES = ("float32", "float16")  # how the cache stores features
EXPORT_FORMATS = ("savedmodel", "pb", "tflite")  # what a run exports
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam")  # Keras' names
HEADS = ("attention", "conv", "linear", "logreg", "mlp", "multilayer")  # the heads transfer.heads registers
HEAD_ENTRY_POINTS = "transfer.heads"  # the entry-point group of third-party heads (read before TensorFlow too)
EXAMPLE_PREFIX = "example:"  # --backbone example:NAME: a graph shipped in transfer/examples
EXAMPLES_DIR = Path(__file__).parent / "examples"
