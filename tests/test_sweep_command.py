"""`transfer sweep` end to end: extract once, train every setting, rank, export the best."""
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import transfer
from transfer import Backbone
from transfer.features.cache import FeatureCache
from transfer.cli.main import main
from transfer.sweep.journal import finished_trials

DATA = "digits:5-9?per_class=10"


@pytest.mark.slow
def test_sweep_ranks_settings_and_exports_the_best(tmp_path, capsys):
    out, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    code = main(["sweep", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA,
                 "--heads", "linear,logreg", "--head-opt", "pooling=avg,flatten", "--lr", "0.01", "--epochs", "15",
                 "--repeats", "2", "--cache-dir", str(cache_dir), "--out", str(out), "--export", "pb"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = json.loads((out / "sweep.json").read_text())
    assert len(rows) == 4 and [row["rank"] for row in rows] == [1, 2, 3, 4]
    means = [row["val_accuracy_mean"] for row in rows]
    assert means == sorted(means, reverse=True) and all(len(row["val_accuracies"]) == 2 for row in rows)
    assert rows[0]["head_options"] == {"pooling": "flatten"}  # the flattened spatial features win here
    assert "[8/8]" in printed.err and f"sweep directory: {out}" in printed.out
    assert (out / "sweep.csv").read_text().count("\n") == 5 and (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    best = json.loads((out / "best/config.json").read_text())
    assert best["head"] == rows[0]["head"] and best["head_options"] == rows[0]["head_options"]
    assert best["cache_dir"] == str(cache_dir)
    assert len(FeatureCache(cache_dir).entries()) == 3  # extracted once, for every setting and the best run
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(8)])
    predictions = Backbone.load(out / "best/export/model.pb", cut="probabilities")(images).numpy()
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_sweep_grid_file(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('heads = ["logreg"]\n[head_options]\npooling = ["avg", "max"]\nC = [0.1, 1.0]\n')
    assert main(["sweep", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA, "--grid", str(grid),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sweep"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_dir"] == str(tmp_path / "sweep") and printed["best_dir"] == str(tmp_path / "sweep" / "best")
    rows = printed["rows"]
    assert sorted((r["head_options"]["pooling"], r["head_options"]["C"]) for r in rows) == [
        ("avg", 0.1), ("avg", 1.0), ("max", 0.1), ("max", 1.0)]


def test_sweep_bad_input(tmp_path, capsys):
    code = main(["sweep", "--backbone", "example:digits", "--data", DATA, "--heads", "linear,nope",
                 "--out", str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown head 'nope'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()  # fails before any work
    (tmp_path / "bad.toml").write_text("heads = [\n")
    assert main(["sweep", "--backbone", "example:digits", "--data", DATA, "--grid", str(tmp_path / "bad.toml"),
                 "--out", str(tmp_path / "sweep")]) == 2
    assert "bad.toml" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_thaw_trains_thawed_layers_from_cached_prefix_outputs(tmp_path, capsys):
    """On the digits example the penultimate cut fits the new digits badly: thaw 2 wins clearly."""
    out, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    code = main(["sweep", "--backbone", "example:digits", "--cut", "resnet_features", "--data", DATA,
                 "--heads", "linear,logreg", "--thaw", "0,2", "--lr", "0.01", "--epochs", "30",
                 "--cache-dir", str(cache_dir), "--out", str(out), "--export", "pb", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = json.loads(printed.out)["rows"]
    assert sorted((row["head"], row["thaw"]) for row in rows) == [("linear", 0), ("linear", 2), ("logreg", None)]
    assert (rows[0]["head"], rows[0]["thaw"]) == ("linear", 2)
    frozen = next(row for row in rows if row["thaw"] == 0)
    assert rows[0]["val_accuracy_mean"] > frozen["val_accuracy_mean"] + 0.1
    best = json.loads((out / "best/config.json").read_text())
    assert best["thaw"] == 2
    shapes = sorted(len(entry.feature_shapes) for entry in FeatureCache(cache_dir).entries())
    assert shapes == [1] * 9  # frozen features, and the two prefix outputs of thaw 2, an entry per tensor and split
    best_metrics = json.loads((out / "best/metrics.json").read_text())
    assert best_metrics["test"]["accuracy"] == rows[0]["test_accuracy_mean"]  # same seed, same cached inputs


def test_sweep_thaw_bad_values_fail_before_any_extraction(tmp_path, capsys):
    for value, message in (("-1", "sweep: thaw=-1 must be an integer >= 0"),
                           ("0,99", "cannot thaw 99 layer(s): there are 10 weight layers before the cut")):
        code = main(["sweep", "--backbone", "example:digits", "--cut", "resnet_features", "--data", DATA,
                     "--thaw", value, "--out", str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_sweep_thaw_options_are_axes_of_the_thawed_settings(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--backbone", "example:digits", "--cut", "resnet_features", "--data", DATA,
                 "--heads", "linear", "--thaw", "0,2", "--thaw-lr-scale", "0.1,1", "--head-epochs", "3",
                 "--lr", "0.01", "--epochs", "8", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "--export", "pb", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = json.loads(printed.out)["rows"]
    assert sorted((r["thaw"], r["thaw_lr_scale"], r["head_epochs"]) for r in rows) == [
        (0, None, None), (2, 0.1, 3), (2, 1.0, 3)]  # the frozen setting has no thaw options
    assert "thaw_lr_scale" in (out / "sweep.csv").read_text().splitlines()[0]
    best_row = rows[0]
    best = json.loads((out / "best/config.json").read_text())
    assert (best["thaw"] or 0, best["thaw_lr_scale"], best["head_epochs"]) == (
        best_row["thaw"], best_row["thaw_lr_scale"], best_row["head_epochs"])
    assert json.loads((out / "best/metrics.json").read_text())["test"]["accuracy"] == best_row["test_accuracy_mean"]


def test_sweep_over_cuts_extracts_once_and_ranks_every_cut(tmp_path, capsys):
    out, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    code = main(["sweep", "--backbone", "example:digits", "--cuts", "block2_out,block1_out", "--data", DATA,
                 "--heads", "logreg,linear", "--epochs", "5", "--lr", "0.01", "--cache-dir", str(cache_dir),
                 "--out", str(out), "--export", "none"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = json.loads((out / "sweep.json").read_text())
    assert sorted((row["cut"], row["head"]) for row in rows) == [
        ("block1_out", "linear"), ("block1_out", "logreg"), ("block2_out", "linear"), ("block2_out", "logreg")]
    assert "averaged over positions before they are cached" in printed.err
    table = printed.out[printed.out.index("rank "):].splitlines()
    assert table[0].split()[:3] == ["rank", "cut", "head"] and len(table) == 6  # header, 4 rows, the directory
    header = (out / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["rank", "cut", "head"]
    assert (out / "sweep_cuts.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "config.json").read_text())
    assert config["cuts"] == ["block2_out", "block1_out"] and config["pool"] == "avg"
    pooled = [entry for entry in FeatureCache(cache_dir).entries() if entry.manifest["ingredients"].get("pool")]
    assert sorted(entry.feature_shapes[0] for entry in pooled) == [(16,)] * 3 + [(32,)] * 3  # one pass, per cut
    best = json.loads((out / "best/config.json").read_text())
    assert best["cut"] == rows[0]["cut"] and best["head"] == rows[0]["head"]
    assert best["head_options"].get("pooling") == "avg"  # retrained on the full cut, averaged as in the sweep


@pytest.mark.slow
def test_sweep_over_candidate_cuts_in_graph_order(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('heads = ["logreg"]\ncuts = "candidates"\n')
    assert main(["sweep", "--backbone", "example:digits", "--data", DATA, "--grid", str(grid), "--pool", "max",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sweep"), "--export", "none",
                 "--finalists", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    backbone = Backbone.load("example:digits", cut="candidates")
    assert sorted(row["cut"] for row in rows) == sorted(c.spec for c in backbone.cuts) and len(rows) == 22
    from transfer.sweep.report import best_per_cut

    order = json.loads((tmp_path / "sweep/config.json").read_text())["cuts"]
    assert order[0].endswith("scale_1/add:0") and order[-1] == "Identity:0"
    assert [row["cut"] for row in best_per_cut(rows, order)["logreg"]] == order


@pytest.mark.slow
def test_candidate_cuts_ranked_by_the_ridge_probe_then_the_best_few_by_logreg(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--backbone", "example:digits", "--data", DATA, "--cuts", "candidates", "--heads", "logreg",
                 "--pool", "none", "--finalists", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "--export", "none", "--json"]) == 0
    printed = capsys.readouterr()
    rows = json.loads(printed.out)["rows"]
    with open(out / "cut_ranking.csv") as handle:
        ranking = list(csv.DictReader(handle))
    cuts = {c.spec for c in Backbone.load("example:digits", cut="candidates").cuts}
    assert {row["cut"] for row in ranking} == cuts and {row["pooling"] for row in ranking} == {"avg", "grid2"}
    finalists = [(row["cut"], row["pooling"]) for row in ranking if row["finalist"] == "True"]
    assert finalists == [(row["cut"], row["pooling"]) for row in ranking[:2]]
    assert sorted((row["cut"], row["head_options"]["pooling"]) for row in rows) == sorted(finalists)
    best = json.loads((out / "best/config.json").read_text())
    assert (best["cut"], best["head_options"]["pooling"]) == (rows[0]["cut"], rows[0]["head_options"]["pooling"])


def test_sweep_cuts_bad_input(tmp_path, capsys):
    base = ["sweep", "--backbone", "example:digits", "--data", DATA, "--out", str(tmp_path / "sweep"),
            "--cache-dir", str(tmp_path / "cache")]
    cases = [(["--cut", "block1_out", "--cuts", "block2_out"], "give one cut (--cut block1_out) or the cuts"),
             (["--cuts", "block1_out,nope"], "unknown cut 'nope'"),
             (["--cuts", "block1_out,block2_out", "--thaw", "0,1"], "sweep: head 'linear' trains on one cut, and a "
              "thaw on 2 cuts trains a head of several cuts (multilayer)"),
             (["--cuts", "block1_out,block2_out", "--pool", "sum"], "invalid choice: 'sum'")]
    for extra, message in cases:
        with pytest.raises(SystemExit) if "invalid choice" in message else contextlib.nullcontext():
            assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and (len(err.splitlines()) == 1 or "invalid choice" in message), err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_sweep_over_cuts_with_a_multilayer_head_trains_it_on_all_cuts_at_once(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--backbone", "example:digits", "--cuts", "block1_out,block2_out,resnet_features",
                 "--data", DATA, "--heads", "logreg,multilayer", "--head-opt", "strength=0.001,0.01",
                 "--epochs", "30", "--lr", "0.01", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "--export", "pb", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = json.loads(printed.out)["rows"]
    assert sorted((row["cut"], row["head"]) for row in rows) == [
        ("all", "multilayer"), ("all", "multilayer"), ("block1_out", "logreg"), ("block2_out", "logreg"),
        ("resnet_features", "logreg")]
    assert sorted(row["head_options"]["strength"] for row in rows if row["head"] == "multilayer") == [0.001, 0.01]
    assert (out / "sweep_cuts.png").read_bytes()[:4] == b"\x89PNG"
    best = json.loads((out / "best/config.json").read_text())
    if rows[0]["head"] == "multilayer":  # retrained on every cut, exporting the cuts it kept
        assert best["cut"] == "block1_out,block2_out,resnet_features" and best["kept_cuts"]
    else:
        assert best["cut"] == rows[0]["cut"]


@pytest.mark.slow
def test_sweep_thaw_with_a_multilayer_head_on_several_cuts(tmp_path, capsys):
    """Thaw 0 and 1 under a head of two cuts: the frozen cuts cached averaged (grid 1), the thawed
    prefix's outputs cached whole once, the best setting retrained and exported."""
    out, cache_dir = tmp_path / "sweep", tmp_path / "cache"
    code = main(["sweep", "--backbone", "example:digits", "--cuts", "block1_out,resnet_features", "--data", DATA,
                 "--heads", "multilayer", "--thaw", "0,1", "--epochs", "10", "--lr", "0.01", "--cache-dir",
                 str(cache_dir), "--out", str(out), "--export", "pb", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = json.loads(printed.out)["rows"]
    assert sorted((row["cut"], row["thaw"]) for row in rows) == [("all", 0), ("all", 1)]
    entries = FeatureCache(cache_dir).entries()
    pooled = sorted(e.feature_shapes[0] for e in entries if e.manifest["ingredients"].get("pool"))
    whole = sorted(e.feature_shapes[0] for e in entries if not e.manifest["ingredients"].get("pool"))
    assert pooled == [(16,)] * 3 + [(32,)] * 3  # thaw 0: both cuts averaged
    assert whole == [(4, 4, 32)] * 6 + [(8, 8, 16)] * 3  # thaw 1: block2_bn2's input and shortcut, block1_out as is
    best = json.loads((out / "best/config.json").read_text())
    assert best["cut"] == "block1_out,resnet_features" and best.get("thaw") == (rows[0]["thaw"] or None)
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(8)])
    predictions = Backbone.load(out / "best/export/model.pb", cut="probabilities")(images).numpy()
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


# two batch sizes: two joint fits of 4 trials each, journaled as each ends, so a kill lands between them
SWEEP = ["-m", "transfer.cli", "sweep", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA,
         "--heads", "linear,mlp", "--lr", "0.01", "--batch-size", "16,32", "--epochs", "4", "--repeats", "2",
         "--export", "none"]


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_table_of_an_uninterrupted_one(tmp_path):
    """A real `kill -9` after some trials have finished; the same command with another grid is
    refused in one line, and with the same grid trains only the trials the journal lacks and
    ends with the table of a sweep that was never killed (training is deterministic per seed)."""
    out, partial = tmp_path / "sweep", tmp_path / "sweep.partial"
    command = [sys.executable, *SWEEP, "--cache-dir", str(tmp_path / "cache")]
    with open(tmp_path / "killed.err", "w") as err:
        process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not finished_trials(partial):
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    done = finished_trials(partial)
    assert 1 <= done < 8 and not out.exists(), ("the kill must land mid-sweep", done)
    with open(partial / "trials.jsonl", "a") as journal:
        journal.write('{"key": "0123')  # the line a kill tears

    changed = subprocess.run([*command, "--lr", "0.01,0.1", "--out", str(out)], capture_output=True, text=True,
                             timeout=300)
    assert changed.returncode == 2 and changed.stderr.strip() == (
        f"transfer sweep: error: {str(partial)!r} holds an unfinished sweep of another grid ({done} trial(s) done): "
        "remove it to start this sweep, or choose another --out")
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    err = resumed.stderr.splitlines()
    assert f"resuming the sweep in {partial}: {done} of 8 trials taken from its journal (trials.jsonl)" in err
    assert [line.split()[0] for line in err if line.startswith("[")] == [f"[{n}/8]" for n in range(done + 1, 9)]
    assert finished_trials(out) == 8 and not partial.exists()

    clean = subprocess.run([*command, "--out", str(tmp_path / "clean")], capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    rows, expected = (json.loads((run / "sweep.json").read_text()) for run in (out, tmp_path / "clean"))
    for row in (*rows, *expected):
        row.pop("seconds_mean")  # the one column that is time, not training
    assert rows == expected
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in (tmp_path / "clean").iterdir())


@pytest.mark.slow
def test_a_cut_sweep_on_grid_cells_ranks_average_and_grid_and_retrains_the_best_exactly(tmp_path, capsys):
    """`--pool grid2`: every cut's 2x2 cells cached, the ridge ranking scores each cut averaged and
    as its grid, and the best setting retrained into best/ from those cells scores as in the sweep."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--backbone", "example:digits", "--data", DATA, "--cuts", "candidates", "--heads", "logreg",
                 "--pool", "grid2", "--cache-dir", tmp_path / "cache", "--out", out, "--export", "none"]) == 0
    err = capsys.readouterr().err
    assert "(average and 2x2 grid)" in err
    with open(out / "cut_ranking.csv", newline="") as handle:
        ranking = list(csv.DictReader(handle))
    assert {row["pooling"] for row in ranking} == {"avg", "grid2"}
    rows = json.loads((out / "sweep.json").read_text())
    best = json.loads((out / "best/metrics.json").read_text())
    assert best["validation"]["accuracy"] == pytest.approx(rows[0]["val_accuracy_mean"])
    shapes = {tuple(entry.feature_shapes[0]) for entry in FeatureCache(tmp_path / "cache").entries()}
    assert (2, 2, 16) in shapes and not any(len(shape) == 3 and shape[0] > 2 for shape in shapes)


def test_pool_grid2_refuses_a_head_that_reads_the_positions(tmp_path, capsys):
    from cli_checks import user_error

    user_error(capsys, ["sweep", "--backbone", "example:digits", "--data", DATA, "--cut", "block1_out",
                        "--heads", "conv", "--pool", "grid2", "--cache-dir", tmp_path / "cache",
                        "--out", tmp_path / "sweep"], r"--pool grid2 caches a 2x2 grid .* head 'conv'")
