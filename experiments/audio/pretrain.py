"""Pretrain a small audio network on synthetic tones and freeze it to `experiments/audio/tones.pb`.

A 1-D convolutional network reads raw waveforms (1024 samples at 8 kHz, shape (1024, 1)) and
learns six kinds of tone (`PRETRAIN_KINDS`); four other kinds (`HELD_OUT_KINDS`) are kept for
`compare.py`, which transfers the frozen network to them from a few labels. Every example has a
random pitch (150-1200 Hz), phase, loudness and noise level, so a kind is its timbre or its
movement, never its pitch. The frozen graph names its pooled features `audio_features`.
Run: `python experiments/audio/pretrain.py` (under 2 min on 2 CPU cores; `tones.pb` is committed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import transfer  # noqa: F401  (pins the Keras backend)
import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretraining import pretrain_and_freeze  # noqa: E402  (the pretraining scripts' shared part)

OUT = Path(__file__).resolve().parent / "tones.pb"
RATE, SAMPLES = 8000, 1024
PRETRAIN_KINDS = ("sine", "square", "sawtooth", "chirp_up", "harmonics", "noise_burst")
HELD_OUT_KINDS = ("triangle", "chirp_down", "tremolo", "fifth")  # fifth: two sines, f and 1.5 f


def tone(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One noisy waveform of `kind` at a random pitch, phase and loudness, in [-~1.3, ~1.3]."""
    t = np.arange(SAMPLES) / RATE
    f0, phase = rng.uniform(150, 1200), rng.uniform(0, 2 * np.pi)
    cycles = f0 * t + phase / (2 * np.pi)
    if kind in ("chirp_up", "chirp_down"):
        start, end = (f0 / 2, f0 * 2) if kind == "chirp_up" else (f0 * 2, f0 / 2)
        cycles = start * t + (end - start) * t ** 2 / (2 * t[-1]) + phase / (2 * np.pi)
    sine = np.sin(2 * np.pi * cycles)
    wave = {
        "sine": lambda: sine,
        "square": lambda: np.sign(sine),
        "sawtooth": lambda: 2 * (cycles % 1) - 1,
        "triangle": lambda: 2 * np.abs(2 * (cycles % 1) - 1) - 1,
        "chirp_up": lambda: sine,
        "chirp_down": lambda: sine,
        "harmonics": lambda: (sine + 0.6 * np.sin(4 * np.pi * cycles) + 0.4 * np.sin(6 * np.pi * cycles)) / 2,
        "tremolo": lambda: sine * (0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(15, 40) * t)),
        "fifth": lambda: (sine + np.sin(2 * np.pi * 1.5 * cycles)) / 2,
        "noise_burst": lambda: rng.normal(0, 0.6, SAMPLES) * np.exp(-((t - rng.uniform(0.03, 0.1)) / 0.02) ** 2),
    }[kind]()
    return (rng.uniform(0.3, 1.0) * wave + rng.normal(0, rng.uniform(0.05, 0.3), SAMPLES)).astype("float32")


def make_tones(kinds, per_kind: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(waveforms (n, 1024, 1), labels 0..len(kinds)-1), `per_kind` of each, seeded."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(kinds)), per_kind)
    waves = np.stack([tone(kinds[label], rng) for label in labels])[..., None]
    return waves, labels


def conv_block(x, filters: int, kernel: int, name: str):
    x = keras.layers.Conv1D(filters, kernel, strides=2, padding="same", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # settles in ~50 steps
    return keras.layers.ReLU(name=f"{name}_out")(x)


def build_backbone() -> keras.Model:
    """(1024, 1) waveforms -> 64 pooled features; four strided conv blocks (~30 k weights)."""
    wave = keras.Input((SAMPLES, 1), name="waveform")
    x = conv_block(wave, 16, 15, "block1")
    x = conv_block(x, 32, 9, "block2")
    x = conv_block(x, 32, 9, "block3")
    x = conv_block(x, 64, 5, "block4")
    return keras.Model(wave, keras.layers.GlobalAveragePooling1D(name="gap")(x), name="tones_cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train = make_tones(PRETRAIN_KINDS, args.per_kind, seed=1000 + args.seed)
    x_test, y_test = make_tones(PRETRAIN_KINDS, 100, seed=2000 + args.seed)
    accuracy = pretrain_and_freeze(build_backbone(), len(PRETRAIN_KINDS), (x_train, y_train), (x_test, y_test),
                                   args.out, "audio_features", epochs=args.epochs)
    print(f"{len(PRETRAIN_KINDS)} pretraining kinds, held-out test accuracy {accuracy:.3f}; "
          f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
