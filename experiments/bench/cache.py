"""The feature cache against the plain TensorFlow/NumPy ways, on a real network, in one run.

Network: keras.applications.ResNet50 (weights=None, 64×64×3 input, 10 classes), frozen to a
.pb and cut at `auto` (avg_pool, 2048 features). Data: scikit-learn's digits, upsampled to
64×64 RGB (0..255), written as `.npz` files (arrays x, y, and x_test, y_test where a test
split is wanted) and as PNG folders. Parts:
  (a) a sweep of 8 head settings with the cache (`transfer.sweep.sweeping.sweep`, empty cache, so the one
      extraction is timed) against the same 8 settings as 8 `transfer.fit` calls without it;
  (b) one training epoch of a linear head fed from a cache entry on disk against the same
      features in memory (`from_tensor_slices`), plus plain iteration without a model;
  (c) `FeatureCache.extract` (empty cache each round) against the raw pruned ConcreteFunction
      (wrap_function + prune) looping over the same images;
  (d) peak RSS of `transfer extract` in a fresh process on PNG folders of two sizes, and at the
      larger size on an npz and the plain TF way (np.load, raw pruned function, np.save);
  (e) test accuracy of heads trained on float32 against float16 cached features.
Timed variants are interleaved over rounds and the median is reported.
Run: `python experiments/bench/cache.py` (~13 min on 2 CPU cores, 7 of them the 8 fits without the
cache in (a); `--parts a,c` runs some parts, `--help` lists the sizes).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer._compat import freeze_variables
from transfer import Backbone, heads
from transfer.features.cache import FORMAT_VERSION, MANIFEST, SHARD_BYTES, Entry, FeatureCache, _write_atomic
from transfer.features.feature_splits import FeatureSplits
from transfer.features.inputs import open_inputs
from transfer.sweep.grid import expand_grid
from transfer.sweep.sweeping import sweep

SIZE = 64  # image height and width
FEATURES = 2048  # ResNet50's avg_pool
CLI = "import sys; from transfer.cli.main import main; sys.exit(main(sys.argv[1:]))"
# Keras says this at the end of every epoch over a dataset of unknown length (the cache's streams).
warnings.filterwarnings("ignore", message="Your input ran out of data")


# --- setup ---------------------------------------------------------------------------------------


def build_network(workdir: Path) -> Path:
    keras.utils.set_random_seed(0)  # the same random network, so accuracies are comparable across runs
    model = keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    pb_path = workdir / "resnet50_64.pb"
    pb_path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    return pb_path


def digit_images(count: int, seed: int = 0, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` digits (all 10 classes, a seeded order, repeated past 1797) as 64×64 RGB in 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    chosen = order[(offset + np.arange(count)) % len(order)]
    images = np.kron(digits.images[chosen], np.ones((SIZE // 8, SIZE // 8))) * (255 / 16)
    return np.repeat(images[..., None], 3, axis=-1).astype("float32"), digits.target[chosen].astype("int64")


def write_npz(path: Path, train: int, test: int = 0) -> str:
    """An npz of `train` images (and `test` other ones as x_test/y_test); its data spec."""
    x, y = digit_images(train + test)
    arrays = {"x": x[:train], "y": y[:train]}
    if test:
        arrays.update(x_test=x[train:], y_test=y[train:])
    np.savez(path, **arrays)
    return f"npz:{path}"


def write_folder(root: Path, count: int) -> str:
    """`count` digits as PNG files `root/LABEL/i.png`: data that streams from disk; its spec."""
    x, y = digit_images(count)
    for index, (image, label) in enumerate(zip(x.astype("uint8"), y)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        (root / str(label) / f"{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    return str(root)


def raw_pruned(pb_path: Path, fetch: str):
    """The plain TF way: import the GraphDef into wrap_function and prune to the fetch."""
    graph_def = tf.compat.v1.GraphDef.FromString(pb_path.read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    return wrapped.prune(feeds=wrapped.graph.get_tensor_by_name("input:0"),
                         fetches=wrapped.graph.get_tensor_by_name(fetch))


# --- measuring and printing ----------------------------------------------------------------------


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def interleaved(variants: dict, rounds: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each variant over `rounds` rounds that take the variants in turn."""
    for run in variants.values() if warmup else ():
        run()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            gc.collect()  # the garbage of the previous run (models, functions: large) is not timed
            times[name].append(timed(run)[0])
    return {name: statistics.median(values) for name, values in times.items()}


def table(title: str, header: list[str], rows: list[list]) -> None:
    """An aligned table: the first column left-aligned, the others right-aligned."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for row in cells:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))


def notes(*lines: str) -> None:
    for line in lines:
        print(f"  - {line}")


def ratio(value: float) -> str:
    return f"{value:.3f}x"


# --- (a) sweep with the cache against repeated fits without it -----------------------------------


def bench_sweep(pb_path: Path, spec: str, cache_dir: Path, epochs: int) -> None:
    grid = dict(heads=["linear", "mlp"], lr=[3e-4, 1e-3, 3e-3, 1e-2], epochs=[epochs])
    settings = expand_grid(grid["heads"], lr=grid["lr"], epochs=grid["epochs"])
    assert len(settings) == 8, settings
    # The cached sweep runs first, so it, not the baseline, pays the process's first-use costs.
    cached_seconds, result = timed(lambda: sweep(pb_path, spec, **grid, patience=None, cache_dir=cache_dir,
                                                 out=None, progress=False))
    fits = []
    plain_seconds, _ = timed(lambda: fits.extend(
        transfer.fit(pb_path, spec, cut="auto", head=s["head"], head_options=s["head_options"], lr=s["lr"],
                     epochs=s["epochs"], batch_size=s["batch_size"], optimizer=s["optimizer"], patience=None,
                     out=None, export=(), verbose=0) for s in settings))
    table(f"(a) sweep of {len(settings)} head settings ({epochs} epochs each, no early stopping), end to end",
          ["variant", "seconds", "per setting", "speed-up"],
          [["8 x transfer.fit without cache (backbone every epoch)", f"{plain_seconds:.1f}",
            f"{plain_seconds / len(settings):.1f}", ratio(1)],
           ["transfer.sweep.sweeping.sweep, empty cache (1 extraction + 8 heads)", f"{cached_seconds:.1f}",
            f"{cached_seconds / len(settings):.1f}", ratio(plain_seconds / cached_seconds)]])
    sizes = transfer.datasets.load(spec).sizes
    once = sizes["train"] + sizes["validation"] + sizes["test"]
    each_fit = epochs * (sizes["train"] + sizes["validation"]) + sizes["validation"] + sizes["test"]
    notes(f"Images through the backbone: {len(settings) * each_fit} without the cache ({len(settings)} fits x "
          f"({epochs} epochs x {sizes['train']} train + {sizes['validation']} validation, then validation and "
          f"{sizes['test']} test once)), {once} with it.",
          "Each fit without the cache also loads the graph and builds, traces and optimises its own train, "
          "evaluation and predict functions over the whole network.")
    cached = {json.dumps(row["setting"], sort_keys=True): row for row in result.rows}
    table("    validation accuracy per setting (a sanity check that both trained the same heads)",
          ["setting", "fit, no cache", "sweep, cached"],
          [[f"{s['head']} lr={s['lr']:g}", f"{fit.metrics['validation']['accuracy']:.3f}",
            f"{cached[json.dumps(s, sort_keys=True)]['val_accuracy_mean']:.3f}"] for s, fit in zip(settings, fits)])


# --- (b) reading cached features for training ----------------------------------------------------


def write_entry(root: Path, features: np.ndarray, labels: np.ndarray) -> Entry:
    """A complete cache entry written with the cache's own shard writer, ~64 MiB shards as extract does."""
    path = root / "bench-entry"
    path.mkdir(parents=True)
    entry = Entry(path, {"key": path.name, "format": FORMAT_VERSION, "complete": False, "role": "train",
                         "dtype": str(features.dtype), "backbone_fingerprint": "bench", "ingredients": {},
                         "feature_shapes": [list(features.shape[1:])], "shards": []})
    cache = FeatureCache(root)
    shard = SHARD_BYTES // features[0].nbytes
    for index, start in enumerate(range(0, len(labels), shard)):
        cache._write_shard(entry, index, [features[start:start + shard]], labels[start:start + shard])
    entry.manifest["complete"] = True
    _write_atomic(path / MANIFEST, json.dumps(entry.manifest).encode())
    return cache.open(path.name)


def linear_model() -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), heads.get("linear", num_classes=10)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def bench_reading(workdir: Path, count: int, rounds: int, batch_size: int = 256) -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((count, FEATURES), dtype=np.float32)
    labels = rng.integers(0, 10, count).astype("int32")
    entry = write_entry(workdir / "reading-cache", features, labels)
    shuffled = FeatureSplits(entry.dataset(), None, None, entry.feature_shapes, [str(i) for i in range(10)])
    memory = tf.data.Dataset.from_tensor_slices((features, labels))
    pipelines = {
        "cache: entry.dataset().batch(256)": lambda: entry.dataset().batch(batch_size),
        "memory: from_tensor_slices(array).batch(256)": lambda: memory.batch(batch_size),
        "cache: FeatureSplits.training (fit's path: shuffle)": lambda: shuffled.training(batch_size, seed=0),
        "memory: same shuffle(10000).batch(256).prefetch": lambda: memory.shuffle(10_000, seed=0).batch(
            batch_size).prefetch(tf.data.AUTOTUNE),
    }
    models = {name: linear_model() for name in pipelines}
    epochs = interleaved({name: lambda name=name, make=make: models[name].fit(make(), epochs=1, shuffle=False,
                                                                              verbose=0)
                          for name, make in pipelines.items()}, rounds)
    iteration = interleaved({name: lambda make=make: sum(1 for _ in make()) for name, make in pipelines.items()},
                            rounds)
    names = list(pipelines)
    rows = []
    for name, baseline in zip(names, [names[1], names[1], names[3], names[3]]):
        rows.append([name, f"{count / epochs[name]:,.0f}", ratio(epochs[baseline] / epochs[name]),
                     f"{count / iteration[name]:,.0f}", ratio(iteration[baseline] / iteration[name])])
    table(f"(b) one epoch of a linear head on {count:,} x {FEATURES} float32 "
          f"({features.nbytes / 2**20:.0f} MiB, {len(entry.manifest['shards'])} shards), batch {batch_size}, "
          f"median of {rounds}",
          ["pipeline", "train ex/s", "vs memory", "iterate ex/s", "vs memory"], rows)
    notes("'vs memory' compares each cache pipeline with the in-memory pipeline of the same shape (goal >= 0.8x).",
          "The shards were just written, so they are read from the OS page cache, not from the disk.")


# --- (c) extraction with cache writing against the raw pruned function ---------------------------


def bench_extraction(workdir: Path, pb_path: Path, backbone: Backbone, count: int, rounds: int,
                     batch_size: int = 32) -> None:
    spec = write_npz(workdir / f"extract_{count}.npz", count)
    warm_spec = write_npz(workdir / "extract_warmup.npz", batch_size)
    inputs = open_inputs(backbone, spec, validation_split=0, batch_size=batch_size)
    warm_inputs = open_inputs(backbone, warm_spec, validation_split=0, batch_size=batch_size)
    images, _ = digit_images(count)
    batches = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    function = raw_pruned(pb_path, backbone.cuts[0].name)

    def raw():
        return [np.asarray(function(batch)) for batch in batches]

    def cached(source):
        return lambda: source.extract(tempfile.mkdtemp(dir=workdir), progress=False)

    raw_name, cache_name = f"raw pruned ConcreteFunction ({backbone.cuts[0].name})", "FeatureCache.extract"
    small_name = f"FeatureCache.extract of {batch_size} images (its start-up)"
    function(tf.constant(images[:batch_size]))  # warm-ups: the raw function's first call, the cache's first extract
    cached(warm_inputs)()
    medians = interleaved({raw_name: raw, cache_name: cached(inputs), small_name: cached(warm_inputs)}, rounds,
                          warmup=False)
    table(f"(c) extraction of {count} images {SIZE}x{SIZE}, batch {batch_size}, median of {rounds}",
          ["variant", "seconds", "images/s", "vs raw"],
          [[name, f"{seconds:.2f}", f"{(batch_size if name == small_name else count) / seconds:.1f}",
            ratio(medians[raw_name] / seconds) if name != small_name else "-"] for name, seconds in medians.items()])
    steady = (count - batch_size) / (medians[cache_name] - medians[small_name])
    print(f"  cache without its per-call start-up ({count - batch_size} images in "
          f"{medians[cache_name] - medians[small_name]:.2f} s): {steady:.1f} images/s, "
          f"{ratio(steady / (count / medians[raw_name]))} the raw function")
    notes("Goal >= 0.9x. Raw: the pruned function (built and called once before) on batches of an in-memory "
          "array, results to NumPy.",
          "The cache path in addition: tf.data from the npz arrays, resize/cast, the preprocessing (eager) before "
          "the backbone's pruned function (Inputs.feature_batch),",
          "buffering into shards, SHA-256 of every shard, write to a temporary name + fsync + rename, "
          "manifest JSON after each shard, a lock file.")


# --- (d) peak memory of extraction ---------------------------------------------------------------


def child_peak(arguments: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of a fresh Python process running `arguments`.

    Read by GNU time (`%M`), not by this process's RUSAGE_CHILDREN: on Linux a child started from
    this (large) process inherits its peak RSS through fork/exec, which would hide the child's own.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        child = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, sys.executable, *arguments],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        if child.returncode:
            raise RuntimeError(f"{arguments} failed:\n{child.stderr.decode()[-2000:]}")
        return int(report.read().split()[-1]) / 1024, seconds


def raw_extract(pb_path: str, cut: str, npz_path: str, out: str, batch_size: int = 32) -> None:
    """The plain TF/NumPy way, run in the child of (d): images from np.load, the raw pruned function,
    all features in one array, np.save."""
    function = raw_pruned(Path(pb_path), cut)
    images = np.load(npz_path)["x"]
    batches = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    np.save(out, np.concatenate([np.asarray(function(batch)) for batch in batches]))


def bench_memory(workdir: Path, pb_path: Path, cut: str, sizes: list[int]) -> None:
    extract = ["-c", CLI, "extract", "--backbone", str(pb_path), "--cut", "auto", "--validation-split", "0", "--json"]
    runs = [("transfer extract, PNG folder", size, [*extract, "--data", write_folder(workdir / f"png_{size}", size),
                                                    "--cache-dir", tempfile.mkdtemp(dir=workdir)])
            for size in sizes]
    large = sizes[-1]
    npz = workdir / f"memory_{large}.npz"
    runs.append(("transfer extract, npz (float32 x)", large,
                 [*extract, "--data", write_npz(npz, large), "--cache-dir", tempfile.mkdtemp(dir=workdir)]))
    runs.append(("plain TF: np.load + raw pruned + np.save", large,
                 [__file__, "--raw-extract", str(pb_path), cut, str(npz), str(workdir / "raw_features.npy")]))
    peaks, rows = {}, []
    for name, size, arguments in runs:
        peak, seconds = child_peak(arguments)
        peaks[name, size] = peak
        rows.append([name, size, f"{peak:.0f}", f"{seconds:.0f}"])
    table("(d) peak RSS of a fresh process running the extraction (GNU time %M), MiB",
          ["run", "images", "peak MiB", "seconds"], rows)
    folder, small = runs[0][0], sizes[0]
    print(f"  growth {small} -> {large} images, PNG folder: {peaks[folder, large] - peaks[folder, small]:+.0f} MiB "
          f"({(peaks[folder, large] - peaks[folder, small]) / (large - small) * 1024:+.1f} KiB per image); "
          f"npz instead of PNGs at {large}: {peaks[runs[-2][0], large] - peaks[folder, large]:+.0f} MiB; "
          f"plain TF against the cache (PNG) at {large}: {peaks[runs[-1][0], large] - peaks[folder, large]:+.0f} MiB")
    notes(f"Extraction buffers the features of one unfinished shard (up to {SHARD_BYTES // (FEATURES * 4)} "
          f"examples = 64 MiB here, x2 while concatenating): {large - small} more images are "
          f"{(large - small) * FEATURES * 4 / 2**20:.0f} MiB more features until a shard fills; then it is bounded.",
          f"An npz is loaded whole by np.load and sliced into tf.data: {SIZE}x{SIZE}x3 float32 = "
          f"{SIZE * SIZE * 3 * 4 / 1024:.0f} KiB per image held in memory; a PNG folder streams its files.",
          "Most of the peak is TensorFlow instantiating and optimising the 90 MiB graph (the same in every run).")


# --- (e) float16 storage ------------------------------------------------------------------------


def bench_float16(backbone: Backbone, spec: str, cache_dir: Path, epochs: int) -> None:
    inputs = open_inputs(backbone, spec)
    extracted = {dtype: inputs.extract(cache_dir, dtype=dtype, progress=False) for dtype in ("float32", "float16")}
    entries = {dtype: {role: listed[0] for role, listed in by_role.items()} for dtype, by_role in extracted.items()}
    rows = []
    for head in ("logreg", "linear"):
        accuracy = {dtype: transfer.fit(backbone, spec, head=head, epochs=epochs, patience=None, cache_dir=cache_dir,
                                        cache_dtype=dtype, out=None, export=(), verbose=0).metrics["test"]["accuracy"]
                    for dtype in entries}
        rows.append([head, f"{accuracy['float32']:.4f}", f"{accuracy['float16']:.4f}",
                     f"{accuracy['float16'] - accuracy['float32']:+.4f}"])
    table(f"(e) test accuracy of heads on float32 against float16 cached features "
          f"(linear: {epochs} epochs, lr 1e-3)", ["head", "float32", "float16", "difference"], rows)
    rows = []
    for role in entries["float32"]:
        full, half = (entries[dtype][role].arrays()[0] for dtype in ("float32", "float16"))
        difference = np.max(np.abs(full - half))
        rows.append([role, len(full), f"{difference:.2e}", f"{np.max(np.abs(full)):.3g}",
                     f"{difference / np.max(np.abs(full)):.1e}",
                     *(f"{entries[dtype][role].size_bytes() / 2**20:.2f}" for dtype in ("float32", "float16"))])
    table("    the cached features (entry.arrays())",
          ["split", "examples", "max |f32 - f16|", "max |feature|", "relative", "MiB f32", "MiB f16"], rows)


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c,d,e", help="which parts to run (default: all)")
    parser.add_argument("--train-images", type=int, default=240, help="(a, e) images with labels; 20%% validation")
    parser.add_argument("--test-images", type=int, default=160, help="(a, e) test images")
    parser.add_argument("--epochs", type=int, default=5, help="(a) epochs per head setting")
    parser.add_argument("--read-examples", type=int, default=20_000, help="(b) cached feature vectors")
    parser.add_argument("--extract-images", type=int, default=1024, help="(c) images to extract")
    parser.add_argument("--rounds", type=int, default=3, help="(b, c) interleaved rounds, median reported")
    parser.add_argument("--memory-sizes", default="1000,3000", help="(d) dataset sizes")
    parser.add_argument("--probe-epochs", type=int, default=30, help="(e) epochs of the linear head")
    parser.add_argument("--raw-extract", nargs=4, metavar=("PB", "CUT", "NPZ", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_extract:  # the plain-TF child of part (d)
        return raw_extract(*args.raw_extract)
    parts = set(args.parts.split(","))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}, "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}, "
          f"{os.cpu_count()} CPU cores ({cpu})")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        pb_path = build_network(workdir)
        backbone = Backbone.load(pb_path, cut="auto")
        spec = write_npz(workdir / "digits.npz", args.train_images, args.test_images)
        print(f"ResNet50 (weights=None, {SIZE}x{SIZE}x3) frozen to {pb_path.stat().st_size / 2**20:.0f} MiB; "
              f"cut auto = {backbone.cuts[0].name} {backbone.cuts[0].tensor.shape}; data (a, e): digits, "
              f"{args.train_images} labelled (20% validation) + {args.test_images} test images")
        sweep_cache = workdir / "sweep-cache"
        benches = {
            "a": lambda: bench_sweep(pb_path, spec, sweep_cache, args.epochs),
            "b": lambda: bench_reading(workdir, args.read_examples, args.rounds),
            "c": lambda: bench_extraction(workdir, pb_path, backbone, args.extract_images, args.rounds),
            "d": lambda: bench_memory(workdir, pb_path, backbone.cuts[0].name,
                                      [int(size) for size in args.memory_sizes.split(",")]),
            "e": lambda: bench_float16(backbone, spec, sweep_cache, args.probe_epochs),
        }
        for part, run in benches.items():
            if part in parts:
                gc.collect()  # models and functions of earlier parts hold GiBs until the cyclic GC runs
                run()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
