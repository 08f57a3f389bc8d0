"""Extraction throughput: TensorFlow's pruned function against ONNX Runtime, in one run.

Networks: keras.applications ResNet50 and MobileNetV2 (weights=None, 224x224), frozen to a
.pb and cut at `auto` (the penultimate features), as `transfer extract --engine ...` runs them.
For each network: conversion time and the converting process's peak memory (tf2onnx, opset
17, in a child process), the features' largest difference, and images per second at batch 1
and 32 with rounds interleaved so that machine drift hits both engines alike (median of the
rounds). Goals (issue 13): >= 1.3x on ResNet50 and >= 2x on MobileNetV2 at batch 32.
Run: `python experiments/bench/engine.py` (~6 min on 2 cores; needs `pip install '.[onnx]'`).
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

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer._compat import freeze_variables
from transfer import Backbone
from transfer.features.engines import OnnxRuntime, agreement

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="ResNet50,MobileNetV2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        for name in args.networks.split(","):
            path = frozen(name, workdir)
            seconds, peak = convert_in_child(path, workdir)
            backbone = Backbone.load(path, cut="auto")
            runtime = OnnxRuntime.for_backbone(backbone, workdir)
            engines = {"tf": backbone, "onnxruntime": runtime}
            rng = np.random.default_rng(0)
            sample = rng.uniform(-1, 1, (32, 224, 224, 3)).astype("float32")
            expected, got = np.asarray(backbone(sample)), np.asarray(runtime(sample))
            difference = float(np.max(np.abs(expected - got)))
            row = {"network": name, "convert_s": round(seconds, 1), "convert_peak_mib": peak,
                   "max_difference": difference, "relative_difference": difference / float(np.max(np.abs(expected))),
                   "agrees": agreement(backbone, runtime, sample) is None}
            for batch_size, iterations in ((1, 10), (32, 2)):
                speed = images_per_second(engines, sample[:batch_size], args.rounds, iterations)
                row[f"tf_ips_b{batch_size}"] = round(speed["tf"], 1)
                row[f"ort_ips_b{batch_size}"] = round(speed["onnxruntime"], 1)
                row[f"ratio_b{batch_size}"] = round(speed["onnxruntime"] / speed["tf"], 2)
            rows.append(row)
            print(json.dumps(row) if args.json else
                  f"{name}: conversion {row['convert_s']} s (peak {peak} MiB); max difference {difference:.2e} "
                  f"(relative {row['relative_difference']:.1e}); batch 1: TF {row['tf_ips_b1']} img/s, ORT "
                  f"{row['ort_ips_b1']} img/s = {row['ratio_b1']}x; batch 32: TF {row['tf_ips_b32']} img/s, "
                  f"ORT {row['ort_ips_b32']} img/s = {row['ratio_b32']}x", flush=True)


if __name__ == "__main__":
    main()
