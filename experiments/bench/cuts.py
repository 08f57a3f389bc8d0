"""Cut sweeps: one multi-cut extraction against single-cut ones, and a whole cut sweep's time.

Network: keras.applications ResNet50 (weights=None) frozen to a .pb at `--size` pixels, every
candidate cut `transfer inspect` lists (177 at 64x64), or MobileNetV2 (`--network mobilenetv2`,
weights=None, at 96x96), or the project's pretrained `experiments/bignet/bignet.pb` (`--network
bignet`: 61 candidate cuts, 32x32x1, 600 training digits); data: scikit-learn's digits, resized
to the network's input as `transfer fit` does. Measured, in one run, each extraction into an
empty cache (what `transfer extract` does, preprocessing and shard writes included):

  (a) the deepest single cut (`auto`, the pooled features): the cost of plain transfer;
  (b) every candidate cut in one pass, averaged over positions before caching (`--pool avg`,
      as a logreg cut sweep stores them); goal (issue 12): <= 1.2x (a); and the same for the
      block outputs only (each residual block's output, the stem's pooling, the global pool);
  (c) single-cut extractions of a sample of the cuts (spread over depth), extrapolated to all:
      what sweeping the cuts one extraction at a time would cost;
  (d) end to end through the CLI, each command a fresh process into an empty cache: `transfer
      extract --cut auto` (one cut) against `transfer sweep --cuts candidates --heads logreg`
      (load, one pass, every cut ranked by the ridge probe, logreg on the best 3, the best
      retrained into best/; `--export none`), the ratio of the two (goal, issue 22: <= 2x); with
      `--full-probes` also the sweep with `--finalists 0` (logreg on every cut, as before), with
      `--grid` the sweep with `--pool grid2` (each cut averaged and as its 2x2 grid ranked).

Run: `python experiments/bench/cuts.py` (~10 min on 2 cores; `--only-sweep`: (d) alone, ~2-3 min;
`--no-sweep`: (a)-(c), ~5 min). CPU only.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer._compat import freeze_variables
from transfer import Backbone
from transfer.features.inputs import open_inputs

sys.path.insert(0, str(Path(__file__).parent))
from cache import table, timed  # noqa: E402  (the benchmarks' shared printing)


NETWORKS = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2, "bignet": None}
# bignet: the project's own pretrained network (experiments/bignet: 59 cuts, trained on shapes),
# the stand-in for issue 22's "real pretrained CNN, 600 training images": 60 digits per class.
BIGNET = Path(__file__).parents[1] / "bignet" / "bignet.pb"
DEFAULT_DATA = {"bignet": "digits?per_class=60"}


def frozen_network(name: str, size: int, workdir: Path) -> Path:
    if name == "bignet":
        return BIGNET
    model = NETWORKS[name](weights=None, input_shape=(size, size, 3))
    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path = workdir / f"{name}.pb"
    path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    return path


def _is_block_output(spec: str) -> bool:
    """keras.applications ResNet50's block outputs: `convN_blockM_out`, `pool1_pool`, `avg_pool`."""
    return any(part in spec for part in ("_out_", "pool1_pool", "avg_pool"))


def extraction_seconds(backbone: Backbone, data: str, workdir: Path, pool: str = "none",
                       dtype: str = "float32") -> float:
    """One extraction of every split into an empty cache, as a `transfer extract` run pays it:
    the graph's import and the cuts' resolution done before, but the pruning, tracing and first
    call's graph optimisation included (a fresh Backbone of the same cuts, nothing pruned yet)."""
    return extraction_times(backbone, data, workdir, pool, dtype)[0]


def extraction_times(backbone: Backbone, data: str, workdir: Path, pool: str = "none",
                     dtype: str = "float32") -> tuple[float, float]:
    """`extraction_seconds` as (wall, CPU) seconds: the process's CPU time (all threads) is
    steadier than wall time on this shared virtual machine, whose speed drifts by tens of %."""
    inputs = open_inputs(backbone.subset([c.spec for c in backbone.cuts]), data, validation_split=0.2)
    gc.collect()
    started = time.process_time()
    seconds, _ = timed(lambda: inputs.extract(tempfile.mkdtemp(dir=workdir), dtype=dtype, pool=pool, progress=False))
    return seconds, time.process_time() - started


def cli_seconds(*arguments: str) -> float:
    """One `transfer` command in a fresh process (TensorFlow's import and start-up included, as a
    user waits for them), its wall seconds; its last output lines are shown."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transfer.cli", *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"transfer {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    ranked = [line for line in done.stderr.splitlines() if "ridge probe" in line]
    print(f"  transfer {arguments[0]}: {seconds:.1f} s" + (f"; {ranked[0][:300]}" if ranked else ""), flush=True)
    return seconds


def end_to_end(path: Path, data: str, workdir: Path, full: bool, grid: bool = False) -> None:
    """(d): one cut extracted against every cut ranked, each through the CLI into an empty cache;
    with `grid` also the sweep on each cut's 2x2 grid of cells (`--pool grid2`: average and grid
    ranked)."""
    common = ["--backbone", str(path), "--data", data]
    one = cli_seconds("extract", *common, "--cut", "auto", "--cache-dir", tempfile.mkdtemp(dir=workdir))
    ranked = cli_seconds("sweep", *common, "--cuts", "candidates", "--heads", "logreg", "--export", "none",
                         "--cache-dir", tempfile.mkdtemp(dir=workdir), "--out", str(workdir / "sweep-ranked"))
    rows = [["extract --cut auto (one cut)", f"{one:.1f}", "1.00x"],
            ["sweep --cuts candidates --heads logreg (ridge ranking, logreg on 3)", f"{ranked:.1f}",
             f"{ranked / one:.2f}x"]]
    if grid:
        gridded = cli_seconds("sweep", *common, "--cuts", "candidates", "--heads", "logreg", "--export", "none",
                              "--pool", "grid2", "--cache-dir", tempfile.mkdtemp(dir=workdir),
                              "--out", str(workdir / "sweep-grid"))
        rows.append(["the same with --pool grid2 (average and 2x2 grid ranked)", f"{gridded:.1f}",
                     f"{gridded / one:.2f}x"])
    if full:
        every = cli_seconds("sweep", *common, "--cuts", "candidates", "--heads", "logreg", "--export", "none",
                            "--finalists", "0", "--cache-dir", tempfile.mkdtemp(dir=workdir),
                            "--out", str(workdir / "sweep-full"))
        rows.append(["the same with --finalists 0 (logreg on every cut)", f"{every:.1f}", f"{every / one:.2f}x"])
    table("(d) end to end through the CLI, each into an empty cache (wall seconds)", ["command", "seconds", "ratio"],
          rows)
    print("  best: " + (workdir / "sweep-ranked/sweep.csv").read_text().splitlines()[1][:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="resnet50")
    parser.add_argument("--size", type=int, default=None, help="input height and width (default 64, MobileNetV2 96)")
    parser.add_argument("--data", default=None, help="data spec (default: all 1797 digits; bignet: 60 per class)")
    parser.add_argument("--sampled-cuts", type=int, default=6, help="single-cut extractions timed for (c)")
    parser.add_argument("--no-sweep", action="store_true", help="extractions (a)-(c) only, not the sweep (d)")
    parser.add_argument("--only-sweep", action="store_true", help="(d) alone")
    parser.add_argument("--full-probes", action="store_true", help="(d) also with logreg on every cut (slow)")
    parser.add_argument("--grid", action="store_true", help="(d) also with --pool grid2")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a) and (b) in turn, medians (default 3)")
    parser.add_argument("--cache-dtype", default="float32", help="what (a) and (b) store: float32 (default) or float16")
    args = parser.parse_args()
    args.data = args.data or DEFAULT_DATA.get(args.network, "digits")
    workdir = Path(tempfile.mkdtemp(prefix="bench-cuts-"))
    size = args.size or {"mobilenetv2": 96, "bignet": 32}.get(args.network, 64)
    path = frozen_network(args.network, size, workdir)
    if args.only_sweep:
        print(f"{args.network} at {size}x{size}, {args.data}", flush=True)
        return end_to_end(path, args.data, workdir, args.full_probes, args.grid)

    started = time.perf_counter()
    every = Backbone.load(path, cut="candidates")
    resolve_seconds = time.perf_counter() - started
    deepest = Backbone.load(path, cut="auto")
    specs = [c.spec for c in every.cuts]
    examples = open_inputs(deepest, args.data, validation_split=0.2).splits.sizes
    print(f"{args.network} at {size}x{size}: {len(specs)} candidate cuts (resolved in {resolve_seconds:.1f} s); "
          f"{args.data}: {sum(examples.values())} examples ({examples})", flush=True)

    blocks = every.recut([spec for spec in specs if _is_block_output(spec)])
    extraction_seconds(deepest, args.data, workdir)  # warm-up: TF's first-use costs are not the cuts' fault
    variants = {"single": (deepest, "none"), "all": (every, "avg"), "blocks": (blocks, "avg")}
    times, cpu = {name: [] for name in variants}, {name: [] for name in variants}
    for _ in range(args.rounds):  # in turn, the median of each: this machine's speed drifts by tens of %
        for name, (backbone, pool) in variants.items():
            wall, processor = extraction_times(backbone, args.data, workdir, pool, args.cache_dtype)
            times[name].append(wall)
            cpu[name].append(processor)
    single, one_pass, blocks_pass = (statistics.median(times[name]) for name in variants)
    for label, measured in (("wall", times), ("CPU", cpu)):
        print(f"  {label} seconds per round: " + "; ".join(f"{name} " + ", ".join(f"{t:.1f}" for t in runs)
                                                       for name, runs in measured.items()))
    single_cpu = statistics.median(cpu["single"])
    print("  CPU time vs the deepest cut (medians): " + ", ".join(
        f"{name} {statistics.median(cpu[name]) / single_cpu:.2f}x" for name in ("all", "blocks")))
    step = max(1, len(specs) // args.sampled_cuts)
    sampled = specs[::step][:args.sampled_cuts]
    per_cut = [extraction_seconds(every.recut(spec), args.data, workdir) for spec in sampled]
    all_single = statistics.mean(per_cut) * len(specs)
    title = f"extraction of every split into an empty cache (seconds, median of {args.rounds})"
    table(title, ["what", "seconds", "vs deepest cut"], [
        ["(a) deepest single cut (auto)", f"{single:.1f}", "1.00x"],
        [f"(b) all {len(specs)} cuts, one pass, --pool avg", f"{one_pass:.1f}", f"{one_pass / single:.2f}x"],
        [f"(b) the {len(blocks.cuts)} block outputs, one pass, --pool avg", f"{blocks_pass:.1f}",
         f"{blocks_pass / single:.2f}x"],
        [f"(c) {len(specs)} single-cut extractions (mean of {len(sampled)}, x {len(specs)})",
         f"{all_single:.0f}", f"{all_single / single:.1f}x"],
    ])

    if args.no_sweep:
        return
    end_to_end(path, args.data, workdir, args.full_probes, args.grid)


if __name__ == "__main__":
    main()
