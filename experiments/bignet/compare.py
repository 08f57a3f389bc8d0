"""Best single cut against every cut at once (`multilayer`), on a 59-cut Xception-style network.

Backbone: `bignet.pb` (`pretrain.py`: pretrained on procedural 32x32 shapes). Target task, out of
the source's domain: scikit-learn's handwritten digits 0-9, upscaled from 8x8 to 32x32 (bilinear,
pixels / 16) and written to an npz (`digits32.npz` under `--out`), loaded as
`npz:digits32.npz?per_class=N`: N training images per class, a stratified 20 % validation split,
the rest (1797 - 360 - 10 N) as test. Each seed draws other training images (and validation).

Every candidate cut up to `features` (the penultimate tensor) comes from one pass of the backbone
(`Backbone.load(cut="candidates")`), each average-pooled on the fly to a `--grid` x `--grid` grid
(default 2x2; the `multilayer` head's `GridPooling`; a global average is the mean of the cells) so
that ~60 cuts of 1797 images fit in memory. Then, on the same features:
- single cut: standardized `logreg` on each cut, global average or the grid; the cut and pooling
  best on validation, its test accuracy; also the median over cuts (each with its pooling chosen
  on validation) and the penultimate cut (`features`);
- concatenated: one standardized `logreg` on all cuts, pooled and concatenated (the issue's
  baseline), global average and grid;
- multilayer: `choose_multilayer` on the grid-pooled cuts (each cut one group), penalties
  `--penalties` (default l1), strengths `--strengths` (0, the no-sparsity end: plain
  concatenation, a standardized logreg on all cuts), keep fractions `--keep` (Head2Toe's refit:
  that fraction of pooled features, the largest weights, trained again from zero without penalty;
  `none`: no refit), Adam `--lr`, `--batch-size`, <= `--epochs` with early stopping (patience 5);
  all chosen on validation.
Test accuracy, mean ± std over seeds, and per seed.
Run: `python experiments/bignet/compare.py` (10 and 30 labels per class, 3 seeds: ~20 min on 2 shared
CPU cores; `--per-class 10` alone ~7 min).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import transfer
import keras
from sklearn.datasets import load_digits

from transfer import Backbone
from transfer.heads import choose_multilayer, get
from transfer.heads.multilayer import GridPooling

BACKBONE = Path(__file__).resolve().parent / "bignet.pb"
LAST_CUT = "features:0"


def write_digits(path: Path) -> None:
    """scikit-learn's digits, 8x8 -> 32x32 (bilinear), pixels 0..16 -> 0..1, as an npz."""
    import tensorflow as tf

    digits = load_digits()
    images = tf.image.resize(digits.images[..., None].astype("float32") / 16, (32, 32), method="bilinear")
    np.savez(path, x=np.asarray(images, "float32"), y=digits.target.astype("int32"),
             class_names=np.array([str(d) for d in range(10)]))


def pooled_features(backbone, cuts, stream, grid, batch_size=256):
    """Per cut, its output pooled to a grid x grid grid (N, grid² C) (2-D cuts as they are); and the labels."""
    pool = GridPooling(grid)
    parts, labels = [[] for _ in cuts], []
    for images, batch_labels in stream.batch(batch_size).as_numpy_iterator():
        outputs = backbone(images)
        for part, cut in zip(parts, cuts):
            part.append(np.asarray(pool(outputs[cut])))
        labels.append(batch_labels)
    return [np.concatenate(part) for part in parts], np.concatenate(labels)


def global_average(grid_features: np.ndarray, width: int) -> np.ndarray:
    """The grid cells' mean: the global average (the bins split 32, 16 and 8 evenly)."""
    if grid_features.shape[1] == width:
        return grid_features
    return grid_features.reshape(len(grid_features), -1, width).mean(axis=1)


def logreg_scores(train, validation, test):
    probe = get("logreg").fit(train[0], train[1])
    return probe.score(validation[0], validation[1]), probe.score(test[0], test[1])


def single_cuts(train, validation, test, widths, names):
    """Per cut: (validation, test) accuracy of logreg for each pooling, and the best on validation."""
    rows = []
    for number, name in enumerate(names):
        for pooling in ("avg", "grid"):
            if pooling == "grid" and train[0][number].shape[1] == widths[number]:
                continue  # a 2-D cut has no grid
            val, tst = logreg_scores(*[(global_average(split[0][number], widths[number]) if pooling == "avg"
                                        else split[0][number], split[1]) for split in (train, validation, test)])
            rows.append({"cut": name, "number": number, "pooling": pooling, "val": val, "test": tst})
    return rows


def concatenated(train, validation, test, widths, pooling):
    def join(split):
        parts = [global_average(x, w) if pooling == "avg" else x for x, w in zip(split[0], widths)]
        return np.concatenate(parts, axis=1), split[1]

    return logreg_scores(join(train), join(validation), join(test))


def multilayer(train, validation, test, num_classes, args, seed):
    best, tried = None, []
    for penalty in args.penalties.split(","):
        choice = choose_multilayer(train, validation, num_classes, penalty=penalty, strengths=args.strengths,
                                   keep_fractions=args.keep, epochs=args.epochs, batch_size=args.batch_size,
                                   lr=args.lr, seed=seed)
        tried += [{"penalty": penalty, **{k: v for k, v in t.items() if k != "kept"}, "cuts kept": len(t["kept"])}
                  for t in choice.tried]
        if best is None or choice.val_accuracy > best[1].val_accuracy:
            best = (penalty, choice)
    penalty, choice = best
    probabilities = np.asarray(choice.head([keras.ops.convert_to_tensor(x) for x in test[0]], training=False))
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == test[1]))
    kept = sum(len(k) for k in choice.head.kept_features())
    note = (f"{penalty} {choice.strength:g}, refit {choice.keep_fraction}, {len(choice.head.kept)} cuts / "
            f"{kept} features kept")
    return tried, accuracy, note


def cut_name(spec: str) -> str:
    """`bignet_1/entry1_1_sepconv_1/separable_conv2d/depthwise:0` -> `entry1_1_sepconv_depthwise`."""
    parts = spec.split(":")[0].split("/")
    name = parts[1].removesuffix("_1") if len(parts) > 1 else parts[0]
    return name + ("_depthwise" if parts[-1] == "depthwise" else "")


def summary(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=str(BACKBONE))
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--penalties", default="l1", help="multilayer penalties to choose from")
    parser.add_argument("--strengths", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 0.01, 0.03, 0.1],
                        help="multilayer strengths (0: plain concatenation, the path's no-sparsity end)")
    parser.add_argument("--keep", type=lambda s: [None if v == "none" else float(v) for v in s.split(",")],
                        default=[None, 0.05], help="refit fractions (none: no refit)")
    parser.add_argument("--grid", type=int, default=2, help="cells per spatial axis of the pooled cuts")
    parser.add_argument("--batch-size", type=int, default=16, help="multilayer: batch size")
    parser.add_argument("--epochs", type=int, default=100, help="multilayer: at most this many epochs")
    parser.add_argument("--lr", type=float, default=1e-2, help="multilayer: Adam's learning rate")
    parser.add_argument("--out", type=Path, default=None, help="where digits32.npz and results.json go")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bignet-"))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "digits32.npz"
    write_digits(data)
    started = time.perf_counter()
    backbone = Backbone.load(args.backbone, cut="candidates")
    specs = [cut.spec for cut in backbone.cuts]
    specs = specs[:specs.index(LAST_CUT) + 1] if LAST_CUT in specs else specs
    backbone = backbone.subset(specs)
    names = [cut_name(spec) for spec in specs]
    print(f"{len(specs)} cuts, {names[0]} .. {names[-1]}", flush=True)
    results = {}
    for per_class in args.per_class:
        rows = {key: [] for key in ("best single cut", "median cut", "penultimate cut (features)",
                                    "all cuts concatenated, avg", "all cuts concatenated, grid",
                                    "multilayer (chosen on validation)")}
        for seed in range(args.seeds):
            splits = transfer.datasets.load(f"npz:{data}?per_class={per_class}", seed=seed)
            tick = time.perf_counter()
            train, validation, test = (pooled_features(backbone, specs, s, args.grid)
                                       for s in (splits.train, splits.validation, splits.test))
            widths = [int(cut.tensor.shape[-1]) for cut in backbone.cuts]
            extract = time.perf_counter() - tick
            tick = time.perf_counter()
            cuts = single_cuts(train, validation, test, widths, names)
            per_cut = {}
            for row in cuts:  # each cut with its pooling chosen on validation
                if row["cut"] not in per_cut or row["val"] > per_cut[row["cut"]]["val"]:
                    per_cut[row["cut"]] = row
            best = max(per_cut.values(), key=lambda row: (row["val"], -row["number"]))
            rows["best single cut"].append((best["test"], f"{best['cut']} ({best['pooling']})"))
            rows["median cut"].append((float(np.median([row["test"] for row in per_cut.values()])), ""))
            rows["penultimate cut (features)"].append((per_cut[names[-1]]["test"], ""))
            for pooling in ("avg", "grid"):
                _, accuracy = concatenated(train, validation, test, widths, pooling)
                rows[f"all cuts concatenated, {pooling}"].append((accuracy, ""))
            probes = time.perf_counter() - tick
            tick = time.perf_counter()
            tried, accuracy, note = multilayer(train, validation, test, splits.num_classes, args, seed)
            rows["multilayer (chosen on validation)"].append((accuracy, note))
            print(f"  N={per_class} seed {seed}: extraction {extract:.0f} s, logreg probes {probes:.0f} s, "
                  f"multilayer {time.perf_counter() - tick:.0f} s; best cut {best['cut']} ({best['pooling']}) "
                  f"{best['test']:.3f}, multilayer {accuracy:.3f} ({note})", flush=True)
            print("    multilayer validation accuracy: " + ", ".join(
                f"{t['penalty']} {t['strength']:g} refit {t['keep_fraction']}: {t['val_accuracy']:.3f}"
                for t in tried), flush=True)
            results.setdefault(str(per_class), {})[f"seed {seed} per cut"] = cuts
            results[str(per_class)][f"seed {seed} multilayer tried"] = tried
        for name, runs in rows.items():
            mean, std = summary([r[0] for r in runs])
            results[str(per_class)][name] = {"mean": mean, "std": std, "runs": runs}
    print(f"\n{len(specs)} cuts; test accuracy, mean ± std over {args.seeds} seeds (per seed: choice)")
    for per_class in args.per_class:
        for name, entry in results[str(per_class)].items():
            if name.startswith("seed"):
                continue
            runs = "; ".join(f"{r[0]:.3f}" + (f" ({r[1]})" if r[1] else "") for r in entry["runs"])
            print(f"  N={per_class:<3d} {name:36s} {entry['mean']:.3f} ± {entry['std']:.3f}   {runs}")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{time.perf_counter() - started:.0f} s in all; per-cut results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
