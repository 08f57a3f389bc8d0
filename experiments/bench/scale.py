"""Extraction on Apache Beam workers against the single-process `transfer extract`, in one run.

Network: keras.applications.MobileNetV2 (weights=None, 128×128×3 input), frozen to a .pb and
cut at `auto` (the 1280-D pooled features). Data: scikit-learn's digits (`--data digits`,
resized to 128×128 RGB by the input pipeline), one split (`--validation-split 0`): a small run
of the digits 0-1 (360 images) and a large run of all 1797. CPU only.

Variants, each a fresh `transfer extract` process with an empty cache, TensorFlow limited to
1 intra-op and 1 inter-op thread (`TF_NUM_INTRAOP_THREADS=1`, `TF_NUM_INTEROP_THREADS=1`, which
the Beam worker processes inherit) so that workers, not threads, share the cores:
  plain     `transfer extract` (one process)
  beam-1    `--runner beam`, DirectRunner, direct_running_mode=multi_processing, 1 worker
  beam-2    the same with 2 workers
and, for reference, `plain` with TensorFlow's default threads (`plain-threads`).
Figures: wall time of each run (start-up included), and the cost per image as the slope between
the small and the large run (start-up, graph loading and worker launch cancel out): throughput
ratios against `plain`. The shards of every variant are compared with plain's (sha256).
Run: `python experiments/bench/scale.py` (~6 min on 2 CPU cores; `--rounds 2` takes the median
of two rounds).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

SIZE = 128
SMALL, LARGE = ("digits:0-1", 360), ("digits", 1797)
CLI = "import sys; from transfer.cli import main; sys.exit(main(sys.argv[1:]))"
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
VARIANTS = {
    "plain": ([], ONE_THREAD),
    "beam-1": (["--runner", "beam", "--beam-option", "direct_running_mode=multi_processing",
                "--beam-option", "direct_num_workers=1"], ONE_THREAD),
    "beam-2": (["--runner", "beam", "--beam-option", "direct_running_mode=multi_processing",
                "--beam-option", "direct_num_workers=2"], ONE_THREAD),
    "plain-threads": ([], {}),
}


def build_network(workdir: Path) -> Path:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path = workdir / f"mobilenet_v2_{SIZE}.pb"
    path.write_bytes(convert_variables_to_constants_v2(function).graph.as_graph_def().SerializeToString())
    return path


def extract(pb: Path, data: str, cache: Path, flags: list, env: dict) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all processes) of one `transfer extract` into an empty cache."""
    argv = [sys.executable, "-c", CLI, "extract", "--backbone", str(pb), "--data", data, "--validation-split", "0",
            "--batch-size", "32", "--cache-dir", str(cache), "--json", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def shard_digests(cache: Path) -> dict:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cache.rglob("*")) if p.is_file() and p.name != ".lock"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the variants (median; default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pb = build_network(workdir)
        runs = {(name, size): [] for name in VARIANTS for _, size in (SMALL, LARGE)}
        digests = {}
        for round_ in range(args.rounds):
            for name, (flags, env) in VARIANTS.items():
                for data, size in (SMALL, LARGE):
                    cache = workdir / f"cache-{name}-{size}-{round_}"
                    runs[name, size].append(extract(pb, data, cache, flags, env))
                    print(f"{name:14s} {size:5d} images: {runs[name, size][-1][0]:6.1f} s wall, "
                          f"{runs[name, size][-1][1]:6.1f} s CPU", flush=True)
                    if size == LARGE[1]:
                        digests[name] = shard_digests(cache)
        report(runs, digests, args.json)


def report(runs: dict, digests: dict, json_path: str | None) -> None:
    small, large = SMALL[1], LARGE[1]
    wall = {key: statistics.median(w for w, _ in values) for key, values in runs.items()}
    cpu = {key: statistics.median(c for _, c in values) for key, values in runs.items()}
    per_image = {name: (wall[name, large] - wall[name, small]) / (large - small) for name in VARIANTS}
    figures = {name: {"wall_small_s": round(wall[name, small], 2), "wall_large_s": round(wall[name, large], 2),
                      "cpu_large_s": round(cpu[name, large], 2),
                      "ms_per_image": round(1000 * per_image[name], 2),
                      "throughput_vs_plain": round(per_image["plain"] / per_image[name], 2),
                      "whole_run_vs_plain": round(wall["plain", large] / wall[name, large], 2),
                      "same_shards_as_plain": digests[name] == digests["plain"]}
               for name in VARIANTS}
    print(f"\nTensorFlow {tf.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end; images {small} and {large}")
    header = ("variant", f"wall {small}", f"wall {large}", f"CPU {large}", "ms/image", "throughput ×", "whole run ×",
              "same shards")
    rows = [(name, f"{f['wall_small_s']:.1f} s", f"{f['wall_large_s']:.1f} s", f"{f['cpu_large_s']:.1f} s",
             f"{f['ms_per_image']:.2f}", f"{f['throughput_vs_plain']:.2f}", f"{f['whole_run_vs_plain']:.2f}",
             str(f["same_shards_as_plain"])) for name, f in figures.items()]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  " + "  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    print(f"\n  Beam path per image at 1 worker: {figures['beam-1']['throughput_vs_plain']:.2f}× plain (goal ≥ 0.9×); "
          f"2 workers: {figures['beam-2']['throughput_vs_plain']:.2f}× plain")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
