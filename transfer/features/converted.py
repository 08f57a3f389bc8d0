"""What every converting engine (ONNX Runtime, OpenVINO) shares: the backbone's pruned graph as
a GraphDef with its input and output tensor names, the key a converted model is kept under, and
the exception a conversion that cannot be done raises (the engine then falls back to TensorFlow)."""
from __future__ import annotations

import hashlib
from pathlib import Path


class ConversionFailed(Exception):
    """A converter could not convert the graph (an op it does not know, say)."""


def pruned_graph(backbone) -> tuple:
    """(GraphDef, input tensor names, output tensor names) of the backbone's pruned function:
    the sub-graph from its inputs to its cuts, nothing else."""
    function = backbone.pruned_function
    return (function.graph.as_graph_def(), [t.name for t in function.inputs], [t.name for t in function.outputs])


def model_key(graph_def, inputs: list[str], outputs: list[str], *settings) -> str:
    """A converted model's key: the pruned graph's bytes, its names and the converter's settings."""
    return hashlib.sha256(b"".join([graph_def.SerializeToString(deterministic=True),
                                    repr((inputs, outputs, *settings)).encode()])).hexdigest()


def first_line(error: Exception, limit: int = 300) -> str:
    return ((str(error).strip() or type(error).__name__).splitlines() or [type(error).__name__])[0][:limit]


def default_dir() -> Path:
    from transfer.features.cache import default_cache_dir

    return default_cache_dir()
