"""How thawed layers train: learning-rate scale, weight decay, gradual unfreezing, two stages.

Each test trains a real thawed graph (the tiny CNN, or the shipped digits network) with Keras
`model.fit` and checks the exact update or which weights moved in which epoch.
"""
import csv
import json
import re

import numpy as np
import pytest
import tensorflow as tf

import keras
import transfer
from transfer import GradualUnfreezing, GroupedOptimizer, TransferError, TwoStageSchedule, thaw
from transfer.cli.main import main

LR = 0.1
LABELS = np.arange(6) % 2


@pytest.fixture(scope="module")
def thawed(tiny):
    """The tiny CNN cut at `gap`, its last 2 layers (conv2: index 1, dw: index 2) thawed, a Dense head."""
    keras.utils.set_random_seed(0)
    features = thaw(tiny.path, last=2, cut="gap")
    inputs = keras.Input((16, 16, 3))
    head = keras.layers.Dense(2, activation="softmax", name="head")
    model = keras.Model(inputs, head(features(inputs)))
    return model, features, head, model.get_weights()


def fresh(thawed, optimizer):
    model, features, head, initial = thawed
    model.set_weights(initial)
    features.set_trainable_layers(len(features.plan.layers))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model, features, head


def grouped(features, scale=1.0, weight_decay=None, lr=LR):
    group = {"variables": features.thawed_weights, "lr_scale": scale}
    if weight_decay is not None:
        group["weight_decay"] = weight_decay
    return GroupedOptimizer(keras.optimizers.SGD(lr), groups=[group])


def one_step(model, features, head, images):
    """The change of (thawed weights, head weights) after one full-batch `model.fit` step."""
    before = [w.numpy().copy() for w in features.thawed_weights + head.weights]
    model.fit(images, LABELS, batch_size=len(images), epochs=1, shuffle=False, verbose=0)
    deltas = [w.numpy() - b for w, b in zip(features.thawed_weights + head.weights, before)]
    return deltas[:len(features.thawed_weights)], deltas[len(features.thawed_weights):]


def snapshot(layer_weights):
    return [w.numpy().copy() for w in layer_weights]


def moved(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


class EpochWeights(keras.callbacks.Callback):
    """A user's own callback: the weights after every epoch, and how often training began."""

    def __init__(self, weights):
        super().__init__()
        self.weights, self.epochs, self.begins = weights, [], 0

    def on_train_begin(self, logs=None):
        self.begins += 1
        self.epochs.append(snapshot(self.weights))  # before the first epoch

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(snapshot(self.weights))


# -- discriminative learning rates and weight decay ----------------------------------------------


def test_thawed_weights_step_at_lr_times_scale_and_the_head_at_lr(thawed, images16):
    model, features, head = fresh(thawed, grouped(thawed[1]))
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(LABELS, model(images16))
    grads = tape.gradient(loss, features.thawed_weights + head.weights)
    expected = [-LR * g.numpy() for g in grads]
    thawed_at_1, head_at_1 = one_step(model, features, head, images16)
    for delta, want in zip(thawed_at_1 + head_at_1, expected):
        np.testing.assert_allclose(delta, want, rtol=1e-3, atol=1e-7)

    optimizer = grouped(features, scale=0.1)
    model, features, head = fresh(thawed, optimizer)
    thawed_at_01, head_at_01 = one_step(model, features, head, images16)
    for delta, at_1 in zip(thawed_at_01, thawed_at_1):
        assert np.abs(at_1).max() > 0
        np.testing.assert_allclose(delta, 0.1 * at_1, rtol=1e-3, atol=1e-8)
    for delta, at_1 in zip(head_at_01, head_at_1):
        np.testing.assert_allclose(delta, at_1, rtol=1e-5, atol=1e-8)
    assert int(optimizer.iterations) == 1 and [int(o.iterations) for o in optimizer.group_optimizers] == [1, 1]


def test_thaw_weight_decay_shrinks_only_the_thawed_weights(thawed, images16):
    """Decoupled decay: one SGD step with decay differs from one without by -lr*scale*decay*w
    on the thawed weights, and not at all on the head."""
    plain = one_step(*fresh(thawed, grouped(thawed[1], scale=0.5)), images16)
    model, features, head = fresh(thawed, grouped(thawed[1], scale=0.5, weight_decay=0.2))
    initial = snapshot(features.thawed_weights)
    decayed = one_step(model, features, head, images16)
    for with_decay, without, w in zip(decayed[0], plain[0], initial):
        np.testing.assert_allclose(with_decay - without, -LR * 0.5 * 0.2 * w, rtol=1e-3, atol=1e-7)
    for with_decay, without in zip(decayed[1], plain[1]):
        np.testing.assert_allclose(with_decay, without, rtol=1e-6, atol=1e-9)


def test_learning_rate_callbacks_move_every_group_and_the_optimizer_saves(thawed, images16, tmp_path):
    optimizer = grouped(thawed[1], scale=0.1)
    model, features, _ = fresh(thawed, optimizer)
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr / 2 if epoch else lr)
    model.fit(images16, LABELS, batch_size=2, epochs=2, callbacks=[halve], verbose=0)
    assert int(optimizer.iterations) == 6  # 3 batches x 2 epochs, one count per step
    assert float(optimizer.learning_rate) == pytest.approx(LR / 2)
    assert [float(o.learning_rate) for o in optimizer.group_optimizers] == pytest.approx([LR / 2, LR / 20])
    model.save(tmp_path / "grouped.keras")
    restored = keras.models.load_model(tmp_path / "grouped.keras").optimizer
    assert isinstance(restored, GroupedOptimizer) and int(restored.iterations) == 6
    assert restored.groups[0]["paths"] == [w.path for w in features.thawed_weights]
    assert float(restored.group_optimizers[1].learning_rate) == pytest.approx(LR / 20)


def test_bad_groups(thawed):
    with pytest.raises(TransferError, match=r"^lr_scale=0 must be a number > 0$"):
        GroupedOptimizer("sgd", groups=[{"variables": thawed[1].thawed_weights, "lr_scale": 0}])
    with pytest.raises(TransferError, match=r"^unknown optimizer group key\(s\) \['lr'\]; valid: "):
        GroupedOptimizer("sgd", groups=[{"variables": thawed[1].thawed_weights, "lr": 0.1}])


# -- gradual unfreezing and the two-stage schedule ----------------------------------------------


def test_set_trainable_layers_counts_from_the_cut(tiny):
    features = thaw(tiny.path, last=3, cut="gap")  # conv2, dw, bn1
    assert features.weight_layer_indices == [1, 1, 2, 2, 3, 3]
    features.set_trainable_layers(1)
    assert {tuple(w.shape) for w in features.trainable_weights} == {(3, 3, 4, 8), (8,)}
    assert features.trainable_layer_count == 1
    features.set_trainable_layers(0)
    assert features.trainable_weights == [] and features.trainable_layer_count == 0
    with pytest.raises(TransferError, match=r"cannot train 4 thawed layer\(s\): valid is 0 to 3"):
        features.set_trainable_layers(4)


def test_bad_callback_arguments(tiny):
    features = thaw(tiny.path, last=2, cut="gap")
    with pytest.raises(TransferError, match=r"^every=0 must be an integer >= 1$"):
        GradualUnfreezing(features, every=0)
    with pytest.raises(TransferError, match=r"^start=3 must be an integer >= 0 and <= 2$"):
        GradualUnfreezing(features, start=3)
    with pytest.raises(TransferError, match=r"^head_epochs=-1 must be an integer >= 0$"):
        TwoStageSchedule(features, head_epochs=-1, thaw_epochs=1)


def test_gradual_unfreezing_adds_one_layer_every_k_epochs(thawed, images16):
    model, features, _ = fresh(thawed, "adam")
    layer1, layer2 = features.thawed_weights[:2], features.thawed_weights[2:]  # conv2 (nearest the cut), dw
    recorder = EpochWeights(features.thawed_weights)
    history = model.fit(images16, LABELS, batch_size=3, epochs=3, verbose=0,
                        callbacks=[GradualUnfreezing(features, every=2, start=1), recorder])
    w = recorder.epochs  # before training, after epoch 0, 1, 2
    assert moved(w[0][:2], w[1][:2]) and not moved(w[0][2:], w[2][2:])  # epochs 0 and 1: layer 1 only
    assert moved(w[2][2:], w[3][2:])  # epoch 2 (after k=2 epochs): layer 2 too
    assert len(history.history["loss"]) == 3 and recorder.begins == 1
    assert features.trainable_layer_count == 2 and len(layer1 + layer2) == 4


def test_gradual_unfreezing_from_zero_trains_the_head_first(thawed, images16):
    model, features, head = fresh(thawed, grouped(thawed[1]))
    recorder, head_weights = EpochWeights(features.thawed_weights), EpochWeights(head.weights)
    model.fit(images16, LABELS, batch_size=3, epochs=2, verbose=0,
              callbacks=[GradualUnfreezing(features, every=1, start=0), recorder, head_weights])
    w = recorder.epochs
    assert not moved(w[0], w[1]) and moved(head_weights.epochs[0], head_weights.epochs[1])
    assert moved(w[1][:2], w[2][:2]) and not moved(w[1][2:], w[2][2:])


def test_an_optimizer_built_without_the_thawed_weights_is_a_clear_error(thawed, images16):
    model, features, _ = fresh(thawed, "sgd")
    features.set_trainable_layers(0)
    model.fit(images16, LABELS, epochs=1, verbose=0)  # builds the optimizer with the head's weights only
    with pytest.raises(TransferError, match="optimizer was built without some thawed weights"):
        model.fit(images16, LABELS, epochs=1, verbose=0, callbacks=[GradualUnfreezing(features, every=1)])


def test_two_stage_schedule_trains_the_head_then_the_thawed_layers(thawed, images16):
    model, features, head = fresh(thawed, grouped(thawed[1]))
    schedule = TwoStageSchedule(features, head_epochs=2, thaw_epochs=1)
    thawed_weights, head_weights = EpochWeights(features.thawed_weights), EpochWeights(head.weights)
    history = model.fit(images16, LABELS, batch_size=3, epochs=schedule.epochs, verbose=0,
                        callbacks=[schedule, thawed_weights, head_weights])
    w, h = thawed_weights.epochs, head_weights.epochs
    assert not moved(w[0], w[2]) and moved(h[0], h[1]) and moved(h[1], h[2])  # stage 1: the head alone
    assert moved(w[2], w[3]) and moved(h[2], h[3])  # stage 2: both
    assert history.history["stage"] == [1, 1, 2] and thawed_weights.begins == 1


def test_each_stage_stops_early_by_itself(thawed, images16):
    """With nothing learnt (lr 0) val_loss never improves: patience 1 ends each stage after 2 epochs."""
    model, features, _ = fresh(thawed, grouped(thawed[1], lr=0.0))
    schedule = TwoStageSchedule(features, head_epochs=5, thaw_epochs=5, patience=1)
    history = model.fit(images16, LABELS, validation_data=(images16, LABELS), epochs=schedule.epochs,
                        callbacks=[schedule], verbose=0)
    assert history.history["stage"] == [1, 1, 2, 2]


def test_fit_records_the_options_and_writes_the_stages(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--backbone", "example:digits", "--cut", "resnet_features", "--data",
                 "digits:5-9?per_class=4", "--thaw", "2", "--head-epochs", "1", "--thaw-epochs", "2",
                 "--thaw-lr-scale", "0.1", "--thaw-weight-decay", "1e-4", "--unfreeze-every", "1",
                 "--out", str(out), "--export", "none", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert "test" in metrics and metrics["run_dir"] == str(out)  # --json says where the run went
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("thaw_lr_scale", "thaw_weight_decay", "unfreeze_every", "head_epochs",
                                   "thaw_epochs")} == {"thaw_lr_scale": 0.1, "thaw_weight_decay": 1e-4,
                                                       "unfreeze_every": 1, "head_epochs": 1, "thaw_epochs": 2}
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [row["stage"] for row in rows] == ["1", "2", "2"]
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_unfreezes_gradually_next_to_the_users_callbacks():
    class Seen(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.features = self.model.get_layer("features")
            self.optimizer, self.counts = self.model.optimizer, []

        def on_epoch_end(self, epoch, logs=None):
            self.counts.append(self.features.trainable_layer_count)

    seen = Seen()
    result = transfer.fit("example:digits", "digits:5-9?per_class=4", cut="resnet_features", thaw=3, unfreeze_every=1,
                          epochs=3, patience=None, callbacks=[seen], export=(), verbose=0)
    assert seen.counts == [1, 2, 3] and len(result.history["loss"]) == 3 and "stage" not in result.history
    assert isinstance(seen.optimizer, GroupedOptimizer) and len(seen.optimizer.group_optimizers) == 4


# -- bad input: one line, exit 2 -------------------------------------------------------------------

FIT = ["fit", "--backbone", "example:digits", "--data", "digits:5-9", "--epochs", "1", "--out", "unused-run"]


@pytest.mark.parametrize("flags, message", [
    (["--thaw", "1", "--thaw-lr-scale", "0"], r"thaw_lr_scale=0\.0 \(--thaw-lr-scale\) must be a number > 0$"),
    (["--thaw", "1", "--thaw-lr-scale", "nan"], r"thaw_lr_scale=nan \(--thaw-lr-scale\) must be a number > 0$"),
    (["--thaw", "1", "--thaw-weight-decay=-1e-4"], r"thaw_weight_decay=-0\.0001 .* must be a number >= 0$"),
    (["--thaw", "1", "--unfreeze-every", "0"], r"unfreeze_every=0 \(--unfreeze-every\) must be an integer >= 1$"),
    (["--thaw", "1", "--head-epochs", "-1"], r"head_epochs=-1 \(--head-epochs\) must be an integer >= 0$"),
    (["--thaw-from", "x", "--thaw-epochs", "-2"], r"thaw_epochs=-2 \(--thaw-epochs\) must be an integer >= 0$"),
    (["--head-epochs", "3"], r"head_epochs=3 \(--head-epochs\) shapes how thawed layers train: add --thaw N or "),
    (["--thaw-lr-scale", "0.1"], r"thaw_lr_scale=0\.1 \(--thaw-lr-scale\) shapes how thawed layers train"),
])
def test_bad_thaw_training_options(capsys, flags, message):
    code = main(FIT + flags)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err.strip()), err


def test_bad_option_from_python_fails_before_any_slow_work():
    with pytest.raises(TransferError, match=r"^thaw_weight_decay=-1 \(--thaw-weight-decay\) must be a number >= 0$"):
        transfer.fit("example:digits", "digits:5-9", thaw=1, thaw_weight_decay=-1)
