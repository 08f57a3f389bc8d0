"""Sweeps of 1, 8, 16 and 32 Keras-head settings on cached features: the settings trained
together (branches of one model, `transfer.sweep.joint`) against one after another, in one run.

Backbone and data: the built-in example (`example:digits`, cut `block2_out`) on
`digits:5-9?per_class=10` (50 training images), 60 epochs, the default patience: the issue's
measure. Grids: 1 = linear at lr 0.01; 8 = linear, mlp x lr 0.001, 0.003, 0.01, 0.03; 16 = the
same x 2 seeds (`repeats=2`); 32 = linear, mlp x 8 learning rates x 2 seeds. The features are
cached before anything is timed. Parts:
  (a) the whole command: a fresh process doing what `transfer sweep` does (import, load the
      backbone and data, read the cached features, train, rank, write the sweep files, retrain
      the best setting into best/ with its SavedModel and .pb), `together=True` vs `False`;
  (b) training alone: `run_sweep` on the cached features in this process, both ways, with each
      setting's accuracies compared and the cost per epoch of one setting (training time over the
      epochs all settings ran).
Run: `python experiments/bench/sweep.py` (~15 min on 2 CPU cores; `--sizes 1,8` for fewer).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer.features.inputs import open_inputs
from transfer.sweep.grid import expand_grid
from transfer.sweep.ranking import run_sweep
from transfer.sweep.sweeping import sweep

sys.path.insert(0, str(Path(__file__).parent))
from cache import table  # noqa: E402  (the benchmarks' shared printing)

BACKBONE, CUT, DATA, EPOCHS = "example:digits", "block2_out", "digits:5-9?per_class=10", 60
LRS = {1: [0.01], 8: [0.001, 0.003, 0.01, 0.03], 16: [0.001, 0.003, 0.01, 0.03],
       32: [0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05]}


def grid(size: int) -> tuple[dict, int]:
    """The `sweep` keywords of a grid of `size` settings x seeds, and its repeats."""
    return {"heads": ["linear"] if size == 1 else ["linear", "mlp"], "lr": LRS[size], "epochs": [EPOCHS]}, \
        2 if size >= 16 else 1


def whole_command(size: int, together: bool, cache_dir: Path, out: Path) -> float:
    """Seconds of a fresh process that runs the sweep as the command does."""
    axes, repeats = grid(size)
    script = (f"from transfer.sweep.sweeping import sweep\n"
              f"sweep({BACKBONE!r}, {DATA!r}, cut={CUT!r}, repeats={repeats}, cache_dir={str(cache_dir)!r}, "
              f"out={str(out)!r}, progress=False, together={together}, **{axes!r})\n")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def training(features, size: int, together: bool) -> tuple[float, list]:
    axes, repeats = grid(size)
    settings = expand_grid(axes["heads"], lr=axes["lr"], epochs=axes["epochs"])
    gc.collect()
    started = time.perf_counter()
    rows = run_sweep(features, settings, repeats=repeats, progress=False, together=together)
    return time.perf_counter() - started, rows


def compare(size: int, features) -> list:
    """(b) for one grid: both ways' training time, cost per setting-epoch, and how their results differ."""
    seconds, rows = {}, {}
    for together in (False, True):
        seconds[together], rows[together] = training(features, size, together)
    epochs = {together: sum(sum(row["epochs_run"]) for row in rows[together]) for together in rows}
    by_setting = [{str(row["setting"]): row for row in rows[together]} for together in (False, True)]
    differences = [abs(a - b) for key, row in by_setting[0].items()
                   for a, b in zip(row["val_accuracies"], by_setting[1][key]["val_accuracies"])]
    same_ranking = [str(row["setting"]) for row in rows[False]] == [str(row["setting"]) for row in rows[True]]
    repeats = grid(size)[1]
    return [f"{size} ({size // repeats} x {repeats} seeds)" if repeats > 1 else str(size), f"{seconds[False]:.1f}",
            f"{seconds[True]:.1f}", f"{seconds[False] / seconds[True]:.2f}x",
            f"{1000 * seconds[False] / epochs[False]:.1f}", f"{1000 * seconds[True] / epochs[True]:.1f}",
            f"{max(differences):.3f}", "yes" if same_ranking else "no"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,8,16,32", help="grid sizes (settings x seeds) among 1, 8, 16, 32")
    parser.add_argument("--parts", default="a,b", help="(a) whole command, (b) training alone")
    args = parser.parse_args()
    sizes, parts = [int(size) for size in args.sizes.split(",")], set(args.parts.split(","))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        cache_dir = Path(directory) / "cache"
        sweep(BACKBONE, DATA, cut=CUT, heads=["linear"], epochs=[1], cache_dir=cache_dir, progress=False)  # cached
        if "a" in parts:
            rows = []
            for size in sizes:
                alone, together = (whole_command(size, way, cache_dir, Path(directory) / f"out-{size}-{way}")
                                   for way in (False, True))
                rows.append([size, f"{alone:.1f}", f"{together:.1f}", f"{alone / together:.2f}x"])
            one = float(rows[0][2]) if sizes[0] == 1 else None
            for row in rows:
                row.append(f"{float(row[2]) / one:.2f}x" if one else "-")
            table("(a) whole command, seconds (a fresh process: import, data, cached features, train, files, best/ "
                  "retrained and exported)", ["settings", "one after another", "together", "speed-up",
                                              "together vs 1 setting"], rows)
        if "b" in parts:
            features = open_inputs(BACKBONE, DATA, cut=CUT).cached_features(str(cache_dir), progress=False)
            table("(b) training alone (run_sweep on the cached features), seconds; ms per setting-epoch; "
                  "largest difference of a setting's val accuracy between the two ways; same ranking",
                  ["settings", "one after another", "together", "speed-up", "ms/epoch before", "ms/epoch after",
                   "max |val diff|", "same ranking"], [compare(size, features) for size in sizes])
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
