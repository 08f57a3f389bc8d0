"""Extraction on Apache Beam workers against the single-process `transfer extract`, in one run.

Network: keras.applications.MobileNetV2 (weights=None, 128×128×3 input), frozen to a .pb and
cut at `auto` (the 1280-D pooled features). Data: scikit-learn's digits repeated 4 times (7188
images, an `.npz` of 8×8 arrays resized to 128×128 RGB by the input pipeline), one split
(`--validation-split 0`), shards of 512 examples (15 work items). CPU only.

Variants, each a fresh `transfer extract` process with an empty cache, TensorFlow limited to
1 intra-op and 1 inter-op thread (`TF_NUM_INTRAOP_THREADS=1`, `TF_NUM_INTEROP_THREADS=1`, which
the Beam worker processes inherit) so that workers, not threads, share the cores:
  plain     `transfer extract` (one process)
  beam-1    `--runner beam`, DirectRunner, direct_running_mode=multi_processing, 1 worker
  beam-2    the same with 2 workers
  dask-1    `--runner dask` on a dask.distributed cluster started for the variant (a scheduler
            and 1 worker process of 1 thread on 127.0.0.1, `distributed.LocalCluster`, the
            workers with the same TensorFlow threads), already running when the command starts
  dask-2    the same with 2 worker processes
and, for reference, `plain` with TensorFlow's default threads (`plain-threads`).
Figures: wall and CPU time of each whole run (start-up, graph loading and worker launch
included; a Dask variant's CPU adds its worker processes' and the scheduler's, measured with
psutil), and the steady throughput: the examples of the shards finished after the first
W (W workers) over the time from the W-th to the last shard's file (start-up excluded), as
ratios against `plain`. The shards of every variant are compared with plain's (sha256).
Run: `python experiments/bench/scale.py` (~6-9 min on 2 CPU cores; `--rounds 2` takes the median
of two rounds, `--shard-size 2048` makes 4 work items instead of 15, `--variants plain,dask-1`
runs some). Dask variants need `pip install 'transfer[dask]'`.
"""
from __future__ import annotations

import argparse
import contextlib
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

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf
from transfer._compat import freeze_variables

SIZE, REPEATS, SHARD = 128, 4, 512
CLI = "import sys; from transfer.cli.main import main; sys.exit(main(sys.argv[1:]))"
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
VARIANTS = {  # name: (flags, environment, workers, a Dask cluster of that many workers)
    "plain": ([], ONE_THREAD, 1, False),
    "beam-1": (["--runner", "beam", "--beam-option", "direct_running_mode=multi_processing",
                "--beam-option", "direct_num_workers=1"], ONE_THREAD, 1, False),
    "beam-2": (["--runner", "beam", "--beam-option", "direct_running_mode=multi_processing",
                "--beam-option", "direct_num_workers=2"], ONE_THREAD, 2, False),
    "dask-1": (["--runner", "dask"], ONE_THREAD, 1, True),
    "dask-2": (["--runner", "dask"], ONE_THREAD, 2, True),
    "plain-threads": ([], {}, 1, False),
}


@contextlib.contextmanager
def dask_cluster(workers: int, env: dict):
    """A scheduler (in this process) and `workers` worker processes of 1 thread on 127.0.0.1:
    (the flags that point `transfer extract` at it, a function giving the CPU seconds its
    processes used so far)."""
    if not workers:
        yield [], lambda: 0.0
        return
    import distributed
    import psutil

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0", silence_logs=40, env=env) as cluster, \
            distributed.Client(cluster) as client:
        processes = [psutil.Process(pid) for pid in client.run(os.getpid).values()]

        def cpu() -> float:
            return time.process_time() + sum(sum(p.cpu_times()[:2]) for p in processes)

        yield ["--beam-option", f"dask_client_address={cluster.scheduler_address}"], cpu


def build_network(workdir: Path) -> Path:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path = workdir / f"mobilenet_v2_{SIZE}.pb"
    path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    return path


def write_data(workdir: Path) -> tuple[str, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = np.tile(digits.images, (REPEATS, 1, 1)).astype("float32"), np.tile(digits.target, REPEATS)
    np.savez(workdir / "digits.npz", x=x, y=y)
    return f"npz:{workdir / 'digits.npz'}", len(y)


def extract(pb: Path, data: str, cache: Path, flags: list, env: dict, shard: int = SHARD) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all processes) of one `transfer extract` into an empty cache."""
    argv = [sys.executable, "-c", CLI, "extract", "--backbone", str(pb), "--data", data, "--validation-split", "0",
            "--batch-size", "32", "--shard-size", str(shard), "--cache-dir", str(cache), "--json", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def steady_rate(cache: Path, workers: int) -> float:
    """Examples per second once every worker has finished a shard: the examples of the later
    shards over the time from the `workers`-th to the last shard's features file."""
    (manifest,) = cache.glob("*/manifest.json")
    shards = json.loads(manifest.read_text())["shards"]
    done = sorted((os.stat(manifest.parent / shard["features"]).st_mtime, shard["count"]) for shard in shards)
    return sum(count for _, count in done[workers:]) / (done[-1][0] - done[workers - 1][0])


def shard_digests(cache: Path) -> dict:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cache.rglob("*")) if p.is_file() and p.name != ".lock"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the variants (median; default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--shard-size", type=int, default=SHARD, help=f"examples per shard (default {SHARD})")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which, comma-separated (default: all)")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in ["plain", *args.variants.split(",")] if name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        pb = build_network(workdir)
        data, images = write_data(workdir)
        runs = {name: [] for name in variants}
        digests = {}
        for round_ in range(args.rounds):
            for name, (flags, env, workers, dask) in variants.items():
                cache = workdir / f"cache-{name}-{round_}"
                with dask_cluster(workers if dask else 0, env) as (address, cluster_cpu):
                    before = cluster_cpu()
                    wall, cpu = extract(pb, data, cache, flags + address, env, args.shard_size)
                    cpu += cluster_cpu() - before
                runs[name].append((wall, cpu, steady_rate(cache, workers)))
                digests[name] = shard_digests(cache)
                print(f"{name:14s} {images} images: {wall:6.1f} s wall, {cpu:6.1f} s CPU, "
                      f"{runs[name][-1][2]:6.1f} images/s once running", flush=True)
        report(runs, digests, images, args.json, args.shard_size)


def report(runs: dict, digests: dict, images: int, json_path: str | None, shard: int) -> None:
    median = {name: [statistics.median(values) for values in zip(*listed)] for name, listed in runs.items()}
    plain_wall, _, plain_rate = median["plain"]
    figures = {name: {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "images_per_s": round(rate, 1),
                      "throughput_vs_plain": round(rate / plain_rate, 2),
                      "whole_run_vs_plain": round(plain_wall / wall, 2),
                      "cpu_ms_per_image_whole_run": round(1000 * cpu / images, 2),
                      "same_shards_as_plain": digests[name] == digests["plain"]}
               for name, (wall, cpu, rate) in median.items()}
    print(f"\nTensorFlow {tf.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end; {images} images, shards of {shard}")
    header = ("variant", "wall", "CPU", "images/s running", "throughput ×", "whole run ×", "same shards")
    rows = [(name, f"{f['wall_s']:.1f} s", f"{f['cpu_s']:.1f} s", f"{f['images_per_s']:.1f}",
             f"{f['throughput_vs_plain']:.2f}", f"{f['whole_run_vs_plain']:.2f}", str(f["same_shards_as_plain"]))
            for name, f in figures.items()]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  " + "  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    for runner in ("beam", "dask"):
        if f"{runner}-1" in figures and f"{runner}-2" in figures:
            print(f"\n  {runner} at 1 worker: {figures[f'{runner}-1']['throughput_vs_plain']:.2f}× plain's throughput "
                  f"(goal ≥ 0.9×); 2 workers: {figures[f'{runner}-2']['throughput_vs_plain']:.2f}×")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
