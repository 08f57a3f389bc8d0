"""Every swept cut ranked by the closed-form ridge probe, and the full probe only for the best few.

A cut sweep with the `logreg` probe (`sweep --cuts candidates --heads logreg`) spent most of its
time in probes: one iterative logistic regression per cut, ~2 s each on 2,048 features, minutes
for a network's 177 candidate cuts where the one extraction pass takes seconds. The ridge probe
(`transfer.heads.ridge_probe`) scores a cut's whole regularization path from one
eigendecomposition; it ranks every cut under each pooling that the cached features allow (the
average over positions, and a 2x2 grid of a map, which keeps some of the layout that global
pooling loses), and only the best `finalists` (cut, pooling) pairs go on to the settings the user
asked for. The ranking is written beside the sweep's table (`cut_ranking.csv`).
"""
from __future__ import annotations

import csv
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from transfer.errors import TransferError, check_int
from transfer.heads.pooling import pool_array
from transfer.heads.ridge_probe import ridge_path
from transfer.sweep.grid import ALL_CUTS

# Cuts scored at once, each on one BLAS thread: the reads, products and factorizations release
# the GIL (ResNet50's 177 cuts: 6.4 s one after another, 4.5 s on two threads).
RANKING_THREADS = 2
FINALISTS = 3  # (cut, pooling) pairs the full probe trains on after the ranking (the default)
RANKED_HEADS = ("logreg",)  # the probes whose cut sweep the ridge ranking narrows
COLUMNS = ("rank", "cut", "pooling", "val_accuracy", "path_mean", "alpha", "features", "seconds", "finalist")


def ranks_first(settings: list[dict], cut_specs: list[str], finalists) -> bool:
    """Whether a sweep ranks its cuts with the ridge probe first: more cuts than finalists, and
    every setting a probe of one frozen cut (`RANKED_HEADS`)."""
    if finalists is None or finalists == 0:
        return False
    check_int("sweep", "finalists", finalists)
    return len(cut_specs) > finalists and all(
        s["head"] in RANKED_HEADS and s.get("cut") not in (None, ALL_CUTS) and not s.get("thaw") for s in settings)


def rank_cuts(features: dict, poolings=("avg", "grid2")) -> list[dict]:
    """Every cut of `features` (cut spec -> FeatureSplits) under every pooling of `poolings` its
    cached features allow (a 2-D cut: only `avg`, which leaves it as it is), scored by the ridge
    probe's validation accuracy; rows best first (ties: the path's mean accuracy, then graph order)."""
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(RANKING_THREADS) as pool:
        jobs = [(cut, splits, order) for order, (cut, splits) in enumerate(features.items())]
        scored = pool.map(lambda job: _scored(*job, poolings), jobs)
        rows = [row for cut_rows in scored for row in cut_rows]
    rows.sort(key=lambda row: (-row["val_accuracy"], -row["path_mean"], row["order"]))
    return [{"rank": rank, **{k: v for k, v in row.items() if k != "order"}} for rank, row in enumerate(rows, 1)]


def _scored(cut: str, splits, order: int, poolings) -> list[dict]:
    """One cut's rows, one per pooling (its features read whole from the cache's files)."""
    if not splits.has("validation"):
        raise TransferError("a cut ranking scores cuts on validation accuracy; these features have no validation "
                            "split")
    rows = []
    (train_x, train_y), (val_x, val_y) = splits.arrays("train"), splits.arrays("validation")
    for pooling in poolings if train_x.ndim > 2 else ("avg",):
        started = time.perf_counter()
        train_pooled, val_pooled = pool_array(train_x, pooling), pool_array(val_x, pooling)
        path = ridge_path(train_pooled, train_y, val_pooled, val_y, limit_blas=False)
        rows.append({"cut": cut, "pooling": pooling, "val_accuracy": path.val_accuracy,
                     "path_mean": float(np.mean(path.val_accuracies)), "alpha": float(path.alphas[path.best]),
                     "features": int(train_pooled.shape[1]), "seconds": time.perf_counter() - started,
                     "order": order})
    return rows


def finalist_settings(settings: list[dict], ranking: list[dict], finalists: int) -> list[dict]:
    """The settings on the best `finalists` (cut, pooling) pairs of `ranking`, each with the pair's
    pooling (cut by cut as the ranking has them); the ranking's rows are marked `finalist`."""
    chosen = ranking[:finalists]
    for row in ranking:
        row["finalist"] = row in chosen
    narrowed = []
    for row in chosen:
        for setting in settings:
            if setting["cut"] == row["cut"]:
                options = {**setting["head_options"], "pooling": row["pooling"]}
                candidate = {**setting, "head_options": options}
                if candidate not in narrowed:
                    narrowed.append(candidate)
    return narrowed


def narrowed_sweep(features: dict, settings: list[dict], finalists: int, progress: bool) -> tuple:
    """(the ranking, the settings the full probe trains): every cut ranked, the best kept."""
    started = time.perf_counter()
    cached_maps = any(len(splits.feature_shapes[0]) > 1 for splits in features.values())
    ranking = rank_cuts({cut: features[cut] for cut in dict.fromkeys(s["cut"] for s in settings)})
    kept = finalist_settings(settings, ranking, finalists)
    if progress:
        poolings = "average and 2x2 grid" if cached_maps else "average (the cache holds averages: --pool none "\
                                                              "keeps the maps for a grid)"
        print(f"ranked {len(ranking)} (cut, pooling) pairs ({poolings}) with the ridge probe in "
              f"{time.perf_counter() - started:.1f} s; the full probe on the best {finalists}: "
              + ", ".join(f"{row['cut']} ({row['pooling']}, val {row['val_accuracy']:.3f})"
                          for row in ranking[:finalists]), file=sys.stderr, flush=True)
    return ranking, kept


def write_ranking(path, ranking: list[dict]) -> None:
    """The ranking as a CSV table, best first."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for row in ranking:
            writer.writerow({key: _cell(row.get(key)) for key in COLUMNS})


def _cell(value):
    return f"{value:.4g}" if isinstance(value, float) else value
