"""A sweep's settings trained together as branches of one model (`transfer.sweep.joint`,
`transfer.training.branches`): each ends where it would alone."""
import numpy as np
import pytest

from transfer.errors import TransferError  # noqa: F401  (before keras: sets KERAS_BACKEND)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from transfer import heads as registry  # noqa: E402
from transfer.sweep.grid import expand_grid  # noqa: E402
from transfer.sweep.joint import Trial, groups, head_key  # noqa: E402
from transfer.sweep.ranking import run_sweep  # noqa: E402
from transfer.training.branches import branched_model, train_branches  # noqa: E402
from tests.test_sweep import blobs  # noqa: E402


def _rows_by_setting(rows):
    return {(row["head"], row["lr"], row["batch_size"]): row for row in rows}


@pytest.mark.slow
def test_a_joint_run_equals_separate_runs_on_fixed_data(capsys):
    """Two heads x two learning rates x two seeds: every setting's accuracies and epochs as when
    each trains alone, and the same ranking."""
    splits = blobs()
    settings = expand_grid(["linear", "mlp"], lr=[0.003, 0.1], epochs=[15], head_options={"hidden": [[16]]})
    together = run_sweep(splits, settings, repeats=2, patience=3)
    lines = capsys.readouterr().err.splitlines()
    alone = run_sweep(splits, settings, repeats=2, patience=3, progress=False, together=False)
    assert [line.split()[0] for line in lines] == [f"[{i}/8]" for i in range(1, 9)]
    joint, separate = _rows_by_setting(together), _rows_by_setting(alone)
    for key, row in separate.items():
        assert joint[key]["val_accuracies"] == pytest.approx(row["val_accuracies"], abs=1 / 60)
        assert joint[key]["test_accuracy_mean"] == pytest.approx(row["test_accuracy_mean"], abs=1 / 60)
        assert joint[key]["epochs_run"] == row["epochs_run"]
    assert [row["setting"] for row in together] == [row["setting"] for row in alone]


def _model(heads):
    splits = blobs()
    model = branched_model([splits.feature_shapes], heads, [0] * len(heads))
    for head in heads:
        head.adapt(splits.train.batch(256))
    label = lambda x, y: (x, tf.stack([y] * len(heads), axis=1))  # noqa: E731
    return model, splits.training(32, 0).map(label), splits.evaluation("validation").map(label)


def _heads(seeds, logits=False):
    heads = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        heads.append(registry.kind_of("mlp").build(num_classes=3, hidden=[32], logits=logits))
    return heads


class _Weights(keras.callbacks.Callback):
    """Every head's weights at the end of every epoch."""

    def __init__(self, heads):
        super().__init__()
        self.heads, self.seen = heads, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append([head.get_weights() for head in self.heads])


def test_each_branch_stops_on_its_own_and_ends_on_its_own_best_epoch():
    heads = _heads(range(3))
    model, train, validation = _model(heads)
    weights = _Weights(heads)
    logs = train_branches(model, heads, train, validation, epochs=[30, 30, 4], lrs=[0.3, 1e-4, 0.01],
                          optimizer="adam", patience=2, callbacks=[weights])
    fast, slow, short = logs
    assert fast.stopped_early and fast.epochs_run < 30  # overfits soon: stopped by its patience
    assert slow.epochs_run == 30 and not slow.stopped_early  # still improving: ran all its epochs
    assert short.epochs_run == 4  # its own epoch count, though the fit ran on
    assert len(weights.seen) == max(log.epochs_run for log in logs)
    for k, (head, log) in enumerate(zip(heads, logs)):
        losses = log.history["val_loss"]
        assert len(losses) == log.epochs_run and log.kept_epoch == int(np.argmin(losses)) + 1
        for ended, kept in zip(head.get_weights(), weights.seen[log.kept_epoch - 1][k]):
            np.testing.assert_array_equal(ended, kept)  # its own best epoch, whatever the others did
    assert len({log.kept_epoch for log in logs}) == 3


def test_a_diverging_branch_neither_stops_nor_poisons_the_others():
    """A branch at a learning rate that blows its weights up to NaN: the others train exactly
    as they do without it."""
    def run(lrs, seeds):
        heads = _heads(seeds, logits=True)
        model, train, validation = _model(heads)
        logs = train_branches(model, heads, train, validation, epochs=[12] * len(lrs), lrs=lrs, optimizer="sgd",
                              patience=3)
        return heads, logs

    heads, logs = run([0.05, 1e30, 0.01], [0, 1, 2])
    assert np.isnan(logs[1].history["val_loss"]).any() and logs[1].epochs_run < 12
    clean_heads, clean_logs = run([0.05, 0.01], [0, 2])
    for k, clean in zip((0, 2), (0, 1)):
        assert logs[k].epochs_run == clean_logs[clean].epochs_run == 12
        assert logs[k].history["val_loss"] == pytest.approx(clean_logs[clean].history["val_loss"], rel=1e-5)
        for mixed, alone in zip(heads[k].get_weights(), clean_heads[clean].get_weights()):
            np.testing.assert_allclose(mixed, alone, rtol=1e-5, atol=1e-6)
            assert np.isfinite(mixed).all()


def test_a_grid_of_several_batch_sizes_trains_in_groups_and_ranks_together(capsys):
    splits = blobs()
    settings = expand_grid(["linear", "mlp", "logreg"], lr=[0.03], epochs=[5], batch_size=[16, 32],
                           head_options={"hidden": [[16]]})
    trials = [Trial(f"{n:03d}", setting, 0) for n, setting in enumerate(settings, start=1)]
    keras_heads = {head_key(s) for s in settings if s["head"] != "logreg"}
    grouped = groups(trials, splits, keras_heads)
    assert sorted([[t.setting["head"], t.setting["batch_size"]] for t in group] for group in grouped) == sorted([
        [["linear", 16], ["mlp", 16]], [["linear", 32], ["mlp", 32]], [["logreg", None]]])
    rows = run_sweep(splits, settings)
    assert len(capsys.readouterr().err.splitlines()) == len(rows) == 5
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    means = [row["val_accuracy_mean"] for row in rows]
    assert means == sorted(means, reverse=True)
    assert {(row["head"], row["batch_size"]) for row in rows} == {
        ("linear", 16), ("linear", 32), ("mlp", 16), ("mlp", 32), ("logreg", None)}


def test_a_head_with_a_weight_penalty_or_a_thaw_trains_alone():
    """Per-branch early stopping sees a branch's output loss only: a head whose model adds a
    penalty of its weights (multilayer) trains on its own."""
    from transfer.sweep.joint import joins
    from transfer.sweep.trials import build_head

    splits = blobs()
    (multilayer,) = expand_grid(["multilayer"], head_options={"strength": [0.01]})
    (linear,) = expand_grid(["linear"])
    assert not joins(multilayer, build_head(splits, multilayer)[0])
    assert joins(linear, build_head(splits, linear)[0])
    assert not joins({**linear, "thaw": 1}, build_head(splits, linear)[0])


def test_every_setting_of_a_joint_fit_has_its_own_tensorboard_log(tmp_path):
    from tests.test_tensorboard import events, scalars

    settings = expand_grid(["linear"], lr=[0.01, 0.1], epochs=[4])
    rows = run_sweep(blobs(), settings, progress=False, log_dir=tmp_path)
    for number, row in enumerate(sorted(rows, key=lambda row: row["lr"]), start=1):
        train, validation = (events(tmp_path / f"{number:03d}" / role) for role in ("train", "validation"))
        assert len(scalars(train, "epoch_loss")) == len(scalars(validation, "epoch_accuracy")) == row["epochs_run"][0]
        assert scalars(events(tmp_path / f"{number:03d}"), "val_accuracy") == pytest.approx([row["val_accuracy_mean"]])
