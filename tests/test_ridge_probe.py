"""The closed-form ridge probe and the cut ranking built on it (`transfer.sweep.cut_ranking`)."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from transfer.errors import TransferError  # before keras: sets KERAS_BACKEND

import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from transfer.features.feature_splits import FeatureSplits  # noqa: E402
from transfer.heads import LogRegProbe, pool_array  # noqa: E402
from transfer.heads.multilayer import GridPooling  # noqa: E402
from transfer.heads.pooling import pool_tensor  # noqa: E402
from transfer.heads.ridge_probe import ridge_path  # noqa: E402
from transfer.sweep.cut_ranking import finalist_settings, rank_cuts, ranks_first  # noqa: E402


def digits_splits(seed=0):
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:600], y[:600]), (x[600:1000], y[600:1000]), (x[1000:], y[1000:])


def test_ridge_accuracy_matches_scikit_learn_logistic_regression_on_a_small_problem():
    (train, validation, test) = digits_splits()
    path = ridge_path(*train, *validation)
    logreg = LogRegProbe().fit(*train)
    ridge_test = np.mean(path.predict(test[0]) == test[1])
    logreg_test = np.mean(logreg.predict(test[0]) == test[1])
    assert abs(ridge_test - logreg_test) < 0.05, (ridge_test, logreg_test)
    assert abs(path.val_accuracy - np.mean(logreg.predict(validation[0]) == validation[1])) < 0.05


def test_each_strength_scores_as_a_direct_solve_does():
    train, validation, _ = digits_splits()
    for width in (64, 900):  # fewer features than examples (covariance), more (Gram matrix)
        project = np.random.default_rng(1).normal(size=(64, width))
        x, xv = train[0] @ project, validation[0] @ project
        path = ridge_path(x, train[1], xv, validation[1])
        mean, scale = x.mean(0), x.std(0)
        targets = np.eye(10)[train[1]]
        for index, alpha in enumerate(path.alphas):
            z = (x - mean) / scale
            weights = np.linalg.solve(z.T @ z + alpha * len(z) * np.eye(width), z.T @ (targets - targets.mean(0)))
            predicted = np.argmax((xv - mean) / scale @ weights, axis=1)
            assert np.mean(predicted == validation[1]) == pytest.approx(path.val_accuracies[index])


def test_ridge_refuses_bad_features_in_one_line():
    with pytest.raises(TransferError, match=r"^ridge probe: the training labels have 1 class, it needs 2 or more$"):
        ridge_path(np.ones((4, 2)), [0, 0, 0, 0], np.ones((2, 2)), [0, 0])
    with pytest.raises(TransferError, match=r"^ridge probe: training features have 2 columns, validation 3$"):
        ridge_path(np.ones((4, 2)), [0, 1, 0, 1], np.ones((2, 3)), [0, 1])


def _splits(x, y, shape):
    n = len(y)
    parts = [slice(0, n // 2), slice(n // 2, 3 * n // 4), slice(3 * n // 4, n)]
    streams = [tf.data.Dataset.from_tensor_slices((x[p].astype("float32"), y[p].astype("int32"))) for p in parts]
    return FeatureSplits(*streams, [shape], ["a", "b", "c"])


def planted_cuts(n=480, seed=0):
    """Five cuts of 4x4x8 maps: pure noise, except `informative` (the class shifts the channel
    means) and `layout` (the class decides which quadrant is bright: its average says nothing)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    cuts = {f"noise{i}": rng.normal(size=(n, 4, 4, 8)) for i in range(3)}
    centres = rng.normal(size=(3, 8))
    cuts["informative"] = rng.normal(size=(n, 4, 4, 8)) + 0.6 * centres[y][:, None, None, :]
    layout = rng.normal(size=(n, 4, 4, 8))
    for label, (row, column) in enumerate([(0, 0), (0, 2), (2, 0)]):
        layout[y == label, row:row + 2, column:column + 2, :] += 1.0
    layout -= layout.mean(axis=(1, 2), keepdims=True)  # the same average in every class
    cuts["layout"] = layout
    return {cut: _splits(x, y, (4, 4, 8)) for cut, x in cuts.items()}


def test_the_ranking_puts_a_planted_informative_cut_first():
    features = planted_cuts()
    ranking = rank_cuts({cut: features[cut] for cut in ("noise0", "noise1", "informative", "noise2")}, ("avg",))
    assert ranking[0]["cut"] == "informative" and ranking[0]["val_accuracy"] > 0.9
    assert [row["rank"] for row in ranking] == [1, 2, 3, 4]
    assert all(row["val_accuracy"] < 0.6 for row in ranking[1:])


def test_a_cut_whose_layout_carries_the_class_ranks_by_its_2x2_grid():
    ranking = rank_cuts(planted_cuts())
    scores = {(row["cut"], row["pooling"]): row["val_accuracy"] for row in ranking}
    assert scores[("layout", "grid2")] > 0.9 > 0.6 > scores[("layout", "avg")]
    assert {(row["cut"], row["pooling"]) for row in ranking[:3]} == {
        ("layout", "grid2"), ("informative", "avg"), ("informative", "grid2")}


def test_finalists_are_the_settings_on_the_best_pairs_with_their_pooling():
    ranking = [{"cut": "b", "pooling": "grid2"}, {"cut": "a", "pooling": "avg"}, {"cut": "c", "pooling": "avg"}]
    settings = [{"cut": cut, "head": "logreg", "head_options": {"C": c}} for cut in "abc" for c in (1.0, 0.1)]
    assert finalist_settings(settings, ranking, 2) == [
        {"cut": "b", "head": "logreg", "head_options": {"C": 1.0, "pooling": "grid2"}},
        {"cut": "b", "head": "logreg", "head_options": {"C": 0.1, "pooling": "grid2"}},
        {"cut": "a", "head": "logreg", "head_options": {"C": 1.0, "pooling": "avg"}},
        {"cut": "a", "head": "logreg", "head_options": {"C": 0.1, "pooling": "avg"}}]
    assert [row["finalist"] for row in ranking] == [True, True, False]
    assert ranks_first(settings, list("abc"), 2) and not ranks_first(settings, list("abc"), 3)
    assert not ranks_first(settings, list("abc"), 0)
    assert not ranks_first([{**settings[0], "head": "linear"}], list("abc"), 2)


@pytest.mark.parametrize("shape", [(2, 6, 3), (2, 5, 4, 3), (2, 3, 3, 2, 3)])
def test_grid2_pooling_is_the_same_for_arrays_tensors_and_the_multilayer_grid(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    pooled = pool_array(x, "grid2")
    assert pooled.shape == (2, 3 * 2 ** (len(shape) - 2))
    np.testing.assert_allclose(ops.convert_to_numpy(pool_tensor(ops.convert_to_tensor(x), "grid2")), pooled, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(GridPooling(2)(x)), pooled, rtol=1e-6)
    first_bins = {3: np.s_[:, :3], 4: np.s_[:, :3, :2], 5: np.s_[:, :2, :2, :1]}[len(shape)]  # 5: [0, 3), [2, 5)
    first_cell = x[first_bins].mean(axis=tuple(range(1, len(shape) - 1)))
    np.testing.assert_allclose(pooled[:, :3], first_cell, rtol=1e-5)
