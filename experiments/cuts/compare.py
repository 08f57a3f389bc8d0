"""Where to cut the digits example: every candidate cut, a multi-layer head, and fine-tuning.

The shipped example (`example:digits`, a small ResNet pretrained on digits 0-4) transferred to
digits 5-9 from 10 labels per class, as in the README's quick start, three ways, each with 3
seeds (`--repeats 3`: training seeds 0, 1, 2 on the same split):

  1. a sweep over every candidate cut (`--cuts candidates`, 22 cuts) with `logreg` and `linear`
     on the flattened features (`pooling=flatten`: on 8x8 digits, averaging the positions
     throws away where the strokes are), one extraction pass;
  2. the `multilayer` head on all 22 cuts at once (each pooled to a 2x2 grid; penalty l1 or
     group lasso and its strength chosen on validation; batch 16, 100 epochs: 60 epochs at batch
     32 left it undertrained, 0.862);
  3. fine-tuning: `linear` at the penultimate cut with the last N weight layers thawed;
  4. (`--parts multilayer_thaw`, not run by default) the multi-layer head on all 22 cuts with
     the last 2 or 6 weight layers thawed (l1, strength 0.01: what part 2 chose);
  5. (`--parts multilayer_refit`, not run by default) the multi-layer head with Head2Toe's refit
     (`refit=0.05|0.25`: the kept fraction trained again without penalty), l1 0.01 and group
     lasso 0.03.

It prints test accuracy (mean ± std over the seeds) for the best single cut (chosen on
validation), the multi-layer head and the best thaw, and writes each sweep's directory (with
`sweep_cuts.png`, accuracy per cut in graph order) under `--out`.
Run: `python experiments/cuts/compare.py` (~20 min on 2 cores; `--parts multilayer` for one).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from transfer.sweep.sweeping import sweep

DATA = "digits:5-9?per_class=10"
COMMON = dict(repeats=3, epochs=60, lr=0.01, export=(), progress=False)


def row_text(row: dict) -> str:
    cut = row["cut"] if row["cut"] != "all" else "all candidate cuts"
    options = " ".join(f"{key}={value}" for key, value in row["head_options"].items())
    thaw = f" thaw={row['thaw']}" if row.get("thaw") else ""
    return (f"{row['head']} {options}{thaw} at {cut}: test {row['test_accuracy_mean']:.3f} ± "
            f"{row['test_accuracy_std']:.3f} (validation {row['val_accuracy_mean']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where the sweep directories go (default: a temporary folder)")
    parser.add_argument("--strengths", default="0.01,0.03", help="multilayer penalty strengths to choose from")
    parser.add_argument("--parts", default="cuts,multilayer,thaw", help="which comparisons to run")
    args = parser.parse_args()
    parts = args.parts.split(",")
    out = Path(args.out or tempfile.mkdtemp(prefix="cuts-"))
    cache = out / "cache"
    results = {}
    if "cuts" in parts:
        started = time.perf_counter()
        cuts = sweep("example:digits", DATA, cuts="candidates", heads=["logreg", "linear"],
                     head_options={"pooling": ["flatten"]}, cache_dir=cache, out=out / "cuts", **COMMON)
        results["best single cut"] = cuts.rows[0]
        print(f"cut sweep: {len(cuts.rows)} settings in {time.perf_counter() - started:.0f} s", flush=True)
    if "multilayer" in parts:
        started = time.perf_counter()
        strengths = [float(s) for s in args.strengths.split(",")]
        multi = sweep("example:digits", DATA, cuts="candidates", heads=["multilayer"],
                      head_options={"grid": [2], "penalty": ["l1", "group_lasso"], "strength": strengths},
                      cache_dir=cache, out=out / "multilayer", **{**COMMON, "epochs": 100, "batch_size": 16})
        results["multilayer, all cuts"] = multi.rows[0]
        kept = json.loads((out / "multilayer/best/config.json").read_text())["kept_cuts"]
        print(f"multilayer: {len(multi.rows)} settings in {time.perf_counter() - started:.0f} s; the retrained best "
              f"keeps {len(kept)} of 22 cuts", flush=True)
    if "multilayer_refit" in parts:  # Head2Toe's second fit on the kept fraction, without penalty
        started = time.perf_counter()
        refits = []
        for penalty, strength in (("l1", 0.01), ("group_lasso", 0.03)):
            refits += sweep("example:digits", DATA, cuts="candidates", heads=["multilayer"],
                            head_options={"grid": [2], "penalty": [penalty], "strength": [strength],
                                          "refit": [0.05, 0.25]},
                            cache_dir=cache, out=out / f"multilayer_refit_{penalty}",
                            **{**COMMON, "epochs": 100, "batch_size": 16}).rows
        results["multilayer, refit"] = max(refits, key=lambda row: row["val_accuracy_mean"])
        print(f"multilayer with refit: {len(refits)} settings in {time.perf_counter() - started:.0f} s", flush=True)
        for row in refits:
            print(f"  {row_text(row)}", flush=True)
    if "multilayer_thaw" in parts:  # the multi-layer head with its last layers fine-tuned
        started = time.perf_counter()
        thawed = sweep("example:digits", DATA, cuts="candidates", heads=["multilayer"], thaw=[2, 6],
                       head_options={"grid": [2], "penalty": ["l1"], "strength": [0.01]},
                       cache_dir=cache, out=out / "multilayer_thaw", **{**COMMON, "epochs": 100, "batch_size": 16})
        results["multilayer, thawed"] = thawed.rows[0]
        print(f"multilayer with thaw: {len(thawed.rows)} settings in {time.perf_counter() - started:.0f} s",
              flush=True)
    if "thaw" in parts:
        started = time.perf_counter()
        thawed = sweep("example:digits", DATA, cut="resnet_features", heads=["linear"], thaw=[0, 2, 4, 6],
                       cache_dir=cache, out=out / "thaw", **COMMON)
        results["fine-tuned (thaw)"] = next(row for row in thawed.rows if row["thaw"])
        results["penultimate cut, frozen"] = next(row for row in thawed.rows if not row["thaw"])
        print(f"thaw: {len(thawed.rows)} settings in {time.perf_counter() - started:.0f} s", flush=True)
    print("\ntest accuracy, mean ± std over 3 training seeds (the best setting of each kind, chosen on validation):")
    for name, row in results.items():
        print(f"  {name:24s} {row_text(row)}")
    print(f"\nsweep directories (sweep_cuts.png: accuracy per cut): {out}")


if __name__ == "__main__":
    main()
