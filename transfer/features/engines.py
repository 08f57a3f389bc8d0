"""What runs the frozen part of a backbone when features are extracted: TensorFlow, ONNX Runtime
or OpenVINO, in FP32 or (OpenVINO) INT8.

`tf` runs the backbone's pruned function. `onnxruntime` and `openvino` convert that same pruned
graph once (kept on disk, keyed by the graph's bytes, the converter and its settings), check on
the first batch that their features agree with TensorFlow's, and fall back to TensorFlow with a
warning if they do not (or cannot convert). `auto` takes the fastest of those installed that
convert and agree, timed on the run's first batch (measured, not assumed). `precision="int8"`
runs OpenVINO's model quantized by NNCF (`transfer.features.openvino_engine`), checked against
FP32 on held-back training examples instead, and refused (FP32 then) when it does not keep the
features. Training never runs here: heads and thawed layers are TensorFlow/Keras.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer.errors import TransferError, TransferWarning, check_choice
from transfer.choices import ENGINES, INT8_ENGINES, PRECISIONS
from transfer.features.openvino_engine import OpenVino
from transfer.features.converted import ConversionFailed, default_dir, first_line, model_key, pruned_graph
from transfer.files import write_atomic

OPSET = 17
# Agreement on the first batch: max |onnxruntime - tf| <= RELATIVE * max |tf| + ABSOLUTE.
RELATIVE, ABSOLUTE = 1e-4, 1e-5
INSTALLS = {"onnxruntime": "pip install 'transfer[onnx]'", "openvino": "pip install 'transfer[openvino]'"}
NEEDS = {"onnxruntime": "onnxruntime and tf2onnx", "openvino": "openvino"}
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
CONVERTERS = {"onnxruntime": "ONNX", "openvino": "OpenVINO"}


@dataclasses.dataclass
class Engine:
    """A callable batch -> features (as `Backbone.__call__` gives them) and what was decided."""

    name: str  # "tf", "onnxruntime" or "openvino": what really runs
    run: object
    note: str = ""
    precision: str = "fp32"  # "int8": a quantized model runs (OpenVINO)

    def __call__(self, inputs):
        return self.run(inputs)


def check_engine(engine: str, precision: str = "fp32") -> None:
    check_choice("engine", engine, ENGINES, flag="--engine")
    check_choice("precision", precision, PRECISIONS, flag="--precision")
    if precision == "int8" and engine not in INT8_ENGINES:
        raise TransferError(f"--precision int8 runs on --engine {' or '.join(INT8_ENGINES)} (OpenVINO, quantized by "
                            f"NNCF), not on --engine {engine}")


def choose_engine(backbone, engine: str = "tf", sample=None, cache_dir=None, precision: str = "fp32",
                  calibration=None) -> Engine:
    """The engine for `backbone`; `sample` (a first batch, already preprocessed) is what the
    agreement check and `auto`'s timing run on; `calibration` (`transfer.features.calibration`):
    the training examples an INT8 model is quantized and checked on."""
    check_engine(engine, precision)
    if engine == "tf":
        return Engine("tf", backbone)
    if precision == "int8":
        return _int8(backbone, engine, sample, cache_dir, calibration)
    if engine == "auto":
        return _fastest(backbone, sample, cache_dir)
    return _checked(backbone, engine, sample, cache_dir)


def _checked(backbone, engine: str, sample, cache_dir, auto: bool = False) -> Engine:
    """`engine`, converted and checked against TensorFlow on `sample`; TensorFlow if it cannot
    convert or disagrees (with a warning; `auto` says so in its note only when not installed)."""
    label = LABELS[engine]
    try:
        runtime = RUNTIMES[engine](backbone, cache_dir)
    except ImportError as error:
        if auto:
            return Engine("tf", backbone, f"{engine} not installed ({error.name})")
        raise TransferError(f"--engine {engine} needs {NEEDS[engine]}; install them: {INSTALLS[engine]}") from None
    except ConversionFailed as failure:
        warnings.warn(f"{CONVERTERS[engine]} conversion failed, extracting with TensorFlow: {failure}", TransferWarning,
                      stacklevel=3)
        return Engine("tf", backbone, f"{engine}: TensorFlow (conversion failed)")
    if sample is None:
        return Engine(engine, runtime, f"{engine} (not checked against TensorFlow: no sample batch)")
    difference = agreement(backbone, runtime, sample)
    if difference is not None:
        warnings.warn(f"{label}'s features differ from TensorFlow's by {difference:.3g} (allowed: "
                      f"{RELATIVE:g} x max|features| + {ABSOLUTE:g}); extracting with TensorFlow", TransferWarning,
                      stacklevel=3)
        return Engine("tf", backbone, f"{engine}: TensorFlow ({label} disagreed by {difference:.3g})")
    return Engine(engine, runtime, f"{engine} (agrees with TensorFlow on the first batch)")


def _fastest(backbone, sample, cache_dir) -> Engine:
    """`auto`: every installed engine that converts and agrees, timed on `sample`; the fastest."""
    candidates, skipped = [], []
    for name in RUNTIMES:
        engine = _checked(backbone, name, sample, cache_dir, auto=True)
        (candidates if engine.name == name else skipped).append(engine)
    if sample is None or not candidates:
        reasons = "; ".join(engine.note for engine in skipped) or "no sample batch to time engines on"
        return Engine("tf", backbone, f"auto: TensorFlow ({reasons})")
    batch = len(np.asarray(backbone.ordered_inputs(sample)[0]))
    seconds = _seconds(backbone, sample)
    speedups = {engine.name: seconds / _seconds(engine, sample) for engine in candidates}
    best = max(candidates, key=lambda engine: speedups[engine.name])
    others = ", ".join(f"{name} {speedup:.2f}x" for name, speedup in speedups.items() if name != best.name)
    if speedups[best.name] > 1:
        return dataclasses.replace(best, note=f"auto: {best.name}, {speedups[best.name]:.2f}x TensorFlow at batch "
                                              f"{batch}" + (f" ({others})" if others else ""))
    everyone = ", ".join(f"{LABELS[name]} is {speedup:.2f}x" for name, speedup in speedups.items())
    return Engine("tf", backbone, f"auto: TensorFlow, {everyone} at batch {batch}")


def _int8(backbone, engine: str, sample, cache_dir, calibration) -> Engine:
    """OpenVINO INT8 (`auto` too: the one INT8 engine), kept only if its features agree with
    FP32's on held-back training examples; else OpenVINO FP32, with one line saying why."""
    from transfer.features.openvino_engine import COSINE, MEANS, OpenVino

    if calibration is None:
        raise TransferError("--precision int8 needs a calibration sample of the training split: give the engine "
                            "the inputs' Calibration (transfer.features.calibration)")
    try:
        runtime = OpenVino.quantized(backbone, calibration, cache_dir)
    except ImportError as error:
        raise TransferError(f"--precision int8 needs openvino and nncf ({error.name} is missing); install them: "
                            f"{INSTALLS['openvino']}") from None
    except ConversionFailed as failure:
        warnings.warn(f"OpenVINO conversion failed, extracting with TensorFlow: {failure}", TransferWarning,
                      stacklevel=3)
        return Engine("tf", backbone, f"{engine}: TensorFlow (conversion failed)")
    verdict = runtime.verdict
    if not verdict.kept:
        warnings.warn(f"INT8 features disagree with FP32 ({verdict}, relative error of channel means "
                      f"{verdict.means:.3g}; needs cosine >= {COSINE:g} and <= {MEANS:g}): extracting in fp32",
                      TransferWarning, stacklevel=3)
        fp32 = _checked(backbone, "openvino", sample, cache_dir)
        return dataclasses.replace(fp32, note=f"{fp32.note}; int8 refused: {verdict}")
    return Engine("openvino", runtime, f"openvino int8, {verdict}", precision="int8")


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

        graph_def, inputs, outputs = pruned_graph(backbone)
        key = model_key(graph_def, inputs, outputs, tf2onnx.__version__, OPSET)
        directory = Path(cache_dir) if cache_dir else default_dir()
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


RUNTIMES = {"onnxruntime": OnnxRuntime.for_backbone, "openvino": OpenVino.for_backbone}  # auto times them in this order


def convert(graph_def, inputs: list[str], outputs: list[str]) -> bytes:
    """tf2onnx on a frozen, pruned GraphDef; its own log lines are silenced."""
    import logging

    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    try:
        model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET)
    except Exception as error:  # noqa: BLE001 - tf2onnx raises many kinds for an op it cannot convert
        raise ConversionFailed(first_line(error, limit=None)) from None
    return model.SerializeToString()


def _session(model):
    """An ONNX Runtime session on a model file or its bytes, on whatever device it offers."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(model, options, providers=onnxruntime.get_available_providers())
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ConversionFailed(first_line(error)) from None


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
