"""Transfer from the shipped digits backbone (pretrained on 0-4) against training from scratch.

Target task: digits 5-9 with N labelled training images per class (the README's main job).
"thaw K" also trains the last K weight layers of the backbone (transfer.fit(thaw=K)).
Every variant sees the same splits (transfer.datasets.load with the same seed): N per class to
train, a stratified validation split for early stopping, the rest as test. "scratch" is the
same network as the backbone (experiments/digits/pretrain.py) plus a Dense head, randomly
initialised and trained on those N per class. Test accuracy, mean ± std over seeds.
Run: `python experiments/digits/compare.py` (~8 min on 2 CPU cores; `--only thaw` for the thaw rows).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import transfer
import keras
from pretrain import build_backbone  # the same architecture as the shipped backbone

VARIANTS = {  # name -> transfer.fit arguments
    "transfer: resnet_features + linear": dict(cut="resnet_features", head="linear"),
    "transfer: resnet_features + mlp": dict(cut="resnet_features", head="mlp", head_options={"hidden": (64,)}),
    "transfer: block2_out + linear (flatten)": dict(cut="block2_out", head="linear",
                                                    head_options={"pooling": "flatten"}),
    "transfer: block1_out + logreg (flatten)": dict(cut="block1_out", head="logreg",
                                                    head_options={"pooling": "flatten"}),
    "transfer + thaw 2: resnet_features + linear": dict(cut="resnet_features", head="linear", thaw=2),
    "transfer + thaw 5: resnet_features + linear": dict(cut="resnet_features", head="linear", thaw=5),
    "thaw 5, prefix from the feature cache": dict(cut="resnet_features", head="linear", thaw=5,
                                                  cache_dir="compare-cache"),
    "thaw 5, thawed lr x0.1": dict(cut="resnet_features", head="linear", thaw=5, thaw_lr_scale=0.1),
    "thaw 5, two stages (head 30 ep, then all)": dict(cut="resnet_features", head="linear", thaw=5, head_epochs=30),
    "thaw 5, unfreeze one layer every 5 ep": dict(cut="resnet_features", head="linear", thaw=5, unfreeze_every=5),
    "thaw 5, weight decay 1e-3 on thawed": dict(cut="resnet_features", head="linear", thaw=5,
                                                thaw_weight_decay=1e-3),
}


def scratch(spec: str, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    splits = transfer.datasets.load(spec, seed=seed)

    def arrays(stream):
        pairs = list(stream.as_numpy_iterator())
        return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = map(arrays, (splits.train, splits.validation, splits.test))
    model = keras.Sequential([build_backbone(), keras.layers.Dense(splits.num_classes, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=150, batch_size=32, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=15, restore_best_weights=True)])
    return model.evaluate(x_test, y_test, verbose=0)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", metavar="TEXT", help="run only the variants whose name contains TEXT")
    args = parser.parse_args()
    print(f"{'labels/class':>12s}  {'variant':42s} {'test accuracy':>16s} {'s/run':>6s}  per seed")
    for per_class in args.per_class:
        spec = f"digits:5-9?per_class={per_class}"
        runs = {name: (lambda seed, kw=kw, spec=spec: transfer.fit(
                    "example:digits", spec, epochs=100, lr=0.01, patience=10, seed=seed, verbose=0,
                    **kw).metrics["test"]["accuracy"])
                for name, kw in VARIANTS.items()}
        runs["scratch: same network, random init"] = lambda seed, spec=spec: scratch(spec, seed)
        for name, run in runs.items():
            if args.only and args.only not in name:
                continue
            started = time.perf_counter()
            scores = [run(seed) for seed in range(args.seeds)]
            seconds = (time.perf_counter() - started) / args.seeds
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            print(f"{per_class:12d}  {name:42s} {statistics.mean(scores):.3f} ± {spread:.3f}   {seconds:6.1f}  "
                  + " ".join(f"{s:.3f}" for s in scores), flush=True)


if __name__ == "__main__":
    main()
