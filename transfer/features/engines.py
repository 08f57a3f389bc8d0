"""What runs the frozen part of a backbone when features are extracted: TensorFlow, or ONNX Runtime.

`tf` runs the backbone's pruned function. `onnxruntime` converts that same pruned graph with
tf2onnx once (kept on disk, keyed by the graph's bytes, the converter and the opset), checks on
the first batch that its features agree with TensorFlow's, and falls back to TensorFlow with a
warning if they do not. `auto` takes ONNX Runtime where it is installed, converts and agrees,
and is faster on the run's first batch (measured, not assumed). Training never runs here: heads
and thawed layers are TensorFlow/Keras.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer.errors import TransferError, TransferWarning, check_choice
from transfer.choices import ENGINES
from transfer.files import write_atomic

OPSET = 17
# Agreement on the first batch: max |onnxruntime - tf| <= RELATIVE * max |tf| + ABSOLUTE.
RELATIVE, ABSOLUTE = 1e-4, 1e-5
INSTALL = "pip install 'transfer[onnx]'"


@dataclasses.dataclass
class Engine:
    """A callable batch -> features (as `Backbone.__call__` gives them) and what was decided."""

    name: str  # "tf" or "onnxruntime": what really runs
    run: object
    note: str = ""

    def __call__(self, inputs):
        return self.run(inputs)


def check_engine(engine: str) -> None:
    check_choice("engine", engine, ENGINES, flag="--engine")


def choose_engine(backbone, engine: str = "tf", sample=None, cache_dir=None) -> Engine:
    """The engine for `backbone`; `sample` (a first batch, already preprocessed) is what the
    agreement check and `auto`'s timing run on."""
    check_engine(engine)
    if engine == "tf":
        return Engine("tf", backbone)
    try:
        runtime = OnnxRuntime.for_backbone(backbone, cache_dir)
    except ImportError as error:
        if engine == "auto":
            return Engine("tf", backbone, f"auto: TensorFlow (onnxruntime/tf2onnx not installed: {error.name})")
        raise TransferError(f"--engine onnxruntime needs onnxruntime and tf2onnx; install them: {INSTALL}") from None
    except ConversionFailed as failure:
        warnings.warn(f"ONNX conversion failed, extracting with TensorFlow: {failure}", TransferWarning, stacklevel=2)
        return Engine("tf", backbone, f"{engine}: TensorFlow (conversion failed)")
    if sample is None:
        return Engine("onnxruntime", runtime, "onnxruntime (not checked against TensorFlow: no sample batch)")
    difference = agreement(backbone, runtime, sample)
    if difference is not None:
        warnings.warn(f"ONNX Runtime's features differ from TensorFlow's by {difference:.3g} (allowed: "
                      f"{RELATIVE:g} x max|features| + {ABSOLUTE:g}); extracting with TensorFlow", TransferWarning,
                      stacklevel=2)
        return Engine("tf", backbone, f"{engine}: TensorFlow (ONNX Runtime disagreed by {difference:.3g})")
    if engine == "onnxruntime":
        return Engine("onnxruntime", runtime, "onnxruntime (agrees with TensorFlow on the first batch)")
    speedup = _seconds(backbone, sample) / _seconds(runtime, sample)
    batch = len(np.asarray(backbone.ordered_inputs(sample)[0]))
    if speedup > 1:
        return Engine("onnxruntime", runtime, f"auto: onnxruntime, {speedup:.2f}x TensorFlow at batch {batch}")
    return Engine("tf", backbone, f"auto: TensorFlow, ONNX Runtime is {speedup:.2f}x at batch {batch}")


class ConversionFailed(Exception):
    """tf2onnx could not convert the graph (an op it does not know, say)."""


class OnnxRuntime:
    """The backbone's pruned graph converted to ONNX, run by an ONNX Runtime session."""

    def __init__(self, model_path: Path, backbone):
        self.session = _session(str(model_path))
        self.inputs = [(i.name, _numpy_dtype(i.type)) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ordered = backbone.ordered_inputs  # fed as the backbone is: by name, in its input order
        self.keys = [c.spec for c in backbone.cuts] if backbone.multi_cut else None
        self.dtypes = [spec.dtype for spec in backbone.feature_specs.values()]  # int/bool cuts become float
        self.path = model_path

    @classmethod
    def for_backbone(cls, backbone, cache_dir=None) -> "OnnxRuntime":
        import onnxruntime  # noqa: F401  (ImportError here: not installed)
        import tf2onnx

        function = backbone.pruned_function
        graph_def = function.graph.as_graph_def()
        inputs, outputs = [t.name for t in function.inputs], [t.name for t in function.outputs]
        key = hashlib.sha256(b"".join([graph_def.SerializeToString(deterministic=True),
                                       repr((inputs, outputs, tf2onnx.__version__, OPSET)).encode()])).hexdigest()
        directory = Path(cache_dir) if cache_dir else _default_dir()
        path = directory / "onnx" / f"{key[:32]}.onnx"
        if not path.is_file():
            model = convert(graph_def, inputs, outputs)
            _session(model)  # tf2onnx passes ops it cannot convert through; ONNX Runtime refuses them
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, model)
        return cls(path, backbone)

    def __call__(self, inputs):
        feeds = {name: np.asarray(value, dtype) for (name, dtype), value in zip(self.inputs, self.ordered(inputs))}
        results = [tf.cast(r, dtype) for r, dtype in zip(self.session.run(self.outputs, feeds), self.dtypes)]
        return dict(zip(self.keys, results)) if self.keys else results[0]


def convert(graph_def, inputs: list[str], outputs: list[str]) -> bytes:
    """tf2onnx on a frozen, pruned GraphDef; its own log lines are silenced."""
    import logging

    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    try:
        model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET)
    except Exception as error:  # noqa: BLE001 - tf2onnx raises many kinds for an op it cannot convert
        raise ConversionFailed((str(error).strip() or type(error).__name__).splitlines()[0]) from None
    return model.SerializeToString()


def _session(model):
    """An ONNX Runtime session on a model file or its bytes, on whatever device it offers."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(model, options, providers=onnxruntime.get_available_providers())
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ConversionFailed((str(error).strip() or type(error).__name__).splitlines()[0][:300]) from None


def agreement(backbone, runtime, sample) -> float | None:
    """None if the two engines agree on `sample`, else their largest difference."""
    expected, got = _flat(backbone(sample)), _flat(runtime(sample))
    worst = max(float(np.max(np.abs(e - g))) if e.size else 0.0 for e, g in zip(expected, got))
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in expected)
    return None if worst <= RELATIVE * scale + ABSOLUTE else worst


def _flat(features) -> list[np.ndarray]:
    values = [features[k] for k in sorted(features)] if isinstance(features, dict) else [features]
    return [np.asarray(v, np.float64) for v in values]


def _seconds(run, sample, repeats: int = 3) -> float:
    """Best of `repeats` timed calls after one warm-up: the first call of either engine pays
    for graph optimisation or session set-up, which a whole extraction amortises."""
    _flat(run(sample))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _flat(run(sample))
        best = min(best, time.perf_counter() - start)
    return best


def _numpy_dtype(onnx_type: str):
    names = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(uint8)": np.uint8,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
             "tensor(bool)": np.bool_, "tensor(int8)": np.int8}
    return names.get(onnx_type, np.float32)


def _default_dir() -> Path:
    from transfer.features.cache import default_cache_dir

    return default_cache_dir()
