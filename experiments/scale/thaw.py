"""A thaw on tiny features (issue 25, item 3): frozen, thawed with the measured step, thawed without.

The graph of `compare.py` (a small CNN pretrained on digits 0-4, its cut layer `block` shrunk)
with features of mean 3e-7, as a user's backbone had. `fit --thaw 1` used to diverge in the
first epoch (the head standardizes with statistics fixed at the start, and Adam moves the
thawed weights by ~lr whatever their scale); each thawed layer's step is now measured before
training and scaled down to move the standardized features by at most `MAX_SHIFT` standard
deviations (`transfer/training/thaw_steps.py`). "unscaled" sets MAX_SHIFT to infinity: what
the code did before. Linear head, Adam, test accuracy and training loss (first and last epoch),
mean over seeds. Run: `python experiments/scale/thaw.py` (~2 min on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import transfer
from transfer.training import thaw_steps
from transfer.training.keras_training import Diverged

from compare import CUT, feature_statistics, small_feature_graph

VARIANTS = {"frozen": (None, thaw_steps.MAX_SHIFT), "thaw 1, step measured": (1, thaw_steps.MAX_SHIFT),
            "thaw 1, unscaled (before)": (1, float("inf"))}


def run(pb: Path, spec: str, thaw, seed: int, args) -> tuple:
    """(test accuracy, first loss, last loss, seconds), or the divergence's message."""
    started = time.perf_counter()
    try:
        result = transfer.fit(str(pb), spec, cut=CUT, head="linear", thaw=thaw, epochs=args.epochs, lr=args.lr,
                              seed=seed, export=(), verbose=0)
    except Diverged as error:
        return str(error).split(";")[0]
    loss = result.history["loss"]
    return result.metrics["test"]["accuracy"], loss[0], loss[-1], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mean", type=float, default=3e-7)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    spec = f"digits:5-9?per_class={args.per_class}"
    with tempfile.TemporaryDirectory() as work:
        pb = Path(work) / "small.pb"
        factor = small_feature_graph(pb, args.mean)
        mean, std = feature_statistics(pb, spec)
        print(f"cut {CUT}: block layer scaled by {factor:.3g}; features: mean {mean:.3g}, std {std:.3g}")
        for name, (thaw, cap) in VARIANTS.items():
            thaw_steps.MAX_SHIFT = cap
            runs = [run(pb, spec, thaw, seed, args) for seed in range(args.seeds)]
            failed = [r for r in runs if isinstance(r, str)]
            if failed:
                print(f"{name:27s} {len(failed)}/{len(runs)} diverged: {failed[0]}", flush=True)
                continue
            accuracy = [r[0] for r in runs]
            print(f"{name:27s} test {statistics.mean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f}  "
                  f"loss {statistics.mean(r[1] for r in runs):.3f} -> {statistics.mean(r[2] for r in runs):.3f}  "
                  f"{statistics.mean(r[3] for r in runs):.1f} s/run  per seed "
                  + " ".join(f"{a:.3f}" for a in accuracy), flush=True)


if __name__ == "__main__":
    main()
