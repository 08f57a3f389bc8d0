"""What a sweep leaves and shows: `sweep.csv`, `sweep.json`, the bar chart and the per-cut plot,
the ranked table, and the short labels of settings in progress lines."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from transfer.files import written_whole
from transfer.training.reporting import pyplot, write_json
from transfer import tables
from transfer.text import printable
from transfer.sweep.grid import ALL_CUTS, CSV_COLUMNS, SETTING_AXES


def write_sweep(directory, rows: list[dict], cut_order: list | None = None) -> None:
    """`sweep.csv`, `sweep.json` and `sweep.png` in `directory`, each written whole or not at all;
    with several cuts also `sweep_cuts.png`, accuracy per cut in `cut_order` (graph order)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with written_whole(directory / "sweep.csv") as path, open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([_show(row[column]) for column in CSV_COLUMNS] for row in rows)
    with written_whole(directory / "sweep.json") as path:
        write_json(path, rows)
    with written_whole(directory / "sweep.png") as path:
        _plot(path, rows)
    cuts = [cut for cut in cut_order or dict.fromkeys(row["cut"] for row in rows) if cut != ALL_CUTS]
    if len(cuts) > 1:
        with written_whole(directory / "sweep_cuts.png") as path:
            _plot_cuts(path, rows, cuts)


def best_per_cut(rows: list[dict], cuts: list) -> dict:
    """head -> [the best row of that head at each cut (None where it was not trained)]; heads
    that read all cuts at once are left out (see `_plot_cuts`)."""
    best = {}
    for row in rows:  # ranked: the first row of a (head, cut) is its best
        if row["cut"] == ALL_CUTS:
            continue
        per_cut = best.setdefault(row["head"], dict.fromkeys(cuts))
        if per_cut.get(row["cut"]) is None:
            per_cut[row["cut"]] = row
    return {head: [per_cut[cut] for cut in cuts] for head, per_cut in best.items()}


def _plot_cuts(path: Path, rows: list[dict], cuts: list):
    """Validation (solid) and test (dotted, only when there is a test split) accuracy per cut,
    cuts down the side in graph order, deepest at the bottom: where the features transfer. One
    line per head, its best setting at each cut; a head that reads all cuts at once
    (`multilayer`) is a dashed level (its best validation accuracy). Cut names are shortened
    (`short_cut_names`) and written across, so 22 cuts or 177 never crowd the axis: the figure
    grows with them. `printable`, not mathtext. Returns the (closed) figure."""
    plt = pyplot()
    names = short_cut_names(cuts)
    labels = [printable(names[cut]) for cut in cuts]
    figure, axis = plt.subplots(figsize=(6 + 0.065 * max(map(len, labels)), 1.6 + 0.26 * len(cuts)))
    positions = np.arange(len(cuts))
    tested = any(row["test_accuracy_mean"] is not None for row in rows)
    for number, (head, best) in enumerate(best_per_cut(rows, cuts).items()):
        for split, style in (("val", "-"), ("test", ":"))[:2 if tested else 1]:
            values = [np.nan if row is None or row[f"{split}_accuracy_mean"] is None else row[f"{split}_accuracy_mean"]
                      for row in best]
            axis.plot(values, positions, style, marker="o" if split == "val" else None, color=f"C{number}",
                      label=f"{printable(head)} ({'validation' if split == 'val' else 'test'})")
    for number, row in enumerate({row["head"]: row for row in reversed(rows) if row["cut"] == ALL_CUTS}.values()):
        axis.axvline(score(row["val_accuracy_mean"]), linestyle="--", color=f"C{number + 5}",
                     label=f"{printable(row['head'])}, all {len(cuts)} cuts (validation)")
    axis.set_yticks(positions, labels, fontsize=8, parse_math=False)
    axis.set_ylim(len(cuts) - 0.5, -0.5)  # the first cut on top, the deepest at the bottom
    axis.set_ylabel("cut, in graph order (deeper below)")
    axis.set_xlabel("accuracy")
    axis.set_xlim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    axis.set_title(f"accuracy per cut ({len(cuts)} cuts)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def format_table(rows: list[dict]) -> str:
    """The ranked rows as an aligned text table for the terminal: a column for each axis that
    varies between the settings (cut, head, training and thaw axes, head options) and one line
    above it for what every setting shares, so that a column never repeats one value."""
    settings = [row["setting"] for row in rows]
    varying = varying_keys(settings)
    heads = len({s["head"] for s in settings}) > 1
    columns = [*(["cut"] if "cut" in varying else []), *(["head"] if heads else []),
               *[key for key in varying if key != "cut"]]
    names = short_cut_names([row["cut"] for row in rows])
    tested = any(row["test_accuracy_mean"] is not None for row in rows)
    header = ("rank", *columns, "val", *(["test"] if tested else []), "seconds")
    lines = [(str(row["rank"]), *(_cell(row["setting"], key, names) for key in columns), _mean_std(row, "val"),
              *([_mean_std(row, "test")] if tested else []), f"{row['seconds_mean']:.1f}") for row in rows]
    shared = shared_values(settings, [*varying, "head"] if heads else varying)
    table = "\n".join(tables.format_table([header, *lines]))
    return printable(f"every setting: {shared}") + "\n" + table if shared else table


def shared_values(settings: list[dict], varying: list[str]) -> str:
    """`head=mlp lr=0.001 epochs=20`: the axes set to one value in every setting that has them."""
    keys = [key for key in ("head", *varying_keys(settings, every=True)) if key not in varying]  # each set somewhere
    return " ".join(f"{key}={next(_show(_value(s, key)) for s in settings if _value(s, key) is not None)}"
                    for key in keys)


def _cell(setting: dict, key: str, cut_names: dict) -> str:
    value = _value(setting, key)
    return "-" if value is None else printable(cut_names.get(value, value) if key == "cut" else _show(value))


def short_cut_names(specs: list) -> dict:
    """Cut specs as a person reads them: `:0` and the scopes every cut shares dropped
    (`digits_resnet_1/block1_out_1/Relu:0` -> `block1_out_1/Relu`)."""
    distinct = list(dict.fromkeys(spec for spec in specs if spec is not None))
    parts = [(spec[:-2] if spec.endswith(":0") else spec).split("/") for spec in distinct]
    shared = 0
    while len(parts) > 1 and all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    return {spec: "/".join(p[shared:]) for spec, p in zip(distinct, parts)}


def _plot(path: Path, rows: list[dict]):
    """Horizontal bars of mean validation accuracy, best on top, with std error bars over
    repeats (none for single runs); the labels `printable`, shown as they are (not as mathtext).
    Returns the (closed) figure."""
    plt = pyplot()
    shown = varying_keys([row["setting"] for row in rows])
    cut_names = short_cut_names([row["cut"] for row in rows])
    labels = [f"{row['rank']}. {label(row['setting'], shown, cut_names)}" for row in rows]
    means = [score(row["val_accuracy_mean"]) for row in rows]
    repeated = any(row["repeats"] > 1 for row in rows)
    errors = [row["val_accuracy_std"] or 0.0 for row in rows] if repeated else [0.0] * len(rows)
    width = 5 + 0.07 * max(map(len, labels), default=0)
    figure, axis = plt.subplots(figsize=(width, 1.2 + 0.35 * len(rows)))
    positions = np.arange(len(rows))
    axis.barh(positions, means, xerr=errors if repeated else None, capsize=3, color="tab:blue", alpha=0.8)
    for position, mean, error in zip(positions, means, errors):
        axis.text(mean + error + 0.01, position, f"{mean:.3f}", va="center", fontsize=8)
    axis.set_yticks(positions, labels, parse_math=False)
    axis.invert_yaxis()  # rank 1 on top
    axis.set_xlim(0, 1.12)
    axis.set_xlabel("validation accuracy")
    repeats = rows[0]["repeats"] if rows else 1
    axis.set_title(f"{len(rows)} settings, best first" + (f" (mean ± std of {repeats} runs)" if repeated else ""))
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return figure


def varying_keys(settings: list[dict], every: bool = False) -> list[str]:
    """The axes whose value differs between settings: what a label shows to tell them apart
    (with `every`, all the axes any setting sets)."""
    keys = ["cut", *SETTING_AXES, *dict.fromkeys(key for s in settings for key in s["head_options"])]
    return [key for key in keys
            if len({_show(_value(s, key)) for s in settings if _value(s, key) is not None}) > (0 if every else 1)]


def _value(setting: dict, key: str):
    if key == "head":
        return setting["head"]
    return setting.get(key) if key in SETTING_AXES or key == "cut" else setting["head_options"].get(key)


def _describe(setting: dict, keys: list[str], cut_names: dict | None = None) -> str:
    shown = {**setting, "cut": (cut_names or {}).get(setting.get("cut"), setting.get("cut"))}
    return " ".join(f"{key}={_show(_value(shown, key))}" for key in keys if _value(shown, key) is not None)


def label(setting: dict, keys: list[str], cut_names: dict | None = None) -> str:
    """A setting in one line for the terminal and plots: `printable` (cut names come from the graph)."""
    return printable(f"{setting['head']} {_describe(setting, keys, cut_names)}".rstrip())


def _show(value) -> str:
    """One compact text form for tables, labels and CSV cells."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def accuracy_text(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean_std(row: dict, split: str) -> str:
    """`0.912 ± 0.004` over repeats; a single run has no spread to show."""
    mean, std = row[f"{split}_accuracy_mean"], row[f"{split}_accuracy_std"]
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if row["repeats"] > 1 else f"{mean:.3f}"


def score(value) -> float:
    """An accuracy to sort and plot by: a missing one (no such split) below every real one."""
    return -1.0 if value is None else value
