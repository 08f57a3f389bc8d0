"""The `multilayer` head on the shipped digits backbone: every ReLU cut at once against the best single cut.

Target task: digits 5-9 with N labels per class (`digits:5-9?per_class=N`: a stratified validation
split, the rest as test), the backbone pretrained on digits 0-4 (`transfer/examples/digits.pb`).
Features of six cuts come from one pass of the backbone (`Backbone.load(cut="a,b,...")`).
- single cut: `logreg` (standardized) on each cut's features, avg-pooled and flattened; the cut
  and pooling with the best validation accuracy, and its test accuracy;
- multilayer: `choose_multilayer` (every cut pooled to a 2x2 grid, `--grid`, standardized, group
  lasso, strengths 1e-3..3e-2, with and without a refit on the top 25 % features) chosen on validation.
Test accuracy, mean ± std over seeds (each seed draws other training images).
Run: `python experiments/multilayer/compare.py` (6 min of CPU on 2 cores, 19 min wall on shared cores).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import transfer
from transfer import Backbone
from transfer.heads import choose_multilayer, get

CUTS = {  # short name -> tensor, in graph order
    "stem": "digits_resnet_1/stem_1/Relu:0",
    "block1_relu1": "digits_resnet_1/block1_relu1_1/Relu:0",
    "block1_out": "digits_resnet_1/block1_out_1/Relu:0",
    "block2_relu1": "digits_resnet_1/block2_relu1_1/Relu:0",
    "block2_out": "digits_resnet_1/block2_out_1/Relu:0",
    "resnet_features": "resnet_features:0",
}


def features(backbone, stream):
    pairs = list(stream.as_numpy_iterator())
    images = np.stack([x for x, _ in pairs]).astype("float32")
    outputs = backbone(images)
    return [np.asarray(outputs[spec]) for spec in CUTS.values()], np.array([y for _, y in pairs])


def best_single_cut(train, validation, test):
    """(name, validation accuracy, test accuracy) of the best cut x pooling for logreg."""
    best = None
    for number, name in enumerate(CUTS):
        for pooling in ("avg", "flatten"):
            probe = get("logreg", pooling=pooling).fit(train[0][number], train[1])
            score = (probe.score(validation[0][number], validation[1]), -number)
            if best is None or score > best[0]:
                best = (score, f"{name} ({pooling})", probe.score(test[0][number], test[1]))
    return best[1], best[0][0], best[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid", type=int, default=2, help="multilayer: cells per spatial axis")
    parser.add_argument("--batch-size", type=int, default=64, help="multilayer: batch size")
    parser.add_argument("--epochs", type=int, default=50, help="multilayer: at most this many epochs")
    args = parser.parse_args()
    backbone = Backbone.load("example:digits", cut=",".join(CUTS.values()))
    print(f"{'labels/class':>12s}  {'variant':12s} {'test accuracy':>16s} {'s/run':>6s}  per seed (choice)")
    for per_class in args.per_class:
        results = {"single cut": [], "multilayer": []}
        for seed in range(args.seeds):
            splits = transfer.datasets.load(f"digits:5-9?per_class={per_class}", seed=seed)
            train, validation, test = (features(backbone, s) for s in (splits.train, splits.validation, splits.test))
            started = time.perf_counter()
            name, _, accuracy = best_single_cut(train, validation, test)
            results["single cut"].append((accuracy, time.perf_counter() - started, name))
            started = time.perf_counter()
            choice = choose_multilayer(train, validation, splits.num_classes, grid=args.grid,
                                       keep_fractions=(None, 0.25), batch_size=args.batch_size,
                                       epochs=args.epochs, seed=seed)
            probabilities = np.asarray(choice.head(test[0], training=False))
            accuracy = float(np.mean(np.argmax(probabilities, axis=1) == test[1]))
            kept = "+".join(list(CUTS)[i] for i in choice.head.kept)
            results["multilayer"].append((accuracy, time.perf_counter() - started,
                                          f"strength {choice.strength:g}, keep {choice.keep_fraction}, kept {kept}"))
        for variant, runs in results.items():
            scores = [r[0] for r in runs]
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            print(f"{per_class:12d}  {variant:12s} {statistics.mean(scores):.3f} ± {spread:.3f}   "
                  f"{statistics.mean(r[1] for r in runs):6.1f}  " + "; ".join(f"{r[0]:.3f} ({r[2]})" for r in runs),
                  flush=True)


if __name__ == "__main__":
    main()
