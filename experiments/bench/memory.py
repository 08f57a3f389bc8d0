"""Resident memory (RSS) of the steps of a transfer, and what repeated `transfer.fit` calls keep.

Network: keras.applications.ResNet50 (weights=None, 64x64x3, 10 classes) frozen to a .pb (the
way tests/conftest.py does, in a child process so that building it costs this one nothing).
RSS is read from /proc/self/status after each step, after `gc.collect()`; "trimmed" is the same
after glibc's `malloc_trim(0)`, which hands freed heap back to the OS: a step that only grows
"RSS" but not "trimmed" freed its memory, the allocator just kept it. Steps: import; Backbone.load;
FeatureLayer; ThawedFeatureLayer(last=N); `--fits` times `transfer.fit` without a cache (linear
head, 64 random 64x64 images in an .npz, `--epochs`, export=()), each followed by
`del result; gc.collect(); keras.backend.clear_session()`; the same with `thaw=N`.
Run: `python experiments/bench/memory.py` (~3 min on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def write_resnet(path: Path) -> None:
    """Run in a child process: freeze ResNet50 to `path` as tests/conftest.py does."""
    import transfer  # noqa: F401  (pins the Keras backend)
    import keras
    import tensorflow as tf
    from transfer._compat import freeze_variables

    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--thaw", type=int, default=3, help="N for ThawedFeatureLayer(last=N) and fit(thaw=N)")
    parser.add_argument("--write-pb", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_pb:
        write_resnet(args.write_pb)
        return

    rows = []
    start = time.perf_counter()

    def record(step: str) -> None:
        gc.collect()
        before_trim = rss()
        trim()
        rows.append((step, before_trim, rss(), time.perf_counter() - start))

    record("python started")
    import numpy as np

    import transfer
    import keras
    import tensorflow as tf

    record("import transfer, keras, tensorflow")
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        pb = workdir / "resnet50.pb"
        subprocess.run([sys.executable, __file__, "--write-pb", str(pb)], check=True)
        rng = np.random.default_rng(0)
        data = workdir / "data.npz"
        np.savez(data, x=rng.integers(0, 256, (64, 64, 64, 3), dtype="uint8"), y=np.arange(64) % 4)

        backbone = transfer.Backbone.load(pb)
        record("Backbone.load (cut auto)")
        layer = transfer.FeatureLayer(backbone)
        layer(np.zeros((2, 64, 64, 3), "float32"))
        record("+ FeatureLayer, called once")
        thawed = transfer.thaw(backbone, last=args.thaw)
        thawed(np.zeros((2, 64, 64, 3), "float32"))
        record(f"+ ThawedFeatureLayer(last={args.thaw}), called once")
        del backbone, layer, thawed
        keras.backend.clear_session()
        record("del all three, clear_session")
        for thaw in (None, args.thaw):
            for i in range(1, args.fits + 1):
                result = transfer.fit(pb, str(data), epochs=args.epochs, patience=None, export=(),
                                      thaw=thaw, verbose=0)
                del result
                keras.backend.clear_session()
                record(f"transfer.fit{'' if thaw is None else f'(thaw={thaw})'} #{i}, del, clear_session")
        graph_mib = pb.stat().st_size / MIB

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; frozen graph {graph_mib:.1f} MiB; "
          f"{args.epochs} epochs per fit")
    print(f"\n  {'after':58s} {'RSS MiB':>8s} {'trimmed':>8s} {'Δ trimmed':>9s} {'s':>6s}")
    previous = None
    for step, resident, trimmed, seconds in rows:
        delta = "" if previous is None else f"{(trimmed - previous) / MIB:+9.0f}"
        print(f"  {step:58s} {resident / MIB:8.0f} {trimmed / MIB:8.0f} {delta:>9s} {seconds:6.0f}")
        previous = trimmed


if __name__ == "__main__":
    main()
