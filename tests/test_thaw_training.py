"""Learning rate and weight decay per group: the exact SGD update of a real thawed graph."""
import numpy as np
import pytest
import tensorflow as tf

import keras
from transfer import GroupedOptimizer, TransferError, thaw

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
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model, features, head


def grouped(features, scale=1.0, weight_decay=None, lr=LR):
    group = {"variables": features.thawed, "lr_scale": scale}
    if weight_decay is not None:
        group["weight_decay"] = weight_decay
    return GroupedOptimizer(keras.optimizers.SGD(lr), groups=[group])


def one_step(model, features, head, images):
    """The change of (thawed weights, head weights) after one full-batch `model.fit` step."""
    before = [w.numpy().copy() for w in features.thawed + head.weights]
    model.fit(images, LABELS, batch_size=len(images), epochs=1, shuffle=False, verbose=0)
    deltas = [w.numpy() - b for w, b in zip(features.thawed + head.weights, before)]
    return deltas[:len(features.thawed)], deltas[len(features.thawed):]


def snapshot(layer_weights):
    return [w.numpy().copy() for w in layer_weights]


# -- discriminative learning rates and weight decay ----------------------------------------------


def test_thawed_weights_step_at_lr_times_scale_and_the_head_at_lr(thawed, images16):
    model, features, head = fresh(thawed, grouped(thawed[1]))
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(LABELS, model(images16))
    grads = tape.gradient(loss, features.thawed + head.weights)
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
    initial = snapshot(features.thawed)
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
    assert restored.groups[0]["paths"] == [w.path for w in features.thawed]
    assert float(restored.group_optimizers[1].learning_rate) == pytest.approx(LR / 20)


def test_bad_groups(thawed):
    with pytest.raises(TransferError, match=r"^lr_scale=0 must be a number > 0$"):
        GroupedOptimizer("sgd", groups=[{"variables": thawed[1].thawed, "lr_scale": 0}])
    with pytest.raises(TransferError, match=r"^unknown optimizer group key\(s\) \['lr'\]; valid: "):
        GroupedOptimizer("sgd", groups=[{"variables": thawed[1].thawed, "lr": 0.1}])
