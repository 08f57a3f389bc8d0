"""What the figures show (issue 25, item 14), read from the matplotlib objects the plot functions
return, never from pixels: legend entries only for lines drawn, short horizontal cut labels,
error bars only over repeats, a title naming the run; `evaluate` draws and prints its matrix."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cli_checks import run_cli, user_error
from transfer.sweep.report import _plot, _plot_cuts
from transfer.training.reporting import confusion_text, plot_confusion_matrix, plot_learning_curves, run_title

PREFIX = "model_1/backbone_1/"
CUTS = [f"{PREFIX}block{i}_out_1/Relu:0" for i in range(22)]


def row(rank, cut, head="linear", val=0.5, test=None, repeats=1, std=0.0):
    setting = {"head": head, "cut": cut, "head_options": {}, "lr": 0.001, "epochs": 10}
    return {"rank": rank, "head": head, "cut": cut, "setting": setting, "repeats": repeats,
            "val_accuracy_mean": val, "val_accuracy_std": std if repeats > 1 else None,
            "test_accuracy_mean": test, "test_accuracy_std": None, "seconds_mean": 1.0}


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_sweep_cuts_draws_test_lines_only_with_a_test_split(tmp_path):
    untested = [row(i + 1, cut, val=0.5 + 0.01 * i) for i, cut in enumerate(CUTS)]
    figure = _plot_cuts(tmp_path / "cuts.png", untested, CUTS)
    assert legend_texts(figure) == ["linear (validation)"]
    tested = [row(i + 1, cut, val=0.5, test=0.4) for i, cut in enumerate(CUTS)]
    assert legend_texts(_plot_cuts(tmp_path / "cuts.png", tested, CUTS)) == ["linear (validation)", "linear (test)"]


def test_sweep_cuts_labels_are_short_horizontal_and_fit_the_plot(tmp_path):
    rows = [row(i + 1, cut) for i, cut in enumerate(CUTS)]
    figure = _plot_cuts(tmp_path / "cuts.png", rows, CUTS)
    axis = figure.axes[0]
    labels = axis.get_yticklabels()
    assert [label.get_text() for label in labels] == [f"block{i}_out_1/Relu" for i in range(22)]  # prefix gone
    assert all(label.get_rotation() == 0 for label in labels) and axis.get_xticklabels()[0].get_rotation() == 0
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)  # the labels' extent: across, inside the plot's height, one row each
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    plot = axis.get_window_extent(renderer)
    assert max(box.height for box in boxes) < plot.height / len(CUTS)
    assert min(box.y0 for box in boxes) >= plot.y0 - 1 and max(box.y1 for box in boxes) <= plot.y1 + 1
    assert (tmp_path / "cuts.png").is_file()


def errorbars(figure) -> list:
    return [container.errorbar for container in figure.axes[0].containers if hasattr(container, "errorbar")]


def test_sweep_bars_have_error_bars_only_over_repeats(tmp_path):
    single = [row(1, "a", val=0.9), row(2, "b", val=0.8)]
    figure = _plot(tmp_path / "sweep.png", single)
    assert errorbars(figure) == [None] and "±" not in figure.axes[0].get_title()
    repeated = [row(1, "a", val=0.9, repeats=3, std=0.02), row(2, "b", val=0.8, repeats=3, std=0.01)]
    figure = _plot(tmp_path / "sweep.png", repeated)
    assert errorbars(figure)[0] is not None and "mean ± std of 3 runs" in figure.axes[0].get_title()


def test_run_figures_name_the_run(tmp_path):
    config = {"head": "mlp", "cut": "block2_out", "thaw": 2, "thaw_from": None}
    assert run_title(config) == "mlp head, cut block2_out, thaw 2"
    assert run_title({"head": "linear", "cut": "a", "thaw": None, "thaw_from": "conv5"}) == \
        "linear head, cut a, thaw from conv5"
    assert run_title({"head": "multilayer", "cut": "a,b,c,d", "thaw": 0}) == "multilayer head, 4 cuts (a … d)"
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]}
    figure = plot_learning_curves(tmp_path / "curves.png", history, 2, title=run_title(config))
    assert figure._suptitle.get_text() == "mlp head, cut block2_out, thaw 2"
    figure = plot_confusion_matrix(tmp_path / "matrix.png", np.eye(2, dtype=int), ["a", "b"],
                                   (run_title(config), "test accuracy 1.000"))
    assert figure.axes[0].get_title().splitlines() == ["mlp head, cut block2_out, thaw 2", "test accuracy 1.000"]


def test_confusion_text():
    assert confusion_text([[3, 1], [0, 4]], ["cat", "dog"]).splitlines() == [
        "true \\ predicted  cat  dog", "cat               3    1", "dog               0    4"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from transfer.cli.main import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["fit", "--backbone", "example:digits", "--cut", "block2_out", "--data", "digits:5-9?per_class=10",
                 "--epochs", "2", "--export", "none", "--out", str(out), "--quiet"]) == 0
    return out


def test_fit_titles_its_figures_with_the_run(digits_run):
    import matplotlib.image

    assert matplotlib.image.imread(digits_run / "learning_curves.png").shape[2] in (3, 4)
    config = json.loads((digits_run / "config.json").read_text())
    assert run_title(config) == "linear head, cut block2_out"


def test_evaluate_writes_and_prints_its_confusion_matrix(digits_run, capsys, tmp_path):
    out = tmp_path / "evaluation"
    code, printed, err = run_cli(capsys, "evaluate", digits_run, "--data", "digits:5-9", "--out", out)
    assert code == 0, err
    assert "confusion matrix (rows: true class, columns: predicted):\ntrue \\ predicted  5" in printed
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["examples"] and metrics["class_names"][0] == "5"
    outs = []
    for _ in range(2):  # two within a second: two directories
        code, printed, _ = run_cli(capsys, "evaluate", digits_run, "--data", "digits:5-9", "--json")
        assert code == 0
        outs.append(json.loads(printed)["out"])
    assert outs[0].startswith(str(digits_run / "evaluate-")) and outs[1] != outs[0]
    user_error(capsys, ["evaluate", digits_run, "--data", "digits:5-9", "--out", out],
               r"^transfer evaluate: error: run directory '.*evaluation' already exists; choose another --out$")


@pytest.mark.slow
def test_evaluate_refuses_an_existing_out_before_tensorflow_loads(tmp_path):
    script = [sys.executable, "-X", "importtime", "-m", "transfer", "evaluate", str(tmp_path), "--data", "digits",
              "--out", str(tmp_path)]
    result = subprocess.run(script, capture_output=True, text=True, timeout=120)
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time")]
    assert result.returncode == 2 and said == [f"transfer evaluate: error: run directory '{tmp_path}' already exists; "
                                               "choose another --out"], result.stderr[-2000:]
    assert "tensorflow" not in {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
