"""Sweeps on synthetic features: the grid, one setting's training, ranking, repeats, the files."""
import csv
import json
import re

import numpy as np
import pytest

from transfer.errors import TransferError, TransferWarning  # before keras: sets KERAS_BACKEND

import tensorflow as tf  # noqa: E402

from transfer.sweep.journal import JOURNAL, TrialJournal  # noqa: E402
from transfer.features.feature_splits import FeatureSplits  # noqa: E402
from transfer.sweep.grid import CSV_COLUMNS, expand_grid, load_grid  # noqa: E402
from transfer.sweep.ranking import run_sweep  # noqa: E402
from transfer.sweep.report import format_table, write_sweep  # noqa: E402
from transfer.sweep.trials import train_setting  # noqa: E402

CLASSES = ["a", "b", "c"]
SIZES = {"train": 120, "validation": 60, "test": 60}
GOOD = {"lr": 0.03, "epochs": 20, "batch_size": 32, "optimizer": "adam"}
BAD = {"head": "linear", "lr": 1e-6, "epochs": 1, "batch_size": 32, "optimizer": "adam", "head_options": {}}


def make_splits(shape, sample, test=True, seed=0) -> FeatureSplits:
    """Separable classes: `sample(labels, rng)` gives their features; balanced labels per split."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, size in SIZES.items():
        labels = np.arange(size, dtype="int32") % len(CLASSES)
        data[split] = tf.data.Dataset.from_tensor_slices((sample(labels, rng).astype("float32"), labels))
    return FeatureSplits(data["train"], data["validation"], data["test"] if test else None, [shape], CLASSES)


def blobs(test=True) -> FeatureSplits:
    """Gaussian blobs in 16-D: one random centre per class, unit noise."""
    centres = np.random.default_rng(42).normal(0, 2, (len(CLASSES), 16))
    return make_splits((16,), lambda y, rng: centres[y] + rng.normal(size=(len(y), 16)), test)


def channel_means() -> FeatureSplits:
    """4-D features (4, 4, 8): class c raises the mean of channel c; no single position tells."""
    def sample(y, rng):
        x = rng.normal(size=(len(y), 4, 4, 8))
        x[np.arange(len(y)), :, :, y] += 1.5
        return x
    return make_splits((4, 4, 8), sample)


@pytest.fixture(scope="module")
def blob_splits():
    return blobs()


@pytest.fixture(scope="module")
def sweep(blob_splits):
    """One small sweep shared by the ranking and report tests: 4 settings, 2 repeats each."""
    settings = [*expand_grid(["linear", "mlp", "logreg"], **GOOD, head_options={"hidden": [[16]]}), BAD]
    return settings, run_sweep(blob_splits, settings, repeats=2, progress=False)


# --- the grid ------------------------------------------------------------------------------------


def test_expand_grid_multiplies_only_the_axes_a_head_takes():
    settings = expand_grid(["linear", "mlp"], lr=[1e-3, 1e-2], epochs=[5],
                           head_options={"hidden": [[8], [16, 8]], "pooling": ["avg", "max"]})
    linear = [s for s in settings if s["head"] == "linear"]
    mlp = [s for s in settings if s["head"] == "mlp"]
    assert len(linear) == 2 * 2 and len(mlp) == 2 * 2 * 2
    assert all(set(s["head_options"]) == {"pooling"} for s in linear)
    assert {json.dumps(s["head_options"]["hidden"]) for s in mlp} == {"[8]", "[16, 8]"}
    assert all(s["epochs"] == 5 and s["batch_size"] == 32 and s["optimizer"] == "adam" for s in settings)
    assert {s["lr"] for s in settings} == {1e-3, 1e-2}
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == len(settings)


def test_expand_grid_gives_the_probe_no_training_axes():
    settings = expand_grid(["logreg", "linear"], lr=[1e-3, 1e-2], epochs=[5, 10],
                           head_options={"C": [0.1, 1.0]})
    probe = [s for s in settings if s["head"] == "logreg"]
    assert probe == [{"head": "logreg", "lr": None, "epochs": None, "batch_size": None, "optimizer": None, "thaw": None,
                      "thaw_lr_scale": None, "thaw_weight_decay": None, "unfreeze_every": None, "head_epochs": None,
                      "head_options": {"C": c}} for c in (0.1, 1.0)]
    assert [s["head_options"] for s in settings if s["head"] == "linear"] == [{}] * 4


def test_expand_grid_drops_duplicates_and_keeps_grid_order():
    settings = expand_grid(["mlp", "linear", "mlp"], lr=[0.01, 0.01, 0.1])
    assert [(s["head"], s["lr"]) for s in settings] == [("mlp", 0.01), ("mlp", 0.1), ("linear", 0.01),
                                                        ("linear", 0.1)]


@pytest.mark.parametrize("heads,axes,message", [
    (["linaer"], {}, "unknown head 'linaer'; did you mean 'linear'"),
    (["linear"], {"head_options": {"hiden": [[8]]}}, "option 'hiden' applies to none of the swept heads (linear: "),
    (["linear"], {"epochs": [0]}, "sweep: epochs=0 (--epochs) must be an integer >= 1"),
    (["linear"], {"lr": [-1.0]}, "sweep: lr=-1.0 (--lr) must be a number > 0"),
    (["linear"], {"optimizer": ["adamm"]}, "sweep: optimizer='adamm' (--optimizer) must be one of adam,"),
    (["linear"], {"lr": []}, "sweep: lr has no choices"),
    (["linear"], {"momentum": [0.9]}, "unknown sweep axis 'momentum'; valid: lr, epochs,"),
])
def test_expand_grid_refuses_bad_grids_in_one_line(heads, axes, message):
    with pytest.raises(TransferError) as error:
        expand_grid(heads, **axes)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_grid_reads_toml(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('heads = ["linear", "mlp", "logreg"]\nlr = [0.001, 0.003]\nepochs = [30]\n'
                    '[head_options]\nhidden = [[64], [128]]\npooling = ["avg"]\n')
    grid = load_grid(path)
    assert grid == {"heads": ["linear", "mlp", "logreg"], "lr": [0.001, 0.003], "epochs": [30],
                    "head_options": {"hidden": [[64], [128]], "pooling": ["avg"]}}
    assert len(expand_grid(**grid)) == 2 + 2 * 2 + 1


@pytest.mark.parametrize("name,text,message", [
    ("grid.toml", 'heads = ["mlp"]\nlearning_rate = [0.1]\n',
     "has unknown key 'learning_rate'; valid keys: heads, cuts, lr, epochs, batch_size, optimizer, thaw, "
     "thaw_lr_scale, thaw_weight_decay, unfreeze_every, head_epochs, head_options"),
    ("grid.toml", "heads = [mlp\n", "is not valid TOML"),
    ("grid.toml", 'head_options = ["avg"]\n', "head_options must be a table"),
    ("grid.json", "{}", "must end in .toml, .yaml or .yml"),
    ("missing.toml", None, "cannot read grid file"),
])
def test_load_grid_refuses_bad_files_in_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(TransferError) as error:
        load_grid(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_load_grid_reads_yaml_or_says_to_install_pyyaml(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("heads: [linear]\nlr: [0.01]\nhead_options:\n  pooling: [avg, max]\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(TransferError, match="needs pyyaml: pip install pyyaml, or write the grid in TOML"):
            load_grid(path)
    else:
        assert load_grid(path) == {"heads": ["linear"], "lr": [0.01], "head_options": {"pooling": ["avg", "max"]}}


# --- one setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("features,head,options", [
    (blobs, "linear", {}),
    (blobs, "mlp", {"hidden": [16]}),
    (blobs, "logreg", {}),
    (channel_means, "linear", {"pooling": "avg"}),
    (channel_means, "logreg", {"pooling": "avg"}),
])
def test_train_setting_learns_separable_features(features, head, options):
    splits = features()
    setting = expand_grid([head], **GOOD, head_options={k: [v] for k, v in options.items()})[0]
    trained, metrics = train_setting(splits, setting, seed=0)
    assert metrics["val_accuracy"] > 0.9 and metrics["test_accuracy"] > 0.9
    assert metrics["seconds"] > 0
    if head == "logreg":
        assert metrics["epochs_run"] is None
        assert trained.predict_proba(np.zeros((2, *splits.feature_shapes[0]))).shape == (2, 3)
    else:
        assert 1 <= metrics["epochs_run"] <= GOOD["epochs"]
        assert trained(np.zeros((2, *splits.feature_shapes[0]), "float32")).shape == (2, 3)


def test_train_setting_adapts_the_head_on_the_training_features_at_any_scale():
    """Features of a cut with small activations (x 1e-3 + 0.05) train as well as unit-scale ones."""
    splits = channel_means()
    small = FeatureSplits(*(split.map(lambda x, y: (1e-3 * x + 0.05, y)) for split in
                            (splits.train, splits.validation, splits.test)), splits.feature_shapes, CLASSES)
    setting = expand_grid(["conv"], **GOOD, head_options={"filters": [[8]]})[0]
    head, metrics = train_setting(small, setting, seed=0)
    train = np.stack([x for x, _ in small.train.as_numpy_iterator()])
    np.testing.assert_allclose(head.standardization.mean.numpy(), train.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(head.standardization.variance.numpy(), train.var(axis=(0, 1, 2)), rtol=1e-3)
    assert metrics["val_accuracy"] > 0.9


def test_train_setting_without_a_test_split_reports_none():
    _, metrics = train_setting(blobs(test=False), BAD, seed=0)
    assert metrics["test_accuracy"] is None and metrics["epochs_run"] == 1


# --- the sweep -----------------------------------------------------------------------------------


def test_run_sweep_ranks_by_validation_accuracy(sweep):
    settings, rows = sweep
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    assert sorted(json.dumps(row["setting"], sort_keys=True) for row in rows) == sorted(
        json.dumps(s, sort_keys=True) for s in settings)
    means = [row["val_accuracy_mean"] for row in rows]
    assert means == sorted(means, reverse=True)
    assert rows[-1]["setting"] == BAD and rows[-1]["val_accuracy_mean"] < 0.7 < rows[0]["val_accuracy_mean"]
    probe = next(row for row in rows if row["head"] == "logreg")
    assert probe["lr"] is probe["epochs"] is probe["optimizer"] is None and probe["epochs_run"] == [None, None]


def test_run_sweep_repeats_give_mean_std_and_every_accuracy(sweep):
    _, rows = sweep
    for row in rows:
        assert row["repeats"] == 2 and len(row["val_accuracies"]) == 2
        assert row["val_accuracy_mean"] == pytest.approx(np.mean(row["val_accuracies"]))
        assert row["val_accuracy_std"] == pytest.approx(np.std(row["val_accuracies"]))
        assert row["test_accuracy_mean"] is not None and row["seconds_mean"] > 0
    assert rows[-1]["val_accuracy_std"] > 0  # an untrained head differs from seed to seed


def test_run_sweep_is_deterministic_and_shows_progress(blob_splits, sweep, capsys):
    rows = run_sweep(blob_splits, [BAD], repeats=2)
    assert rows[0]["val_accuracies"] == sweep[1][-1]["val_accuracies"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\[1/2\] linear seed=0: val \d\.\d{3} \(\d+\.\d s\)", lines[0]), lines[0]
    assert lines[1].startswith("[2/2] linear seed=1: val ")


def test_one_repeat_has_zero_std(blob_splits):
    (row,) = run_sweep(blob_splits, [BAD], progress=False)
    assert row["val_accuracy_std"] == 0.0 and row["test_accuracy_std"] == 0.0 and row["repeats"] == 1


def test_run_sweep_refuses_a_head_that_cannot_read_the_features_before_training(blob_splits, capsys):
    with pytest.raises(TransferError, match="head 'conv' needs 4-D"):
        run_sweep(blob_splits, [BAD, {**BAD, "head": "conv"}])
    assert capsys.readouterr().err == ""  # nothing was trained


def test_run_sweep_needs_a_validation_split():
    splits = blobs()
    splits.validation = None
    with pytest.raises(TransferError, match="no validation split"):
        run_sweep(splits, [BAD])


def _without_seconds(rows):
    """Ranked rows as a rerun must repeat them: all but the time each run took."""
    return [{key: value for key, value in row.items() if key != "seconds_mean"} for row in rows]


def test_run_sweep_takes_finished_runs_from_its_journal_and_journals_the_rest(blob_splits, tmp_path, capsys):
    """A journal cut after two of four runs, its last line torn (a kill): the rerun trains the other
    two, with fresh TensorBoard logs, and ranks exactly as an uninterrupted sweep."""
    settings = expand_grid(["linear"], lr=[0.03, 0.3], epochs=3)
    whole = TrialJournal(tmp_path / "whole", {"grid": "two lr"})
    uninterrupted = run_sweep(blob_splits, settings, repeats=2, progress=False, journal=whole)
    lines = whole.path.read_text().splitlines(keepends=True)
    assert len(lines) == 5 and [json.loads(line)["trial"] for line in lines[1:]] == [
        "001-seed0", "001-seed1", "002-seed0", "002-seed1"]
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / JOURNAL).write_text("".join(lines[:3]) + lines[3][:40])  # two runs, then a torn line
    (killed / "tb/001-seed0").mkdir(parents=True)
    (killed / "tb/001-seed0/kept").write_text("a journaled run's logs")
    (killed / "tb/002-seed0").mkdir(parents=True)
    (killed / "tb/002-seed0/half-written").write_text("a killed run's logs")
    capsys.readouterr()
    resumed = run_sweep(blob_splits, settings, repeats=2, journal=TrialJournal(killed, {"grid": "two lr"}),
                        log_dir=killed / "tb")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"resuming the sweep in {killed}: 2 of 4 trials taken from its journal (trials.jsonl)"
    assert [line.split()[0] for line in err[1:]] == ["[3/4]", "[4/4]"]  # only the other two were trained
    assert _without_seconds(resumed) == _without_seconds(uninterrupted)
    seconds = [{row["lr"]: row["seconds_mean"] for row in rows}[0.03] for rows in (resumed, uninterrupted)]
    assert seconds[0] == seconds[1]  # both runs of lr 0.03 as the journal has them
    journal = (killed / JOURNAL).read_text().splitlines()
    assert [json.loads(line)["trial"] for line in journal[1:]] == ["001-seed0", "001-seed1", "002-seed0", "002-seed1"]
    assert (killed / "tb/001-seed0/kept").exists() and not (killed / "tb/002-seed0/half-written").exists()
    assert list((killed / "tb/002-seed0").iterdir()), "the rerun run's own logs"


def test_a_journal_of_another_sweep_is_refused_unless_it_holds_no_runs(blob_splits, tmp_path):
    run_sweep(blob_splits, [BAD], progress=False, journal=TrialJournal(tmp_path, {"grid": [1], "seed": 0}))
    with pytest.raises(TransferError) as error:
        TrialJournal(tmp_path, {"grid": [2], "seed": 0})
    assert str(error.value) == (f"{str(tmp_path)!r} holds an unfinished sweep of another grid (1 trial(s) done): "
                                "remove it to start this sweep, or choose another --out")
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    (tmp_path / JOURNAL).write_text(lines[0] + "\n")  # another sweep's journal, but no run finished: start afresh
    journal = TrialJournal(tmp_path, {"grid": [2], "seed": 0})
    assert journal.trials == {} and json.loads((tmp_path / JOURNAL).read_text())["definition"]["grid"] == [2]


# --- reports -------------------------------------------------------------------------------------


def test_write_sweep_writes_csv_json_and_png(sweep, tmp_path):
    _, rows = sweep
    out = tmp_path / "run"
    write_sweep(out, rows)
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json", "sweep.png"]
    with open(out / "sweep.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == CSV_COLUMNS and len(table) == 1 + len(rows)
    mlp = next(line for line in table[1:] if line[CSV_COLUMNS.index("head")] == "mlp")
    assert mlp[CSV_COLUMNS.index("head_options")] == '{"hidden":[16]}' and mlp[CSV_COLUMNS.index("lr")] == "0.03"
    assert json.loads((out / "sweep.json").read_text()) == rows
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_table_lists_the_ranked_settings(sweep):
    _, rows = sweep
    lines = format_table(rows).splitlines()
    assert lines[0] == "every setting: batch_size=32 optimizer=adam thaw=0 hidden=[16]"
    assert lines[1].split() == ["rank", "head", "lr", "epochs", "val", "test", "seconds"]
    assert [line.split()[:2] for line in lines[2:]] == [[str(row["rank"]), row["head"]] for row in rows]
    mlp = next(line for line in lines if " mlp " in line)
    assert mlp.split()[2:4] == ["0.03", "20"] and "±" in mlp
    assert next(line for line in lines if " logreg " in line).split()[2:4] == ["-", "-"]  # no training axes
    assert lines[-1].split()[2:4] == ["1e-06", "1"]  # the bad setting: last, told apart by its axes
    single = [dict(row, repeats=1, val_accuracy_std=0.0, test_accuracy_std=0.0) for row in rows]
    assert "±" not in format_table(single)  # one run per setting: no spread to show


def test_format_table_shows_only_the_axes_that_vary():
    settings = expand_grid(["mlp"], thaw=[0, 2], head_options={"hidden": [[16]]})
    rows = [dict(rank=rank, cut=None, head="mlp", setting=setting, val_accuracy_mean=0.9, val_accuracy_std=0.0,
                 test_accuracy_mean=None, test_accuracy_std=None, seconds_mean=1.0, repeats=1)
            for rank, setting in enumerate(settings, 1)]
    lines = format_table(rows).splitlines()
    assert lines[0] == "every setting: head=mlp lr=0.001 epochs=20 batch_size=32 optimizer=adam hidden=[16]"
    assert lines[1].split()[:2] == ["rank", "thaw"] and "test" not in lines[1]  # no test split: no column
    assert [line.split()[1] for line in lines[2:]] == ["0", "2"]


def test_thaw_options_multiply_only_the_thawed_settings():
    settings = expand_grid(["linear", "logreg"], thaw=[0, 2], thaw_lr_scale=[0.1, 1.0], unfreeze_every=[2])
    shown = sorted((s["head"], s["thaw"], s["thaw_lr_scale"], s["unfreeze_every"]) for s in settings
                   if s["head"] == "linear")
    assert shown == [("linear", 0, None, None), ("linear", 2, 0.1, 2), ("linear", 2, 1.0, 2)]
    assert [s["thaw_lr_scale"] for s in settings if s["head"] == "logreg"] == [None]


@pytest.mark.parametrize("axes, message", [
    (dict(thaw_lr_scale=[0.1]), "sweep: thaw_lr_scale shapes how thawed layers train: add thaw values > 0"),
    (dict(thaw=[1], thaw_lr_scale=[0.1, -1.0]), "thaw_lr_scale"),
    (dict(thaw=[1], unfreeze_every=[0]), "unfreeze_every"),
])
def test_bad_thaw_axes(axes, message):
    with pytest.raises(TransferError, match=message) as error:
        expand_grid(["linear"], **axes)
    assert "\n" not in str(error.value)


def test_a_setting_that_diverges_alone_is_ranked_last_and_the_sweep_goes_on(blob_splits):
    """Trained one at a time (as thawed settings are), a diverging setting does not stop the
    sweep: it warns in one line and ranks by what it reached (issue 25 item 3 with issue 26)."""
    settings = expand_grid(["linear"], lr=[0.01, 1e6], optimizer=["sgd"], epochs=[5])
    with pytest.warns(TransferWarning, match=r"setting linear \(lr 1000000\.0, thaw 0\): training diverged: the "
                                             r"training loss went from .*; it scores 0 and ranks last"):
        rows = run_sweep(blob_splits, settings, progress=False, together=False)
    assert [row["lr"] for row in rows] == [0.01, 1e6] and rows[1]["val_accuracy_mean"] == 0.0 < rows[0][
        "val_accuracy_mean"]
