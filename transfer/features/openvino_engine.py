"""The frozen backbone under OpenVINO, in FP32 or quantized to INT8 by NNCF.

OpenVINO converts a frozen GraphDef but does not cut it: the backbone's pruned graph (the same
sub-graph ONNX gets, `transfer.features.converted`) is converted, one Identity per cut added so
that every cut, consumed or not, is a model output. INT8 is NNCF's post-training quantization of
that model on a calibration sample of the training split (`transfer.features.calibration`), then
compared with the FP32 model on held-back training examples (`fidelity`): a quantization that
does not keep the features is refused. Both models are kept on disk (`openvino/` in the cache),
keyed by the pruned graph, OpenVINO's (and NNCF's) version, the precision and the calibration
sample's identity; the INT8 model's verdict is kept beside it, so no worker or later run
re-quantizes or re-checks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from transfer.features.converted import ConversionFailed, default_dir, first_line, model_key, pruned_graph
from transfer.files import write_atomic

# INT8 is kept when, on the held-back training examples, the mean per-example cosine similarity
# of INT8 and FP32 features is at least COSINE (every cut) and the per-channel means differ by at
# most MEANS (|mean_int8 - mean_fp32| / |mean_fp32|, vector norms over the channels, every cut).
# Real networks quantized by NNCF give 0.99+ and a few percent (experiments/README.md).
COSINE, MEANS = 0.98, 0.1
INSTALL = "pip install 'transfer[openvino]'"
OUTPUT = "transfer_output_{}"  # the Identity added after each cut


@dataclasses.dataclass
class Verdict:
    """How INT8 features agree with FP32 ones on held-back training examples."""

    cosine: float  # the smallest (over cuts) mean per-example cosine similarity
    means: float  # the largest (over cuts) relative error of the per-channel means
    examples: int

    @property
    def kept(self) -> bool:
        return self.cosine >= COSINE and self.means <= MEANS

    def __str__(self) -> str:
        return f"cosine {self.cosine:.3f} vs fp32 on {self.examples} examples"


class OpenVino:
    """A converted (and maybe quantized) backbone, compiled for the CPU: batch -> features as
    `Backbone.__call__` gives them. `made`: what this process did to get it (seconds for
    "converted", "quantized", "checked"; empty when everything was kept on disk)."""

    def __init__(self, compiled, backbone, path: Path, precision: str = "fp32", verdict: Verdict | None = None):
        self.request = compiled.create_infer_request()
        self.inputs = [(port.get_any_name(), port.get_element_type().to_dtype()) for port in compiled.inputs]
        self.outputs = [compiled.output(f"{OUTPUT.format(index)}:0") for index in range(len(backbone.cuts))]
        self.order = _input_order(backbone, [name for name, _ in self.inputs])
        self.ordered = backbone.ordered_inputs
        self.keys = [c.spec for c in backbone.cuts] if backbone.multi_cut else None
        self.dtypes = [spec.dtype for spec in backbone.feature_specs.values()]
        self.path, self.precision, self.verdict = path, precision, verdict
        self.calibration = None  # INT8: which training examples it was calibrated on (the feature cache's key)
        self.made = {}

    @classmethod
    def for_backbone(cls, backbone, cache_dir=None) -> "OpenVino":
        """The FP32 model, converted once and kept."""
        return _fp32(backbone, cache_dir, pruned_graph(backbone))[0]

    @classmethod
    def quantized(cls, backbone, calibration, cache_dir=None) -> "OpenVino":
        """The INT8 model of `calibration` (`transfer.features.calibration.Calibration`), quantized
        and checked once and kept; `verdict` says whether it keeps the features.

        A first run makes everything once, in memory: the pruned graph is converted and compiled
        once, and that FP32 model is what NNCF calibrates and what the check compares with; the
        INT8 model compiled for the check is the one returned (nothing is read back from disk)."""
        with no_telemetry():
            import nncf

        pruned = pruned_graph(backbone)
        key = model_key(*pruned, _version(), nncf.__version__, "int8", calibration.identity)
        path = _directory(cache_dir) / f"{key[:32]}.int8.xml"
        verdict_path = path.with_suffix(".json")
        if path.is_file() and verdict_path.is_file():
            quantized = cls(compile_model(_load(path)), backbone, path, "int8",
                            Verdict(**json.loads(verdict_path.read_text())))
        else:
            fp32, fp32_model = _fp32(backbone, cache_dir, pruned)
            start = time.perf_counter()
            model = _quantize(fp32_model, [fp32.feeds(batch) for batch in calibration.batches])
            quantized = cls(compile_model(model), backbone, path, "int8")
            checked = time.perf_counter()
            quantized.verdict = fidelity(fp32, quantized, calibration.held_back)
            quantized.made = {**fp32.made, "quantized": checked - start, "checked": time.perf_counter() - checked}
            _save(model, path)
            write_atomic(verdict_path, json.dumps(dataclasses.asdict(quantized.verdict)).encode())
        quantized.calibration = {key: value for key, value in calibration.identity.items()
                                 if key not in ("data", "input")}  # those are the feature key's already
        return quantized

    def feeds(self, inputs) -> dict:
        values = self.ordered(inputs)
        return {name: np.asarray(values[index], dtype) for (name, dtype), index in zip(self.inputs, self.order)}

    def __call__(self, inputs):
        results = self.request.infer(self.feeds(inputs))
        values = [tf.cast(results[port], dtype) for port, dtype in zip(self.outputs, self.dtypes)]
        return dict(zip(self.keys, values)) if self.keys else values[0]


def fidelity(fp32, int8, sample) -> Verdict:
    """How `int8`'s features agree with `fp32`'s on `sample` (a batch of prepared examples)."""
    cosines, means = [], []
    for e, g in zip(_listed(fp32(sample)), _listed(int8(sample))):
        flat_e, flat_g = e.reshape(len(e), -1), g.reshape(len(g), -1)
        norms = np.linalg.norm(flat_e, axis=1) * np.linalg.norm(flat_g, axis=1)
        cosines.append(float(np.mean(np.sum(flat_e * flat_g, axis=1) / np.maximum(norms, 1e-30))))
        channels = e.shape[-1] if e.ndim > 1 else 1  # channels last
        mean_e, mean_g = e.reshape(-1, channels).mean(axis=0), g.reshape(-1, channels).mean(axis=0)
        means.append(float(np.linalg.norm(mean_g - mean_e) / max(float(np.linalg.norm(mean_e)), 1e-30)))
    return Verdict(min(cosines), max(means), len(e))


def _listed(features) -> list[np.ndarray]:
    values = [features[k] for k in sorted(features)] if isinstance(features, dict) else [features]
    return [np.asarray(v, np.float64) for v in values]


def _fp32(backbone, cache_dir, pruned) -> tuple:
    """(the backbone's FP32 model compiled, as an `OpenVino`; the model itself, what NNCF
    quantizes), converted now (and kept) if it is not on disk yet."""
    graph_def, inputs, outputs = pruned
    key = model_key(graph_def, inputs, outputs, _version(), "fp32")
    path = _directory(cache_dir) / f"{key[:32]}.xml"
    start = time.perf_counter()
    if path.is_file():
        model, made = _load(path), {}
        compiled = compile_model(model)
    else:
        model, compiled = convert(graph_def, backbone.pruned_function.outputs)
        _save(model, path)
        made = {"converted": time.perf_counter() - start}
    fp32 = OpenVino(compiled, backbone, path)
    fp32.made = made
    return fp32, model


def _directory(cache_dir) -> Path:
    return (Path(cache_dir) if cache_dir else default_dir()) / "openvino"


def convert(graph_def, outputs) -> tuple:
    """(model, compiled model): `openvino.convert_model` on the pruned GraphDef, an Identity
    after each cut, compiled as extraction runs it (which is also what tells that every op
    compiles: some ops convert but do not)."""
    import openvino

    graph_def = type(graph_def).FromString(graph_def.SerializeToString())
    for index, tensor in enumerate(outputs):
        node = graph_def.node.add(name=OUTPUT.format(index), op="Identity")
        node.input.append(tensor.name.removesuffix(":0"))
        node.attr["T"].type = tensor.dtype.as_datatype_enum
    try:
        with no_telemetry():
            model = openvino.convert_model(graph_def)
        return model, compile_model(model)
    except Exception as error:  # noqa: BLE001 - OpenVINO raises plain Exceptions and RuntimeErrors
        raise ConversionFailed(_reason(error)) from None


def compile_model(model):
    """`model` compiled for the CPU in f32: without the hint OpenVINO runs float layers in bf16 on
    CPUs that have it (features off by ~1e-2). An INT8 model's quantized layers still run in int8."""
    import openvino

    return openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _reason(error: Exception) -> str:
    """The line of OpenVINO's report that names what it could not convert (its first line names
    a source file of OpenVINO's)."""
    lines = [line.strip(" -") for line in str(error).splitlines()]
    named = [line for line in lines if "conversion rule" in line or "not supported" in line.lower()]
    return named[0][:300] if named else first_line(error)


def _quantize(model, batches: list[dict]):
    """NNCF's post-training INT8 quantization of `model` on `batches` (feeds), its logs and
    progress bars silenced.

    NNCF's defaults are kept, measured (experiments/README.md, "OpenVINO FP32 and INT8"): its cost
    is one pass of the FP32 model, with a reduction after every quantized activation, over the
    calibration examples (2-3x a plain FP32 pass, plus ~3 s compiling that model), so it is
    the sample's size (`transfer.features.calibration`) that sets it. Fast bias correction
    (default) rides on the same pass and costs ~1 s more; it corrects the shift INT8 weights give
    each channel's mean, which the fidelity check's channel-means error would otherwise see.
    `subset_size` covers every batch given (NNCF counts items, here batches, up to it)."""
    import io
    import logging

    with no_telemetry():
        import nncf

        nncf.set_log_level(logging.ERROR)
        examples = sum(len(next(iter(batch.values()))) for batch in batches)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(batches), subset_size=max(examples, 1))


@contextlib.contextmanager
def no_telemetry():
    """OpenVINO's converter and NNCF send usage events to Google Analytics unless the user has
    opted out (`opt_in_out --opt_out`) or they run in CI (`CI=true`): extraction must not call
    home, so both run as in CI. Their telemetry decides at each conversion, quantization and
    `import nncf`."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = before


def _save(model, path: Path) -> None:
    """The model's .bin, then its .xml (what a reader looks for): never half of one on disk."""
    import openvino

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        openvino.save_model(model, Path(scratch) / "model.xml", compress_to_fp16=False)
        write_atomic(path.with_suffix(".bin"), (Path(scratch) / "model.bin").read_bytes())
        write_atomic(path, (Path(scratch) / "model.xml").read_bytes())


def _load(path: Path):
    import openvino

    return openvino.Core().read_model(path)


def _input_order(backbone, names: list[str]) -> list[int]:
    """For each of the model's inputs, its index in the backbone's input order."""
    wanted = [t.name for t in backbone.pruned_function.inputs]
    return [wanted.index(name) if name in wanted else index for index, name in enumerate(names)]


def _version() -> str:
    import openvino

    return openvino.__version__
