"""Every candidate cut ranked two ways: the closed-form ridge probe against standardized logreg.

What a `sweep --cuts candidates --heads logreg` does since issue 22 (`transfer.sweep.cut_ranking`)
is rank every (cut, pooling) pair with the ridge probe and train logreg on the best 5 only; this
checks what that costs in ranking quality. For each network, labels per class and data seed, on
the same features: every cut under global-average and 2x2-grid pooling (a 2-D cut: as it is),
scored on validation by both probes; then
  - rank correlation (Spearman) between the two validation scorings, over all pairs;
  - test accuracy (logreg) of the pair logreg ranks first (what `--finalists 0` picks), of the
    pair the ridge probe ranks first, and of the sweep's pick (the best of the ridge top 5, the
    default `--finalists`, by logreg validation accuracy; and of the top 3);
  - the seconds each scoring took for all pairs.
Networks: the digits example (`example:digits`, 22 cuts; target digits 5-9, the quick start's task)
and `bignet/bignet.pb` (59 cuts up to `features`; target all digits upscaled to 32x32, out of its
domain; features pooled as `bignet/compare.py` pools them). Seeds draw other training images.
Run: `python experiments/cuts/ranking.py` (~10 min on 2 cores). CPU only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import transfer
from transfer import Backbone
from transfer.features.inputs import open_inputs
from transfer.heads import get, pool_array
from transfer.heads.ridge_probe import ridge_path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bignet"))
from compare import BACKBONE as BIGNET, LAST_CUT, cut_name, global_average, pooled_features, write_digits  # noqa: E402


def digits_example_features(per_class: int, seed: int, workdir: Path):
    """{cut: {pooling: (train, validation, test)}} of the digits example on digits 5-9."""
    inputs = open_inputs(Backbone.load("example:digits", cut="candidates"),
                         f"digits:5-9?per_class={per_class}", seed=seed)
    by_cut = inputs.cached_features_by_cut(tempfile.mkdtemp(dir=workdir), progress=False)
    features = {}
    for cut, splits in by_cut.items():
        arrays = [_arrays(getattr(splits, role)) for role in ("train", "validation", "test")]
        poolings = ("avg", "grid2") if arrays[0][0].ndim > 2 else ("avg",)
        features[cut] = {pooling: [(pool_array(x, pooling), y) for x, y in arrays] for pooling in poolings}
    return features


def bignet_features(per_class: int, seed: int, workdir: Path):
    data = workdir / "digits32.npz"
    if not data.exists():
        write_digits(data)
    backbone = Backbone.load(str(BIGNET), cut="candidates")
    specs = [cut.spec for cut in backbone.cuts]
    backbone = backbone.subset(specs[:specs.index(LAST_CUT) + 1])
    specs = [cut.spec for cut in backbone.cuts]
    widths = [int(cut.tensor.shape[-1]) for cut in backbone.cuts]
    splits = transfer.datasets.load(f"npz:{data}?per_class={per_class}", seed=seed)
    pooled = [pooled_features(backbone, specs, s, 2) for s in (splits.train, splits.validation, splits.test)]
    features = {}
    for number, (spec, width) in enumerate(zip(specs, widths)):
        grid = [(xs[number], y) for xs, y in pooled]
        average = [(global_average(x, width), y) for x, y in grid]
        features[spec] = {"avg": average, **({"grid2": grid} if grid[0][0].shape[1] > width else {})}
    return features


def _arrays(dataset):
    batches = list(dataset.batch(4096).as_numpy_iterator())
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def score_pairs(features: dict) -> tuple[list[dict], dict]:
    """Per (cut, pooling): validation and test accuracy of logreg and of the ridge probe."""
    rows, seconds = [], {"logreg": 0.0, "ridge": 0.0}
    for order, (cut, poolings) in enumerate(features.items()):
        for pooling, (train, validation, test) in poolings.items():
            started = time.perf_counter()
            probe = get("logreg").fit(*train)
            seconds["logreg"] += time.perf_counter() - started
            started = time.perf_counter()
            path = ridge_path(*train, *validation)
            seconds["ridge"] += time.perf_counter() - started
            rows.append({"cut": cut, "pooling": pooling, "order": order,
                         "logreg_val": probe.score(*validation), "logreg_test": probe.score(*test),
                         "ridge_val": path.val_accuracy, "ridge_mean": float(np.mean(path.val_accuracies)),
                         "ridge_test": float(np.mean(path.predict(test[0]) == test[1]))})
    return rows, seconds


def compared(rows: list[dict], finalists: int = 5) -> dict:
    by_logreg = sorted(rows, key=lambda r: (-r["logreg_val"], r["order"]))
    by_ridge = sorted(rows, key=lambda r: (-r["ridge_val"], -r["ridge_mean"], r["order"]))
    swept = {k: max(by_ridge[:k], key=lambda r: r["logreg_val"]) for k in (3, 5)}
    rho = spearmanr([r["logreg_val"] for r in rows], [r["ridge_val"] for r in rows]).statistic
    name = lambda r: f"{cut_name(r['cut'])} ({r['pooling']})"  # noqa: E731
    return {"rho": float(rho), "logreg_top": by_logreg[0]["logreg_test"], "ridge_top": by_ridge[0]["logreg_test"],
            "sweep": swept[finalists]["logreg_test"], "sweep3": swept[3]["logreg_test"],
            "logreg_top_name": name(by_logreg[0]), "ridge_top_name": name(by_ridge[0]),
            "sweep_name": name(swept[finalists]), "ridge_top_ridge_test": by_ridge[0]["ridge_test"],
            "grid_won": {"logreg": by_logreg[0]["pooling"], "ridge": by_ridge[0]["pooling"]},
            "ridge_order": [name(r) for r in by_ridge[:5]], "logreg_order": [name(r) for r in by_logreg[:5]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["digits", "bignet"], choices=["digits", "bignet"])
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="where results.json goes")
    args = parser.parse_args()
    workdir = args.out or Path(tempfile.mkdtemp(prefix="ranking-"))
    workdir.mkdir(parents=True, exist_ok=True)
    loaders = {"digits": digits_example_features, "bignet": bignet_features}
    results = []
    for network in args.networks:
        for per_class in args.per_class:
            for seed in range(args.seeds):
                rows, seconds = score_pairs(loaders[network](per_class, seed, workdir))
                result = {"network": network, "per_class": per_class, "seed": seed, "pairs": len(rows),
                          "seconds": seconds, **compared(rows), "rows": rows}
                results.append(result)
                print(f"{network} N={per_class} seed {seed}: {len(rows)} pairs, rho {result['rho']:.3f}; test of the "
                      f"top by logreg {result['logreg_top']:.3f} [{result['logreg_top_name']}], by ridge "
                      f"{result['ridge_top']:.3f} [{result['ridge_top_name']}], sweep (ridge top 5, then logreg) "
                      f"{result['sweep']:.3f} [{result['sweep_name']}] (top 3: {result['sweep3']:.3f}); "
                      f"seconds logreg {seconds['logreg']:.1f}, "
                      f"ridge {seconds['ridge']:.1f}", flush=True)
                print(f"    top 5 by logreg: {result['logreg_order']}\n    top 5 by ridge:  {result['ridge_order']}",
                      flush=True)
    print("\nmean over seeds: network, labels/class, rho, test of the top by logreg / by ridge / the sweep's pick, "
          "seconds logreg / ridge")
    for network in args.networks:
        for per_class in args.per_class:
            runs = [r for r in results if r["network"] == network and r["per_class"] == per_class]
            means = {key: statistics.mean(r[key] for r in runs)
                     for key in ("rho", "logreg_top", "ridge_top", "sweep", "sweep3")}
            seconds = {key: statistics.mean(r["seconds"][key] for r in runs) for key in ("logreg", "ridge")}
            print(f"  {network:7s} {per_class:3d}  {means['rho']:.3f}  {means['logreg_top']:.3f} / "
                  f"{means['ridge_top']:.3f} / {means['sweep']:.3f} (top 3: {means['sweep3']:.3f})  "
                  f"{seconds['logreg']:.1f} / {seconds['ridge']:.2f}")
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results in {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
