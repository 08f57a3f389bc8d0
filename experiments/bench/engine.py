"""Extraction throughput: TensorFlow's pruned function against ONNX Runtime and OpenVINO (FP32 and
INT8), in one run; and what INT8 does to a probe's accuracy.

Networks: keras.applications ResNet50 and MobileNetV2 (weights=None, 224x224), frozen to a
.pb and cut at `auto` (the penultimate features), as `transfer extract --engine ...` runs them.
For each network: conversion time and the converting process's peak memory (tf2onnx, opset
17, in a child process), OpenVINO's conversion time, NNCF's calibration time (INT8 on
`--calibration` synthetic images, checked against FP32 on 32 others, as `--precision int8`
does), the features' largest difference, and images per second at batch 1 and 32 with rounds
interleaved so that machine drift hits every engine alike (median of the rounds).
Probes (`--probes`): FP32 against INT8 OpenVINO features of real trained networks, pooled
(`FeatureExtractor(engine="openvino", precision=...)`, calibrated on the probe's training half
only), a standardized logistic regression's test accuracy: the digits example's cuts, bignet
(experiments/bignet, digits upscaled to 32x32) and the tones network (experiments/audio: audio).
Goals (issue 13): ORT >= 1.3x on ResNet50 and >= 2x on MobileNetV2 at batch 32; (issue 23)
OpenVINO INT8 >= 3.5x TensorFlow at batch 32, probe accuracy within 1 point of FP32.
Run: `python experiments/bench/engine.py` (~10 min on 2 cores; needs `pip install '.[onnx,openvino]'`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer._compat import freeze_variables
from transfer import Backbone
from transfer.features.engines import OnnxRuntime, agreement
from transfer.features.openvino_engine import OpenVino

NETWORKS = {"ResNet50": keras.applications.ResNet50, "MobileNetV2": keras.applications.MobileNetV2}
CONVERT_IN_CHILD = """
import resource, sys, time
import transfer
from transfer import Backbone
from transfer.features.engines import OnnxRuntime
backbone = Backbone.load(sys.argv[1], cut="auto")
start = time.perf_counter()
OnnxRuntime.for_backbone(backbone, sys.argv[2])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def frozen(name: str, workdir: Path) -> Path:
    model = NETWORKS[name](weights=None)
    spec = tf.TensorSpec([None, 224, 224, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path = workdir / f"{name}.pb"
    path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    return path


def convert_in_child(path: Path, cache: Path) -> tuple[float, int]:
    """Seconds to convert and the child's peak RSS (MiB), TF and the loaded graph included."""
    out = subprocess.run([sys.executable, "-c", CONVERT_IN_CHILD, str(path), str(cache)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[-2]), int(out[-1])


def images_per_second(engines: dict, batch: np.ndarray, rounds: int, iterations: int) -> dict[str, float]:
    for run in engines.values():
        np.asarray(run(batch))  # warm-up: graph optimisation, session set-up
    seconds = {name: [] for name in engines}
    for _ in range(rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            for _ in range(iterations):
                np.asarray(run(batch))
            seconds[name].append((time.perf_counter() - start) / iterations)
    return {name: len(batch) / statistics.median(values) for name, values in seconds.items()}


def openvino_engines(path: Path, workdir: Path, calibration_images: int) -> tuple[dict, dict]:
    """({"openvino": FP32, "openvino_int8": INT8}, their conversion and calibration seconds)."""
    backbone = Backbone.load(path, cut="auto")
    start = time.perf_counter()
    fp32 = OpenVino.for_backbone(backbone, workdir)
    converted = time.perf_counter() - start
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (calibration_images + 32, 224, 224, 3)).astype("float32")
    sample = SimpleNamespace(identity={"synthetic": calibration_images}, held_back=images[calibration_images:],
                             batches=[images[i:i + 32] for i in range(0, calibration_images, 32)])
    start = time.perf_counter()
    int8 = OpenVino.quantized(backbone, sample, workdir)
    return {"openvino": fp32, "openvino_int8": int8}, {"ov_convert_s": round(converted, 1),
                                                       "ov_calibrate_s": round(time.perf_counter() - start, 1),
                                                       "int8_cosine": round(int8.verdict.cosine, 4),
                                                       "int8_means_error": round(int8.verdict.means, 4)}


def throughput(name: str, workdir: Path, args) -> dict:
    path = frozen(name, workdir)
    seconds, peak = convert_in_child(path, workdir)
    backbone = Backbone.load(path, cut="auto")
    runtime = OnnxRuntime.for_backbone(backbone, workdir)
    converted, row = openvino_engines(path, workdir, args.calibration)
    engines = {"tf": backbone, "onnxruntime": runtime, **converted}
    sample = np.random.default_rng(0).uniform(-1, 1, (32, 224, 224, 3)).astype("float32")
    expected = np.asarray(backbone(sample))
    differences = {engine: float(np.max(np.abs(expected - np.asarray(engines[engine](sample)))))
                   for engine in ("onnxruntime", "openvino")}
    row = {"network": name, "convert_s": round(seconds, 1), "convert_peak_mib": peak, **row,
           "max_difference": differences["onnxruntime"],
           "relative_difference": differences["onnxruntime"] / float(np.max(np.abs(expected))),
           "ov_relative_difference": differences["openvino"] / float(np.max(np.abs(expected))),
           "agrees": agreement(backbone, runtime, sample) is None,
           "ov_agrees": agreement(backbone, converted["openvino"], sample) is None}
    for batch_size, iterations in ((1, 10), (32, 2)):
        speed = images_per_second(engines, sample[:batch_size], args.rounds, iterations)
        row[f"tf_ips_b{batch_size}"] = round(speed["tf"], 1)
        for engine, short in SHORT.items():
            row[f"{short}_ips_b{batch_size}"] = round(speed[engine], 1)
            row[f"{short}_ratio_b{batch_size}"] = round(speed[engine] / speed["tf"], 2)
    return row


SHORT = {"onnxruntime": "ort", "openvino": "ov", "openvino_int8": "ov_int8"}


def describe(row: dict) -> str:
    speeds = "; ".join(f"batch {b}: TF {row[f'tf_ips_b{b}']} img/s ({1000 * b / row[f'tf_ips_b{b}']:.0f} ms), "
                       + ", ".join(f"{short} {row[f'{short}_ips_b{b}']} img/s = {row[f'{short}_ratio_b{b}']}x"
                                   for short in SHORT.values()) for b in (1, 32))
    return (f"{row['network']}: ONNX conversion {row['convert_s']} s (peak {row['convert_peak_mib']} MiB), OpenVINO "
            f"{row['ov_convert_s']} s, INT8 calibration {row['ov_calibrate_s']} s (cosine {row['int8_cosine']} vs "
            f"fp32, channel means {row['int8_means_error']}); relative difference vs TF: ORT "
            f"{row['relative_difference']:.1e}, OpenVINO {row['ov_relative_difference']:.1e}; {speeds}")


def probe_sets() -> dict:
    """name -> (backbone path, cuts, examples, labels): trained networks and their target tasks."""
    from sklearn.datasets import load_digits

    here = Path(__file__).resolve().parents[1]
    digits = load_digits()
    small = digits.images[..., None].astype("float32")
    large = np.asarray(tf.image.resize(small / 16, (32, 32), method="bilinear"), "float32")
    sys.path.insert(0, str(here / "audio"))
    from pretrain import HELD_OUT_KINDS, make_tones

    waves, kinds = make_tones(HELD_OUT_KINDS, 150, seed=0)
    return {"digits": ("example:digits", "block1_out,block2_out,resnet_features", small, digits.target),
            "bignet": (here / "bignet" / "bignet.pb", "entry2_add,middle2_add,features", large, digits.target),
            "audio": (here / "audio" / "tones.pb", "block2_out,block3_out,audio_features", waves, kinds)}


def probe(path, cuts: str, examples, labels, precision: str, workdir: Path) -> dict:
    """Test accuracy of a standardized logistic regression on each cut's pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transfer import FeatureExtractor

    x_train, x_test, y_train, y_test = train_test_split(examples, labels, test_size=0.5, random_state=0,
                                                        stratify=labels)
    accuracy = {}
    for cut in cuts.split(","):
        extractor = FeatureExtractor(str(path), cut=cut, pooling="avg", engine="openvino", precision=precision,
                                     cache_dir=workdir).fit(x_train)  # calibrated on the training half only
        assert extractor.engine_.precision == precision, extractor.engine_.note
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        model.fit(extractor.transform(x_train), y_train)
        accuracy[cut] = round(float(model.score(extractor.transform(x_test), y_test)), 4)
        accuracy[cut + " note"] = extractor.engine_.note
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="ResNet50,MobileNetV2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=64, help="synthetic calibration images (INT8)")
    parser.add_argument("--probes", default="digits,bignet,audio", help="probe sets, or none")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        for name in args.networks.split(",") if args.networks != "none" else []:
            row = throughput(name, workdir, args)
            print(json.dumps(row) if args.json else describe(row), flush=True)
        sets = probe_sets() if args.probes != "none" else {}
        for name in args.probes.split(",") if sets else []:
            accuracy = {precision: probe(*sets[name], precision, workdir) for precision in ("fp32", "int8")}
            print(json.dumps({"probe": name, **accuracy}) if args.json else f"probe {name}: " + "; ".join(
                f"{cut}: fp32 {accuracy['fp32'][cut]:.3f}, int8 {accuracy['int8'][cut]:.3f} "
                f"({accuracy['int8'][cut + ' note']})" for cut in sets[name][1].split(",")), flush=True)


if __name__ == "__main__":
    main()
