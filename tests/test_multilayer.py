"""The `multilayer` head: several cuts pooled, standardized, concatenated, a sparse linear classifier."""
import inspect

import numpy as np
import pytest

from transfer.errors import TransferError  # before keras: sets KERAS_BACKEND

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from transfer.heads import MultiLayerHead, available, choose_multilayer, get  # noqa: E402
from transfer.heads.multilayer import GridPooling  # noqa: E402
from transfer.layers.model import head_model, model_parts  # noqa: E402
from transfer.features.feature_splits import FeatureSplits  # noqa: E402
from transfer.sweep.grid import expand_grid
from transfer.sweep.trials import train_setting  # noqa: E402

NUM_CLASSES = 3
SHAPES = [(4, 4, 6), (10,), (5, 7)]  # a map, vectors, a sequence: the informative one is input 1
CUTS = "block1_out,block2_out,resnet_features"  # of the digits example


def three_cuts(n=600, seed=0):
    """Three inputs of different ranks and scales; only input 1 (small: ~0.05 +- 0.01) tells the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % NUM_CLASSES
    centres = 1.5 * rng.normal(size=(NUM_CLASSES, 10))
    x0 = rng.normal(size=(n, *SHAPES[0]))
    x1 = 0.01 * (centres[y] + rng.normal(size=(n, 10))) + 0.05
    x2 = 100 * rng.normal(size=(n, *SHAPES[2]))
    return [x.astype("float32") for x in (x0, x1, x2)], y


def split(xs, y, part):
    return [x[part] for x in xs], y[part]


def trained(penalty, strength=1e-2, epochs=30, grid=2):
    keras.utils.set_random_seed(0)
    xs, y = three_cuts()
    train, validation = split(xs, y, slice(0, 400)), split(xs, y, slice(400, None))
    head = get("multilayer", num_classes=NUM_CLASSES, grid=grid, penalty=penalty, strength=strength)
    model = head_model(SHAPES, head)
    head.adapt(train[0])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*train, epochs=epochs, batch_size=64, verbose=0)
    return head, model, model.evaluate(*validation, verbose=0)[1]


@pytest.mark.parametrize("penalty", ["group_lasso", "l1"])
def test_learns_from_the_one_informative_cut_and_keeps_only_it(penalty):
    head, _, accuracy = trained(penalty)
    assert accuracy > 0.95
    assert head.kept == (1,)
    norms = head.group_norms()
    assert norms[1] > 20 * max(norms[0], norms[2])
    kept = head.kept_features()
    assert [len(k) for k in kept[::2]] == [0, 0] and len(kept[1]) >= 5


def test_a_subset_on_the_kept_inputs_predicts_as_the_whole_head_where_the_mask_dropped_the_rest(tmp_path):
    head, model, _ = trained("group_lasso", epochs=5)
    head.set_mask([[], np.arange(10), []])  # as a refit on the kept features leaves it
    xs, _ = three_cuts(n=30, seed=2)
    small = head.subset()  # the kept inputs: (1,)
    assert small.sizes == [10] and small.input_shapes == [(None, 10)] and small.kept == (0,)
    np.testing.assert_allclose(np.asarray(small([xs[1]])), model.predict(xs, verbose=0), rtol=1e-5, atol=1e-6)
    two = head.subset([2, 1])
    assert two.sizes == [14, 10]
    np.testing.assert_allclose(np.asarray(two([xs[2], xs[1]])), model.predict(xs, verbose=0), rtol=1e-5, atol=1e-6)
    keras.Model(inputs := [keras.Input((10,))], small(inputs)).save(tmp_path / "small.keras")  # it saves like any head
    with pytest.raises(TransferError, match=r"^head 'multilayer': subset takes input numbers in 0\.\.2, got \[3\]$"):
        head.subset([3])


def test_pools_each_input_to_a_grid_and_says_how_many_features_each_gives():
    head, _, _ = trained("group_lasso", epochs=1)
    assert head.sizes == [2 * 2 * 6, 10, 2 * 7]  # 2x2 cells of the map, 2 segments of the sequence
    assert [len(norms) for norms in head.feature_norms()] == head.sizes


def test_grid_pooling_averages_cells_like_adaptive_average_pooling():
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype("float32")
    pooled = np.asarray(GridPooling(2)(x))
    rows, cols = [(0, 3), (2, 5)], [(0, 2), (2, 4)]  # 5 rows: overlapping bins, as torch's adaptive pooling
    expected = np.concatenate([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for r0, r1 in rows for c0, c1 in cols], axis=-1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(GridPooling(1)(x)), x.mean(axis=(1, 2)), rtol=1e-6)
    sequence = x.reshape(2, 20, 3)
    np.testing.assert_allclose(np.asarray(GridPooling(4)(sequence)),
                               sequence.reshape(2, 4, 5, 3).mean(axis=2).reshape(2, 12), rtol=1e-6)
    assert GridPooling(3).compute_output_shape((None, 5, 4, 3)) == (None, 27)
    assert GridPooling(3).compute_output_shape((None, 8)) == (None, 8)


def test_get_config_holds_exactly_the_constructor_arguments_and_round_trips():
    head = get("multilayer", num_classes=4, grid=2, penalty="l1", strength=0.5, tolerance=0.2, logits=True,
               standardize=False)
    config = head.get_config()
    assert set(config) == (set(inspect.signature(MultiLayerHead).parameters) - {"kwargs"}) | {
        "name", "trainable", "dtype"}
    assert (config["grid"], config["penalty"], config["strength"], config["tolerance"]) == (2, "l1", 0.5, 0.2)
    assert MultiLayerHead.from_config(config).get_config() == config
    assert "multilayer" in available()


def test_a_model_with_several_inputs_round_trips_through_a_safe_mode_keras_file(tmp_path):
    head, model, _ = trained("group_lasso", epochs=3)
    head.set_mask([np.arange(5), np.arange(10), np.arange(14)])  # the mask is saved too
    xs, _ = three_cuts(n=20, seed=1)
    expected = model.predict(xs, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    restored = loaded.layers[-1]
    assert type(restored) is MultiLayerHead and restored.get_config() == head.get_config()
    assert restored.adapted and restored.sizes == head.sizes
    np.testing.assert_allclose(loaded.predict(xs, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert restored.kept == head.kept
    np.testing.assert_allclose(restored.group_norms(), head.group_norms(), rtol=1e-6)


def test_the_regularization_loss_is_the_group_lasso_of_the_kernel():
    head = get("multilayer", num_classes=2, strength=0.1)
    head([np.zeros((1, 3), "float32"), np.zeros((1, 2, 2, 4), "float32")])
    head.classifier.kernel.assign(np.random.default_rng(0).normal(size=(7, 2)))  # it starts at zeros
    kernel = head.classifier.kernel.numpy()
    expected = 0.1 * (np.sqrt(3) * np.linalg.norm(kernel[:3]) + np.sqrt(4) * np.linalg.norm(kernel[3:]))
    np.testing.assert_allclose(float(sum(head.losses)), expected, rtol=1e-5)
    l1 = get("multilayer", num_classes=2, penalty="l1", strength=0.1)
    l1([np.zeros((1, 3), "float32")])
    l1.classifier.kernel.assign(np.random.default_rng(1).normal(size=(3, 2)))
    np.testing.assert_allclose(float(sum(l1.losses)), 0.1 * np.abs(l1.classifier.kernel.numpy()).sum(), rtol=1e-5)


def test_adapt_standardizes_each_pooled_input_and_takes_datasets_of_pairs():
    xs, y = three_cuts(n=90)
    from_arrays = get("multilayer", num_classes=NUM_CLASSES).adapt(xs)
    pairs = tf.data.Dataset.from_tensor_slices((tuple(xs), y)).batch(16)
    from_pairs = get("multilayer", num_classes=NUM_CLASSES).adapt(pairs)
    for head in (from_arrays, from_pairs):
        assert head.adapted
        for standardization, x in zip(head.standardizations, xs):
            pooled = x.mean(axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x
            np.testing.assert_allclose(standardization.mean.numpy(), pooled.mean(axis=0), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(standardization.variance.numpy(), pooled.var(axis=0), rtol=1e-3)
    one = get("multilayer", num_classes=NUM_CLASSES)
    one(xs[1])  # a single cut: a list of one
    one.adapt(tf.data.Dataset.from_tensor_slices((xs[1], y)).batch(16))
    np.testing.assert_allclose(one.standardizations[0].mean.numpy(), xs[1].mean(axis=0), rtol=1e-4)


def test_a_sweep_trains_it_on_features_of_several_cuts():
    """What fit and sweep do with any Keras head (adapt, then model.fit) works with several inputs."""
    xs, y = three_cuts(n=300)
    streams = [tf.data.Dataset.from_tensor_slices((tuple(x[part] for x in xs), y[part]))
               for part in (slice(0, 180), slice(180, 240), slice(240, None))]
    features = FeatureSplits(*streams, SHAPES, ["a", "b", "c"])
    setting = expand_grid(["multilayer"], lr=0.01, epochs=20, batch_size=32, optimizer="adam",
                          head_options={"strength": [3e-2]})[0]
    head, metrics = train_setting(features, setting, seed=0)
    assert head.adapted and metrics["val_accuracy"] > 0.9 and head.kept == (1,)


def test_a_refit_trains_the_kept_fraction_again_without_penalty():
    """refit=0.3 (Head2Toe, as a sweep and fit run it): after the penalized fit, the 30 % of the
    23 pooled features with the largest weights (all of input 1's) are trained again from zero
    without penalty; the others stay exactly 0."""
    xs, y = three_cuts(n=300)
    streams = [tf.data.Dataset.from_tensor_slices((tuple(x[part] for x in xs), y[part]))
               for part in (slice(0, 180), slice(180, 240), slice(240, None))]
    features = FeatureSplits(*streams, SHAPES, ["a", "b", "c"])
    setting = expand_grid(["multilayer"], lr=0.01, epochs=20, batch_size=32, optimizer="adam",
                          head_options={"strength": [3e-2], "refit": [0.3]})[0]
    head, metrics = train_setting(features, setting, seed=0)
    mask = keras.ops.convert_to_numpy(head.mask)
    assert mask.sum() == 7 and mask[6:16].sum() == 7  # input 1's rows: after input 0's 6 channels
    assert not keras.ops.convert_to_numpy(head.classifier.kernel)[mask == 0].any()
    assert head.classifier.kernel.regularizer is None and head.kept == (1,) and metrics["val_accuracy"] > 0.9
    assert [len(kept) for kept in head.kept_features()] == [0, 7, 0]  # what the mask let through, no threshold
    plain = dict(setting, head_options={"strength": 3e-2})
    assert metrics["epochs_run"] > train_setting(features, plain, seed=0)[1]["epochs_run"]  # both fits counted


@pytest.mark.slow
def test_choose_multilayer_picks_a_strength_and_a_keep_fraction_on_validation():
    xs, y = three_cuts(n=300)
    train = split(xs, y, slice(0, 200))
    validation = tf.data.Dataset.from_tensor_slices((tuple(x[200:] for x in xs), y[200:]))  # a dataset works too
    choice = choose_multilayer(train, validation, NUM_CLASSES, strengths=(1e-3, 3e-2), keep_fractions=(None, 0.3),
                               epochs=15)
    assert len(choice.tried) == 4 and {t["keep_fraction"] for t in choice.tried} == {None, 0.3}
    best = max(t["val_accuracy"] for t in choice.tried)
    assert choice.val_accuracy == best > 0.9
    assert choice.head.kept == (1,) and choice.head.adapted
    refit = [t for t in choice.tried if t["keep_fraction"] == 0.3]
    assert all(t["kept"] == [1] for t in refit)  # the top 30 % of the 23 features all come from input 1


@pytest.mark.parametrize("options,pattern", [
    ({"grid": 0}, r"head 'multilayer': grid=0 must be an integer >= 1"),
    ({"penalty": "ridge"}, r"head 'multilayer': penalty='ridge' must be one of group_lasso, l1, none"),
    ({"strength": -1}, r"head 'multilayer': strength=-1 must be a number >= 0"),
    ({"tolerance": 2}, r"head 'multilayer': tolerance=2 must be a number >= 0 and <= 1"),
    ({"standardize": "yes"}, r"head 'multilayer': standardize='yes' must be true or false"),
    ({"refit": 2}, r"head 'multilayer': refit=2 must be a number >= 0 and <= 1"),
])
def test_bad_options_are_one_line_errors(options, pattern):
    with pytest.raises(TransferError, match=f"^{pattern}$"):
        get("multilayer", num_classes=3, **options)


def test_inputs_it_cannot_read_are_one_line_errors():
    with pytest.raises(TransferError, match=r"^head 'multilayer' needs a list of 2-D, 3-D or 4-D feature tensors "
                                            r"\(one per cut\), got shape \(None, 2, 2, 2, 3\) for input 1$"):
        get("multilayer", num_classes=3)([keras.Input((4,)), keras.Input((2, 2, 2, 3))])
    with pytest.raises(TransferError, match=r"^head 'multilayer': grid=2 needs a fixed spatial size, input 0 has "
                                            r"shape \(None, None, None, 8\); use grid=1 \(global average\)$"):
        get("multilayer", num_classes=3, grid=2)([keras.Input((None, None, 8))])
    head = get("multilayer", num_classes=3)
    head([np.zeros((1, 4), "float32"), np.zeros((1, 5), "float32")])
    with pytest.raises(TransferError, match=r"head .multilayer. was built for 2 inputs, got 1"):  # Keras adds to it
        head([np.zeros((1, 4), "float32")])


# --- fit: several cuts, the selection kept in the exports ------------------------------------------


@pytest.mark.slow
def test_fit_on_several_cuts_exports_only_the_cuts_it_kept(tmp_path):
    """A strong group-lasso penalty drops a cut; the model, its .keras file and the frozen .pb then
    compute only the kept cuts, and give the trained (masked) head's probabilities."""
    import transfer
    from transfer import Backbone

    cuts = CUTS
    result = transfer.fit("example:digits", "digits:5-9?per_class=10", cut=cuts, head="multilayer",
                          head_options={"grid": 2, "strength": 0.1, "concatenation": False}, epochs=40, lr=0.01,
                          cache_dir=tmp_path / "cache",
                          out=tmp_path / "run", export=("pb",), verbose=0)
    config = __import__("json").loads((tmp_path / "run/config.json").read_text())
    kept = config["kept_cuts"]
    assert config["cut"] == cuts and 1 <= len(kept) < 3 and set(kept) < set(cuts.split(","))
    assert result.metrics["test"]["accuracy"] > 0.8
    features = result.model.get_layer("features")
    assert [c.spec for c in features.backbone.cuts] == kept
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(16)])
    expected = result.model.predict(images, verbose=0)
    frozen = Backbone.load(tmp_path / "run/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), expected, rtol=1e-4, atol=1e-5)
    names = {node.name for node in tf.compat.v1.GraphDef.FromString(
        (tmp_path / "run/export/model.pb").read_bytes()).node}
    assert {f"features_cut{n}" for n in range(len(kept))} <= names and f"features_cut{len(kept)}" not in names
    reloaded = keras.models.load_model(tmp_path / "run/model.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def digit_images(count=16):
    import transfer

    return np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(count)])


def constants(thawed):
    return [tf.make_ndarray(t.op.get_attr("value")) for t in thawed.plan.weights]


@pytest.mark.slow
def test_fit_with_thaw_on_several_cuts_trains_the_thawed_layers_and_exports_them(tmp_path):
    """Thaw 2 (block2's last conv and batch norm) under a head of three cuts: the thawed weights
    train, block1_out (before them) stays the pretrained features, and the SavedModel, the frozen
    .pb (the trained values frozen back in) and the safe-mode .keras file predict as the model."""
    import transfer
    from transfer import Backbone

    result = transfer.fit("example:digits", "digits:5-9?per_class=10", cut=CUTS, head="multilayer",
                          head_options={"penalty": "none"}, thaw=2, epochs=10, lr=0.01, out=tmp_path / "run",
                          export=("savedmodel", "pb"), verbose=0)
    config = __import__("json").loads((tmp_path / "run/config.json").read_text())
    assert config["thaw"] == 2 and config["kept_cuts"] == CUTS.split(",")
    features = result.model.get_layer("features")
    assert len(features.plan.layers) == 2 and len(features.thawed_weights) == 4
    assert all(not np.allclose(w.numpy(), c) for w, c in zip(features.thawed_weights, constants(features)))
    images = digit_images()
    preprocessed = model_parts(result.model)[0](images)
    trained, pretrained = features(preprocessed), Backbone.load("example:digits", cut=CUTS)(preprocessed)
    np.testing.assert_array_equal(trained["block1_out"], pretrained["block1_out"])
    assert not np.allclose(trained["resnet_features"], pretrained["resnet_features"], atol=1e-3)
    expected = result.model.predict(images, verbose=0)
    frozen = Backbone.load(tmp_path / "run/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), expected, rtol=1e-4, atol=1e-5)
    served = tf.saved_model.load(str(tmp_path / "run/export/saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(images))["probabilities"], expected, rtol=1e-4, atol=1e-5)
    reloaded = keras.models.load_model(tmp_path / "run/model.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fit_with_thaw_on_several_cuts_from_the_cache_keeps_the_trained_values_of_the_cuts_it_kept(tmp_path):
    """From cached prefix outputs, which stay whole although grid=1 would average frozen ones; a
    strong penalty drops block1_out, and the recut layer keeps the trained thawed values."""
    import transfer
    from transfer import Backbone
    from transfer.features.cache import FeatureCache

    result = transfer.fit("example:digits", "digits:5-9?per_class=10", cut=CUTS, head="multilayer",
                          head_options={"strength": 0.1}, thaw=2, epochs=20, lr=0.01, cache_dir=tmp_path / "cache",
                          out=tmp_path / "run", export=("pb",), verbose=0)
    entries = FeatureCache(tmp_path / "cache").entries()
    assert sorted(entry.feature_shapes[0] for entry in entries) == [(4, 4, 32)] * 6 + [(8, 8, 16)] * 3
    assert not any(entry.manifest["ingredients"].get("pool") for entry in entries)
    kept = __import__("json").loads((tmp_path / "run/config.json").read_text())["kept_cuts"]
    features = result.model.get_layer("features")
    assert kept == ["block2_out", "resnet_features"] == [c.spec for c in features.backbone.cuts]
    assert all(not np.allclose(w.numpy(), c) for w, c in zip(features.thawed_weights, constants(features)))
    images = digit_images()
    frozen = Backbone.load(tmp_path / "run/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), result.model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)


def test_fit_several_cuts_bad_input(tmp_path, capsys):
    import transfer
    from transfer.cli.main import main

    code = main(["fit", "--backbone", "example:digits", "--data", "digits:5-9?per_class=10", "--cut",
                 "block1_out,block2_out", "--head", "multilayer", "--thaw", "11", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    assert ("cannot thaw 11 layer(s): there are 10 weight layers before the cuts (block1_out, block2_out) "
            "(valid: 1 to 10;") in err
    with pytest.raises(TransferError, match="head 'linear' trains on one cut; got 2 cuts .*--head multilayer"):
        transfer.fit("example:digits", "digits:5-9?per_class=10", cut="block1_out,block2_out", epochs=1, verbose=0)


@pytest.mark.slow
def test_fit_with_a_refit_keeps_the_mask_of_the_refit(tmp_path):
    """`transfer.fit` runs the refit step too, and the model it keeps uses the refit's features."""
    import transfer

    result = transfer.fit("example:digits", "digits:5-9?per_class=10", cut=CUTS, head="multilayer",
                          head_options={"strength": 0.01, "refit": 0.25, "concatenation": False}, epochs=10, lr=0.01,
                          cache_dir=tmp_path / "cache", export=(), verbose=0)
    head = result.model.layers[-1]
    total = sum(spec.shape[-1] for spec in transfer.Backbone.load("example:digits", cut=CUTS).feature_specs.values())
    mask = keras.ops.convert_to_numpy(head.mask)  # of the kept cuts' features only, when cuts were dropped
    assert 0 < mask.sum() <= round(0.25 * total)
    assert not keras.ops.convert_to_numpy(head.classifier.kernel)[mask == 0].any()


@pytest.mark.slow
def test_fit_keeps_every_cut_concatenated_where_validation_prefers_it(tmp_path):
    """A penalty so strong that the trained head keeps almost nothing: `transfer.fit` fits the
    no-sparsity end too and keeps it (every cut, validation higher); told not to, it keeps the
    trained selection. The run's metrics say what was compared."""
    import transfer

    common = dict(cut=CUTS, head="multilayer", epochs=5, lr=0.01, cache_dir=tmp_path / "cache", export=(), verbose=0)
    result = transfer.fit("example:digits", "digits:5-9?per_class=10", head_options={"strength": 3.0}, **common)
    selection = result.metrics["selection"]
    assert selection["kept"] == "concatenation"
    assert selection["concatenation_val_accuracy"] > selection["trained_val_accuracy"]
    assert result.metrics["validation"]["accuracy"] == pytest.approx(selection["concatenation_val_accuracy"])
    head = result.model.layers[-1]
    assert head.strength == 0.0 and head.kept == (0, 1, 2) and keras.ops.convert_to_numpy(head.mask).all()
    alone = transfer.fit("example:digits", "digits:5-9?per_class=10",
                         head_options={"strength": 3.0, "concatenation": False}, **common)
    assert "selection" not in alone.metrics
    assert alone.metrics["validation"]["accuracy"] == pytest.approx(selection["trained_val_accuracy"])


def test_multilayer_without_its_sparse_candidates_is_plain_concatenation():
    """The no-sparsity end of `choose_multilayer`'s path (strength 0, every candidate with a
    penalty removed) is a standardized logistic regression on every input pooled and concatenated."""
    from transfer.heads import LogRegProbe, pool_array

    xs, y = three_cuts(n=300)
    train, validation, test = (split(xs, y, part) for part in (slice(0, 150), slice(150, 225), slice(225, 300)))
    choice = choose_multilayer(train, validation, NUM_CLASSES, strengths=(0.0,), grid=2)
    joined = lambda features: np.concatenate([pool_array(x, "grid2") for x in features], axis=1)  # noqa: E731
    concatenation = LogRegProbe().fit(joined(train[0]), train[1])
    ours = np.asarray(choice.head([tf.constant(x) for x in test[0]], training=False))
    np.testing.assert_allclose(ours, concatenation.predict_proba(joined(test[0])), atol=2e-3)
    assert np.array_equal(np.argmax(ours, axis=1), concatenation.predict(joined(test[0])))
    assert choice.strength == 0.0 and choice.head.kept == (0, 1, 2)
    assert choice.val_accuracy == concatenation.score(joined(validation[0]), validation[1])


@pytest.mark.slow
def test_the_path_keeps_the_concatenation_candidate_and_chooses_the_grid_on_validation():
    xs, y = three_cuts(n=300)
    train, validation = split(xs, y, slice(0, 200)), split(xs, y, slice(200, 300))
    choice = choose_multilayer(train, validation, NUM_CLASSES, strengths=(0.0, 3e-2), grids=(1, 2), epochs=10)
    assert [(t["grid"], t["strength"]) for t in choice.tried] == [(1, 0.0), (1, 3e-2), (2, 0.0), (2, 3e-2)]
    concatenation = max(t["val_accuracy"] for t in choice.tried if t["strength"] == 0.0)
    assert choice.val_accuracy >= concatenation and choice.head.grid in (1, 2)
