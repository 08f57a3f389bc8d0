"""What the checks before anything runs cost when a backbone loads, against the plain TensorFlow way.

Network: keras.applications.ResNet50 (weights=None) frozen to a .pb (~100 MB of constants).
  - plain TensorFlow: read the file, parse the GraphDef, import it into `wrap_function`, prune
    to the cut (DESIGN's callable; no check at all);
  - transfer: `Backbone.load(path, cut=...)`: the same, plus the size checks of the constants,
    the function library's call graph (cycles, nesting), the op allow-list over what the cut
    needs, batch-1 detection and the memory a cut's tensors take (static shapes, live ranges);
  - the memory check alone (`Backbone._check_memory`) on the loaded backbone, for the deepest cut
    and for every one of the 177 candidate cuts at once.
Medians of interleaved rounds, each a fresh import. Run: `python experiments/bench/load_checks.py`
(~2 min on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import transfer  # noqa: F401  (pins the Keras backend)
import keras
import tensorflow as tf

from transfer import Backbone
from transfer._compat import freeze_variables

CUT = "avg_pool"


def frozen_resnet(workdir: Path) -> Path:
    model = keras.applications.ResNet50(weights=None)
    spec = tf.TensorSpec([None, 224, 224, 3], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    path = workdir / "resnet50.pb"
    path.write_bytes(freeze_variables(function).graph.as_graph_def().SerializeToString())
    return path


def plain_tensorflow(path: Path, cut_tensor: str) -> None:
    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    wrapped.prune(feeds=[wrapped.graph.get_tensor_by_name("input:0")],
                  fetches=[wrapped.graph.get_tensor_by_name(cut_tensor)])


def transfer_load(path: Path) -> Backbone:
    backbone = Backbone.load(path, cut=CUT)
    backbone.pruned_function  # noqa: B018 - made on first use: what the plain way makes too
    return backbone


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        path = frozen_resnet(Path(workdir))
        backbone = transfer_load(path)
        cut_tensor = backbone.cuts[0].tensor.name
        candidates = Backbone.load(path, cut="candidates")
        times = {"plain TensorFlow": [], "transfer (all checks)": [], "memory check, one cut": [],
                 f"memory check, {len(candidates.cuts)} cuts": []}
        for _ in range(args.rounds):
            times["plain TensorFlow"].append(timed(lambda: plain_tensorflow(path, cut_tensor)))
            times["transfer (all checks)"].append(timed(lambda: transfer_load(path)))
            times["memory check, one cut"].append(timed(backbone._check_memory))
            times[f"memory check, {len(candidates.cuts)} cuts"].append(timed(candidates._check_memory))
    base = statistics.median(times["plain TensorFlow"])
    print(f"ResNet50 (weights=None) .pb, cut {CUT}, median of {args.rounds} interleaved rounds (CPU)")
    for name, values in times.items():
        print(f"  {name:28s} {statistics.median(values):7.3f} s  {statistics.median(values) / base:5.2f}x plain")


if __name__ == "__main__":
    main()
