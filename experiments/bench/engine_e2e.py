"""End to end: `transfer extract` of a few thousand images, TensorFlow against OpenVINO INT8.

Each run is a fresh `python -m transfer extract --quiet` process (imports, graph loading,
preprocessing, shard writes, and for OpenVINO conversion, calibration and the fidelity check
included), timed from outside:

  tf          `--engine tf`, into an empty cache;
  int8        `--engine openvino --precision int8`, into an empty cache: the first run, which
              converts the pruned graph, calibrates on training examples and checks on others;
  int8-kept   the same again into int8's cache with `--cache-dtype float16` (a new feature entry,
              the quantized model found on disk): every later run;
  fp32        `--engine openvino`, into an empty cache.

Network: keras.applications ResNet50 (weights=None, 224x224) frozen to a .pb, cut `auto`; data:
`--images` random uint8 224x224 RGB images with 4 labels in an npz (`--validation-split 0`: all
of them extracted as the training split). Built by the script, nothing downloaded. Goal (issue
23): int8 >= 2x tf on its first run. `--python` runs the extractions with another interpreter
(another checkout's venv: before/after a change). The load average is printed before and after:
the ratios only mean something on a quiet machine.
Run: `python experiments/bench/engine_e2e.py` (~7 min on 2 cores; needs `pip install '.[openvino]'`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import frozen  # noqa: E402  (the same frozen ResNet50 as the per-batch benchmark)

RUNS = {"tf": [], "int8": ["--engine", "openvino", "--precision", "int8"],
        "int8-kept": ["--engine", "openvino", "--precision", "int8", "--cache-dtype", "float16"],
        "fp32": ["--engine", "openvino"]}


def images(path: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (count, 224, 224, 3), dtype=np.uint8), y=np.arange(count) % 4)
    return path


def extract(python: str, backbone: Path, data: Path, cache: Path, options: list[str]) -> float:
    """Seconds of one `transfer extract` process; its last error lines if it fails."""
    start = time.perf_counter()
    done = subprocess.run([python, "-m", "transfer", "extract", "--backbone", str(backbone), "--data", f"npz:{data}",
                           "--validation-split", "0", "--cache-dir", str(cache), "--quiet", *options],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(options) or 'tf'} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def load() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="how many images are extracted")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"which runs, in order (of {', '.join(RUNS)})")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs `transfer extract`")
    parser.add_argument("--workdir", help="keep the network and the images here (default: a temporary directory)")
    args = parser.parse_args()
    runs = args.runs.split(",")
    if "int8-kept" in runs and "int8" not in runs[:runs.index("int8-kept")]:
        parser.error("int8-kept needs int8 before it (it reuses int8's cache)")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch).resolve()  # the extractions run in another directory
        workdir.mkdir(parents=True, exist_ok=True)
        backbone = workdir / "ResNet50.pb"
        if not backbone.is_file():
            frozen("ResNet50", workdir)
        data = workdir / f"images{args.images}.npz"
        if not data.is_file():
            images(data, args.images)
        print(f"{args.images} images, ResNet50 224x224, {args.python}; before: {load()}", flush=True)
        seconds, caches = {}, {}
        for run in runs:
            caches[run] = caches["int8"] if run == "int8-kept" else Path(tempfile.mkdtemp(dir=scratch))
            seconds[run] = extract(args.python, backbone, data, caches[run], RUNS[run])
            ratio = f" = {seconds['tf'] / seconds[run]:.2f}x tf" if "tf" in seconds and run != "tf" else ""
            print(f"{run}: {seconds[run]:.1f} s{ratio}", flush=True)
        print(f"after: {load()}", flush=True)


if __name__ == "__main__":
    main()
