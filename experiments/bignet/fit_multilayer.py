"""`transfer fit --cut candidates --head multilayer` against the concatenation and the best single cut.

Issue 22, item 4: on a pretrained network of many cuts, with 60 labels per class and 10 classes,
`fit --head multilayer` must be at least as good as a standardized logistic regression on every
candidate's pooled features concatenated. Backbone: `bignet.pb` (61 candidate cuts, pretrained on
shapes: see compare.py); data: scikit-learn's digits, `digits?per_class=60` (600 training
images, a stratified validation split of 359, the rest as test), each seed another draw.
Measured, each through the public API into one feature cache per seed:
- `fit(cut="candidates", head="multilayer")` with its defaults (grid 1, group lasso 0.01; the
  no-sparsity end fitted too and kept where validation prefers it), and the same with
  `concatenation=False` (the trained selection alone, as before);
- the concatenation: `multilayer` at the no-sparsity end only (`choose_multilayer(strengths=(0,))`,
  a logistic regression, C=1, on every cut averaged, standardized and concatenated);
- the best single cut: `sweep(cuts="candidates", heads=["logreg"])`, its best setting's test
  accuracy (every cut ranked by the ridge probe, logreg on the best 3, chosen on validation).
Test accuracy per seed and mean, and seconds each. Run: `python experiments/bignet/fit_multilayer.py`
(~6 min on 2 cores); `--backbone example:digits --data "digits:5-9?per_class=10"`: the digits
example's 22 cuts. CPU only.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import transfer
from transfer.heads import choose_multilayer
from transfer.features.inputs import open_inputs
from transfer.features.spec import CacheSpec
from transfer.sweep.sweeping import sweep

BACKBONE = Path(__file__).resolve().parent / "bignet.pb"


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def concatenation(backbone, data: str, seed: int, cache: Path) -> float:
    """Test accuracy of every candidate cut averaged and concatenated (the no-sparsity end)."""
    inputs = open_inputs(transfer.Backbone.load(backbone, cut="candidates"), data, seed=seed)
    splits = inputs.cached_features(CacheSpec(cache, pool="avg"), progress=False)
    choice = choose_multilayer(splits.train, splits.validation, len(splits.class_names), strengths=(0.0,))
    features, labels = [list(x) for x in zip(*splits.test.batch(4096).as_numpy_iterator())]
    probabilities = np.asarray(choice.head([np.asarray(x) for x in features[0]], training=False))
    return float(np.mean(np.argmax(probabilities, axis=1) == labels[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=str(BACKBONE), help="default: bignet.pb (or example:digits)")
    parser.add_argument("--data", default="digits?per_class=60", help="default: digits?per_class=60")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    data, backbone = args.data, args.backbone
    rows = {name: [] for name in ("multilayer", "multilayer, concatenation=False", "concatenation",
                                  "best single cut (sweep)")}
    for seed in map(int, args.seeds.split(",")):
        work = Path(tempfile.mkdtemp(prefix="fit-multilayer-"))
        common = dict(cut="candidates", head="multilayer", cache_dir=work / "cache", export=(), verbose=0, seed=seed)
        fitted, seconds = timed(transfer.fit, backbone, data, **common)
        rows["multilayer"].append((fitted.metrics["test"]["accuracy"], seconds, fitted.metrics["selection"]["kept"]))
        alone, seconds = timed(transfer.fit, backbone, data, head_options={"concatenation": False},
                               **common)
        rows["multilayer, concatenation=False"].append((alone.metrics["test"]["accuracy"], seconds, ""))
        accuracy, seconds = timed(concatenation, backbone, data, seed, work / "cache")
        rows["concatenation"].append((accuracy, seconds, ""))
        swept, seconds = timed(sweep, backbone, data, heads=["logreg"], cuts="candidates", seed=seed,
                               cache_dir=work / "cache", out=work / "sweep", export=(), progress=False)
        best = swept.rows[0]
        rows["best single cut (sweep)"].append((best["test_accuracy_mean"], seconds, best["cut"].split("/")[1]))
        print(f"seed {seed}: " + "; ".join(f"{name} {values[-1][0]:.3f}" for name, values in rows.items()), flush=True)
    print(f"\n{Path(backbone).name}, {data}, test accuracy (mean ± std over seeds {args.seeds}), seconds a run (mean)")
    for name, values in rows.items():
        accuracies = [v[0] for v in values]
        print(f"  {name:34s} {statistics.mean(accuracies):.3f} ± {statistics.pstdev(accuracies):.3f}  "
              f"per seed {', '.join(f'{a:.3f}' for a in accuracies)}  {statistics.mean(v[1] for v in values):6.1f} s"
              + (f"  ({', '.join(v[2] for v in values)})" if values[0][2] else ""))


if __name__ == "__main__":
    main()
