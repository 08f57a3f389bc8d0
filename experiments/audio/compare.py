"""Transfer the frozen tones network (pretrain.py) to held-out kinds of tone, against scratch.

Target task: the four kinds the network never saw (`HELD_OUT_KINDS`: triangle, chirp down,
tremolo, fifth) from N labelled waveforms per kind; 200 test waveforms per kind. Only the N
labels per kind are used for anything: no validation split, no early stopping, fixed epochs,
for every variant alike. Transfer variants run `transfer.fit` on `tones.pb` from an npz file
of raw waveforms (the command-line equivalent is printed). "scratch" is the same network with
a Dense head, randomly initialised and trained on those N per kind; "random frozen" is the same
network with random weights frozen to a .pb and probed like the pretrained one (is it the
pretraining that helps, or only the architecture and the probe?). Test accuracy, mean ± std
over seeds (each seed draws its own labelled waveforms and initialisations).
Run: `cd experiments/audio && python compare.py` (~6 min on 2 busy CPU cores; scratch is most of it).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import transfer
import keras
from pretrain import HELD_OUT_KINDS, OUT, build_backbone, freeze_with_named_features, make_tones

VARIANTS = {  # name -> transfer.fit arguments (besides backbone and data)
    "transfer: audio_features + logreg": dict(cut="audio_features", head="logreg"),
    "transfer: block3_out + logreg (avg)": dict(cut="block3_out", head="logreg", head_options={"pooling": "avg"}),
    "transfer: block4_out + linear (avg)": dict(cut="block4_out", head="linear", epochs=100, lr=0.01),
    "transfer + thaw 2: audio_features + linear": dict(cut="audio_features", head="linear", thaw=2, epochs=100,
                                                       lr=0.01),
}


def write_task(directory: Path, per_kind: int, seed: int) -> str:
    """An npz with `per_kind` labelled waveforms per held-out kind and a 200-per-kind test split."""
    x, y = make_tones(HELD_OUT_KINDS, per_kind, seed=3000 + seed)
    x_test, y_test = make_tones(HELD_OUT_KINDS, 200, seed=4000)
    path = directory / f"held_out_{per_kind}_{seed}.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test, class_names=np.array(HELD_OUT_KINDS))
    return f"npz:{path}"


def run_transfer(backbone: Path, data: str, seed: int, options: dict) -> float:
    result = transfer.fit(backbone, data, validation_split=0, patience=None, seed=seed, export=(), verbose=0,
                          **options)
    return result.metrics["test"]["accuracy"]


def scratch(data: str, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    with np.load(data[len("npz:"):]) as arrays:
        x, y, x_test, y_test = (arrays[key] for key in ("x", "y", "x_test", "y_test"))
    model = keras.Sequential([build_backbone(), keras.layers.Dense(len(HELD_OUT_KINDS), activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=100, batch_size=32, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1]


def random_frozen(directory: Path, seed: int) -> Path:
    """The same architecture, untrained, frozen like tones.pb (with a dummy classifier)."""
    keras.utils.set_random_seed(100 + seed)
    path = directory / f"random_{seed}.pb"
    classifier = keras.layers.Dense(len(HELD_OUT_KINDS), activation="softmax", name="classifier")
    path.write_bytes(freeze_with_named_features(build_backbone(), classifier).graph_def.SerializeToString())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", metavar="TEXT", help="run only the variants whose name contains TEXT")
    args = parser.parse_args()
    if not OUT.exists():
        raise SystemExit(f"{OUT} is missing: run `python pretrain.py` first")
    work = Path(tempfile.mkdtemp(prefix="audio-compare-"))
    print(f"e.g. transfer fit --backbone {OUT.name} --cut audio_features --head logreg "
          f"--data npz:{work}/held_out_5_0.npz --validation-split 0")
    print(f"{'labels/class':>12s}  {'variant':44s} {'test accuracy':>16s} {'s/run':>6s}  per seed")
    for per_class in args.per_class:
        tasks = [write_task(work, per_class, seed) for seed in range(args.seeds)]
        runs = {name: (lambda seed, kw=kw, tasks=tasks: run_transfer(OUT, tasks[seed], seed, kw))
                for name, kw in VARIANTS.items()}
        runs["random frozen: audio_features + logreg"] = lambda seed, tasks=tasks: run_transfer(
            random_frozen(work, seed), tasks[seed], seed, VARIANTS["transfer: audio_features + logreg"])
        runs["scratch: same network, random init"] = lambda seed, tasks=tasks: scratch(tasks[seed], seed)
        for name, run in runs.items():
            if args.only and args.only not in name:
                continue
            started = time.perf_counter()
            scores = [run(seed) for seed in range(args.seeds)]
            seconds = (time.perf_counter() - started) / args.seeds
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            print(f"{per_class:12d}  {name:44s} {statistics.mean(scores):.3f} ± {spread:.3f}   {seconds:6.1f}  "
                  + " ".join(f"{s:.3f}" for s in scores), flush=True)


if __name__ == "__main__":
    main()
