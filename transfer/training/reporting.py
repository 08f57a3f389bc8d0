"""What a run leaves for people and scripts: metrics, history, plots, an atomic run directory."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from transfer import tables
from transfer.errors import TransferError
from transfer.text import printable

MODEL_FILE = "model.keras"  # a run directory's trained model (config.json beside it)


def check_new_run_dir(out) -> Path:
    """A run never overwrites another: refuse an existing directory (before any slow work)."""
    out = Path(out)
    if out.exists():
        raise TransferError(f"run directory {str(out)!r} already exists; choose another --out")
    return out


def partial_dir(out) -> Path:
    """Where a run directory is written until it is complete: `OUT.partial`."""
    return Path(out).with_name(Path(out).name + ".partial")


@contextlib.contextmanager
def run_directory(out, keep=None):
    """Write into `OUT.partial`, rename to `OUT` only when all went well: never half a run.
    `keep(partial)`: whether a killed or failed run's partial directory holds work to resume
    (a sweep's finished trials): it is then kept, else removed."""
    out = check_new_run_dir(out)
    partial = partial_dir(out)
    worth_keeping = keep or (lambda _: False)
    resumed = worth_keeping(partial)
    if not resumed:
        shutil.rmtree(partial, ignore_errors=True)  # the leftovers of a killed run
    try:
        partial.mkdir(parents=True, exist_ok=resumed)
    except OSError as error:
        raise TransferError(f"cannot create run directory {str(out)!r}: {error.strerror}") from None
    try:
        yield partial
    except BaseException:
        if not worth_keeping(partial):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def classification_metrics(y_true, probabilities, class_names) -> dict:
    """Accuracy, scikit-learn's per-class report and the confusion matrix of one split."""
    from sklearn.metrics import classification_report, confusion_matrix

    labels = np.arange(len(class_names))
    predicted = probabilities.argmax(axis=1)
    return {
        "examples": int(len(y_true)),
        "accuracy": float(np.mean(predicted == y_true)) if len(y_true) else None,
        "report": classification_report(y_true, predicted, labels=labels, target_names=list(class_names),
                                        output_dict=True, zero_division=0),
        "confusion_matrix": confusion_matrix(y_true, predicted, labels=labels).tolist(),
    }


def write_history(path: Path, history: dict) -> None:
    keys = list(history)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch, values in enumerate(zip(*(history[k] for k in keys)), start=1):
            writer.writerow([epoch, *(f"{v:.6g}" for v in values)])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def run_title(config: dict) -> str:
    """What names a run in its figures: `linear head, cut block2_out, thaw 2` (`printable`)."""
    thaw = config.get("thaw") or (f"from {config['thaw_from']}" if config.get("thaw_from") else None)
    cut = config.get("cut") or "auto"
    cuts = cut.split(",")
    cut_text = f"cut {cut}" if len(cuts) <= 3 else f"{len(cuts)} cuts ({cuts[0]} … {cuts[-1]})"
    return printable(f"{config.get('head', '?')} head, {cut_text}" + (f", thaw {thaw}" if thaw else ""))


def plot_learning_curves(path: Path, history: dict, kept_epoch: int | None = None, title: str | None = None):
    """Loss and accuracy per epoch; a dotted line marks the epoch whose weights were kept;
    `title` names the run (`run_title`). Returns the (closed) figure."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.4 if title else 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                axis.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        if kept_epoch is not None:
            axis.axvline(kept_epoch, color="gray", linestyle=":", label=f"kept (epoch {kept_epoch})")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(printable(title), parse_math=False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def plot_confusion_matrix(path: Path, matrix, class_names, title):
    """The matrix with the class names on both axes; returns the (closed) figure. Class names come
    from folder names: `printable`, and shown as they are, not as mathtext (`$...$`). `title`: a
    line, or several (a tuple)."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    names = [printable(name) for name in class_names]
    axis.set_xticks(ticks, names, rotation=45, ha="right", parse_math=False)
    axis.set_yticks(ticks, names, parse_math=False)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    lines = [title] if isinstance(title, str) else list(title)  # (the run, the score): one line each
    axis.set_title("\n".join(printable(line) for line in lines), parse_math=False)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def confusion_text(matrix, class_names) -> str:
    """The confusion matrix as an aligned text table (rows: true class, columns: predicted)."""
    names = [printable(name) for name in class_names]
    rows = [["true \\ predicted", *names], *([name, *map(str, row)] for name, row in zip(names, np.asarray(matrix)))]
    return "\n".join(tables.format_table(rows))
