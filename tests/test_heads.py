"""Heads: shapes per feature rank, config and .keras round trips, learning a toy task, registry."""
import inspect
import warnings
from importlib.metadata import EntryPoint

import numpy as np
import pytest

from transfer.errors import TransferError  # before keras: sets KERAS_BACKEND

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

import transfer.heads  # noqa: E402
from transfer.heads import (  # noqa: E402
    AttentionHead,
    ConvHead,
    FeaturePooling,
    LinearHead,
    LogRegProbe,
    MLPHead,
    available,
    get,
    kind_of,
    pool_array,
    register,
    registry,
)
from transfer.heads.standardization import StandardizationWarning  # noqa: E402

NUM_CLASSES = 3
# Non-default options, so that config and save/load tests see them survive.
OPTIONS = {
    "linear": {"pooling": "max", "dropout": 0.1},
    "mlp": {"hidden": (16, 8), "norm": "batch", "dropout": 0.1, "activation": "gelu"},
    "conv": {"filters": (8, 4), "kernel_size": 1, "pooling": "max"},
    "attention": {"num_heads": 2, "key_dim": 8},
}
CLASSES = {"linear": LinearHead, "mlp": MLPHead, "conv": ConvHead, "attention": AttentionHead}
SHAPES = {2: (8,), 3: (5, 4), 4: (3, 3, 4)}  # per feature rank, without the batch axis
RANKS = {"linear": (2, 3, 4), "mlp": (2, 3, 4), "conv": (4,), "attention": (3, 4)}
ACCEPTED = [(name, rank) for name in RANKS for rank in RANKS[name]]
REJECTED = [(name, rank) for name in RANKS for rank in (2, 3, 4, 5) if rank not in RANKS[name]]


def make_head(name, **options):
    return get(name, num_classes=NUM_CLASSES, **{**OPTIONS[name], **options})


def features(rank, batch=6, seed=0):
    shape = SHAPES.get(rank, (2, 2, 2, 4))
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


class TinyHead(keras.layers.Layer):
    """A third-party head, reachable only through its import path."""

    def __init__(self, num_classes, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.scale = num_classes, scale

    def call(self, inputs):
        return ops.softmax(self.scale * inputs[:, : self.num_classes])


# --- shapes, probabilities, logits ------------------------------------------------------------


@pytest.mark.parametrize("name,rank", ACCEPTED)
def test_head_gives_class_probabilities_for_each_accepted_rank(name, rank):
    head = make_head(name)
    x = features(rank)
    probs = np.asarray(head(x))
    assert probs.shape == (6, NUM_CLASSES)
    assert head.compute_output_shape(x.shape) == (6, NUM_CLASSES)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    symbolic = make_head(name)(keras.Input(SHAPES[rank]))
    assert tuple(symbolic.shape) == (None, NUM_CLASSES)


@pytest.mark.parametrize("name,rank", ACCEPTED)
def test_logits_option_gives_the_softmax_inputs(name, rank):
    x = features(rank)
    probs_head, logits_head = make_head(name), make_head(name, logits=True)
    probs_head(x), logits_head(x)
    logits_head.set_weights(probs_head.get_weights())
    logits = np.asarray(logits_head(x))
    assert not np.allclose(logits.sum(axis=1), 1.0)
    probs = np.asarray(probs_head(x))
    np.testing.assert_allclose(np.asarray(ops.softmax(logits)), probs, atol=1e-5)


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_spatial_heads_take_any_height_and_width(name):
    head = make_head(name)
    model = keras.Sequential([keras.Input((None, None, 4)), head])
    assert model.predict(features(4), verbose=0).shape == (6, NUM_CLASSES)
    wider = np.random.default_rng(1).normal(size=(2, 5, 7, 4)).astype("float32")
    assert model.predict(wider, verbose=0).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name,rank", REJECTED)
def test_head_refuses_a_feature_rank_it_cannot_read_at_build_time(name, rank):
    shape = (None, *SHAPES.get(rank, (2, 2, 2, 4)))
    with pytest.raises(TransferError) as error:
        make_head(name)(keras.Input(shape[1:]))
    message = str(error.value)
    assert "\n" not in message
    assert f"head {name!r} needs" in message and f"got shape {shape}" in message


def test_conv_head_rank_error_text():
    with pytest.raises(TransferError) as error:
        get("conv", num_classes=2)(keras.Input((64,)))
    assert str(error.value) == (
        "head 'conv' needs 4-D spatial features (batch, height, width, channels), "
        "got shape (None, 64)"
    )


# --- config and .keras round trips -------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_get_config_holds_exactly_the_constructor_arguments(name):
    head = make_head(name)
    config = head.get_config()
    parameters = set(inspect.signature(CLASSES[name]).parameters) - {"kwargs"}
    assert set(config) == parameters | {"name", "trainable", "dtype"}
    assert config["num_classes"] == NUM_CLASSES
    for option, value in OPTIONS[name].items():
        assert config[option] == value
    clone_ = CLASSES[name].from_config(config)
    assert type(clone_) is CLASSES[name]
    assert clone_.get_config() == config


@pytest.mark.parametrize("name,rank", ACCEPTED)
def test_keras_file_round_trip_reproduces_predictions(name, rank, tmp_path):
    model = keras.Sequential([keras.Input(SHAPES[rank]), make_head(name)])
    # Move every weight (kernels, biases, batch-norm statistics, the attention query) off its
    # initial value, so a weight the file fails to restore would change the predictions.
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.uniform(0.1, 0.5, size=w.shape) for w in model.get_weights()])
    x = features(rank)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # safe mode
    assert type(loaded.layers[-1]) is CLASSES[name]
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


# --- learning a separable toy task -------------------------------------------------------------


def blobs(n=240, dims=8, seed=0):
    """Three Gaussian blobs in `dims`-D, 4 standard deviations apart."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % NUM_CLASSES
    centers = 4.0 * np.eye(NUM_CLASSES, dims)
    return (centers[y] + rng.normal(size=(n, dims))).astype("float32"), y


def bright_patch_maps(n=240, size=6, channels=4, seed=0):
    """(n, size, size, channels) noise; class k lights a 2x2 patch of channel k, anywhere."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % NUM_CLASSES
    x = rng.normal(scale=0.3, size=(n, size, size, channels))
    rows, cols = rng.integers(0, size - 1, size=(2, n))
    for i in range(n):
        x[i, rows[i] : rows[i] + 2, cols[i] : cols[i] + 2, y[i]] += 3.0
    return x.astype("float32"), y


def toy_task(rank):
    if rank == 2:
        return blobs()
    x, y = bright_patch_maps()
    return (x if rank == 4 else x.reshape(len(x), -1, x.shape[-1])), y


LEARNS = [
    ("linear", 2, {}),
    ("mlp", 2, {}),
    ("linear", 4, {"pooling": "avg"}),
    ("linear", 4, {"pooling": "flatten"}),
    ("mlp", 4, {"pooling": "max", "norm": "layer"}),
    ("conv", 4, {}),
    ("attention", 3, {}),
    ("attention", 4, {}),
]


@pytest.mark.parametrize("name,rank,options", LEARNS)
def test_head_learns_a_separable_toy_task(name, rank, options):
    keras.utils.set_random_seed(0)
    x, y = toy_task(rank)
    train, test = slice(0, 180), slice(180, None)
    model = keras.Sequential([keras.Input(x.shape[1:]), make_head(name, **options).adapt(x[train])])
    model.compile(keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
    model.fit(x[train], y[train], epochs=8, batch_size=30, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(x[test], verbose=0), axis=1) == y[test])
    assert accuracy > 0.9


def marked_sequences(n=300, steps=8, seed=0):
    """Every step is a random one-hot over 3 channels; one step, flagged in channel 3, holds the
    label. Averaging over steps drowns it in the distractors; attending to the flag finds it."""
    rng = np.random.default_rng(seed)
    y, rows = np.arange(n) % NUM_CLASSES, np.arange(n)
    x = np.zeros((n, steps, NUM_CLASSES + 1))
    x[rows[:, None], np.arange(steps), rng.integers(0, NUM_CLASSES, (n, steps))] = 1
    flagged = rng.integers(0, steps, n)
    x[rows, flagged] = 0
    x[rows, flagged, y] = x[rows, flagged, NUM_CLASSES] = 1
    return (x + rng.normal(scale=0.1, size=x.shape)).astype("float32"), y


def test_attention_head_finds_the_position_that_average_pooling_misses():
    x, y = marked_sequences()
    accuracy = {}
    for name in ("attention", "linear"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(x.shape[1:]), get(name, num_classes=NUM_CLASSES).adapt(x[:240])])
        model.compile(keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
        model.fit(x[:240], y[:240], epochs=8, batch_size=30, verbose=0)
        accuracy[name] = np.mean(np.argmax(model.predict(x[240:], verbose=0), axis=1) == y[240:])
    assert accuracy["attention"] > 0.9 and accuracy["linear"] < 0.6


# --- standardized inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("name,rank,options", LEARNS)
def test_head_learns_the_same_task_on_features_far_from_unit_scale(name, rank, options):
    """The toy task's features times 1e-3 plus 0.05 (a cut with small activations) learn as well."""
    keras.utils.set_random_seed(0)
    x, y = toy_task(rank)
    x = 1e-3 * x + 0.05
    model = keras.Sequential([keras.Input(x.shape[1:]), make_head(name, **options).adapt(x[:180])])
    model.compile(keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
    model.fit(x[:180], y[:180], epochs=8, batch_size=30, verbose=0)
    assert np.mean(np.argmax(model.predict(x[180:], verbose=0), axis=1) == y[180:]) > 0.9


@pytest.mark.parametrize("name,rank", ACCEPTED)
def test_an_adapted_head_does_not_see_a_per_channel_scale_and_offset(name, rank):
    x = features(rank, batch=40)
    channels = x.shape[-1]
    scale = np.geomspace(1e-4, 1e3, channels)
    moved = (x * scale + scale * np.linspace(-5, 5, channels)).astype("float32")
    head, moved_head = make_head(name).adapt(x), make_head(name).adapt(moved)
    head(x), moved_head(moved)
    # the same weights but the statistics (both heads list their weights in the same order)
    moved_head.set_weights([moved if "standardization" in weight.path else own
                            for weight, own, moved in zip(moved_head.weights, head.get_weights(),
                                                          moved_head.get_weights())])
    np.testing.assert_allclose(np.asarray(moved_head(moved)), np.asarray(head(x)), rtol=1e-3, atol=1e-4)


def test_adapt_computes_per_channel_mean_and_variance_over_every_other_axis():
    x = (features(4, batch=50) * np.array([1e-3, 1.0, 10.0, 0.0]) + 0.046).astype("float32")
    expected_mean, expected_variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    expected_variance[3] = 1.0  # a constant channel is only centred
    labels = np.arange(50) % NUM_CLASSES
    pairs = tf.data.Dataset.from_tensor_slices((x, labels)).batch(7)
    for data in (x, pairs, pairs.map(lambda f, _: f), (x[i:i + 9] for i in range(0, 50, 9))):
        layer = get("conv", num_classes=NUM_CLASSES).adapt(data).standardization
        np.testing.assert_allclose(layer.mean.numpy(), expected_mean, rtol=1e-5)
        np.testing.assert_allclose(layer.variance.numpy(), expected_variance, rtol=1e-4)
        assert layer.count.numpy() == 50 * 9
    first = get("conv", num_classes=NUM_CLASSES).adapt(pairs, steps=2).standardization
    np.testing.assert_allclose(first.mean.numpy(), x[:14].mean(axis=(0, 1, 2)), rtol=1e-5)


def test_a_head_never_adapted_warns_once_when_it_trains_and_standardize_false_does_not():
    x, y = blobs(n=60)
    for options, warns in (({}, True), ({"standardize": False}, False)):
        head = get("mlp", num_classes=NUM_CLASSES, **options)
        model = keras.Sequential([keras.Input((8,)), head])
        model.compile("adam", loss="sparse_categorical_crossentropy")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            head(x)  # predicting: no warning
            model.fit(x, y, epochs=2, verbose=0)
        said = [str(w.message) for w in caught if issubclass(w.category, StandardizationWarning)]
        assert said == (["head 'mlp': its input standardization was never adapted, so features pass unchanged; "
                         "call head.adapt(training_features) before training, or build the head with "
                         "standardize=False"] if warns else [])
        assert head.adapted is not warns
        assert (head.standardization is None) is not warns
        assert head.adapt(x) is head and head.adapted  # standardize=False: nothing to adapt


def test_adapted_statistics_survive_a_safe_mode_keras_file(tmp_path):
    x = 0.01 * features(4, batch=30) + 0.05
    model = keras.Sequential([keras.Input(SHAPES[4]), make_head("conv").adapt(x)])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    head = loaded.layers[-1]
    assert head.adapted and head.get_config()["standardize"] is True
    np.testing.assert_allclose(head.standardization.mean.numpy(), x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)


def test_standardize_is_a_head_option_on_the_command_line():
    from transfer.cli.arguments import key_value as _key_value

    assert _key_value("standardize=false") == ("standardize", False)
    assert _key_value("standardize=true,false") == ("standardize", [True, False])  # a sweep axis
    assert get("conv", num_classes=2, standardize=False).standardization is None


def test_adapt_refuses_features_the_head_cannot_read():
    with pytest.raises(TransferError, match=r"^head 'conv' needs 4-D spatial features .*got shape \(20, 8\)$"):
        get("conv", num_classes=2).adapt(features(2, batch=20))
    head = get("linear", num_classes=2)
    head(features(2))
    with pytest.raises(TransferError, match=r"^standardization: features have 4 channels, the head was built for 8$"):
        head.adapt(features(4))
    adapted = get("linear", num_classes=2).adapt(features(2))
    with pytest.raises(TransferError, match=r"^head 'linear' was adapted on features with 8 channels, "
                                            r"got shape \(None, 3, 3, 4\)$"):
        adapted(keras.Input(SHAPES[4]))
    with pytest.raises(TransferError, match=r"^head 'linear': adapt was given no features$"):
        get("linear", num_classes=2).adapt(iter([]))


# --- pooling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_pooling_layer_and_numpy_function_agree(pooling, rank):
    x = features(rank)
    axes = tuple(range(1, rank - 1))
    expected = {
        "avg": x.mean(axis=axes) if axes else x,
        "max": x.max(axis=axes) if axes else x,
        "flatten": x.reshape(len(x), -1),
    }[pooling]
    layer = FeaturePooling(pooling)
    np.testing.assert_allclose(pool_array(x, pooling), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-6)
    assert layer.compute_output_shape(x.shape) == expected.shape


def test_flatten_pooling_refuses_unknown_spatial_size():
    with pytest.raises(TransferError, match=r"pooling='flatten' needs a fixed feature shape"):
        get("linear", num_classes=2, pooling="flatten")(keras.Input((None, None, 4)))


# --- scikit-learn probe ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_logreg_probe_follows_scikit_learn_conventions():
    check_estimator(LogRegProbe())  # raises on the first failed check
    probe = get("logreg", C=0.5, pooling="max")
    assert probe.get_params() == {"num_classes": None, "C": 0.5, "max_iter": 1000, "pooling": "max",
                                  "standardize": True}
    assert clone(probe.set_params(C=2.0)).C == 2.0
    assert kind_of("logreg").traits.keras is False and all(kind_of(name).traits.keras for name in CLASSES)


@pytest.mark.parametrize("rank,pooling", [(2, "avg"), (4, "avg"), (4, "max"), (4, "flatten")])
def test_logreg_probe_learns_a_separable_toy_task(rank, pooling):
    x, y = toy_task(rank)
    probe = get("logreg", num_classes=NUM_CLASSES, pooling=pooling).fit(x[:180], y[:180])
    assert probe is not None and probe.predict_proba(x[180:]).shape == (60, NUM_CLASSES)
    assert probe.score(x[180:], y[180:]) > 0.9


def test_logreg_probe_keeps_a_column_per_class_and_refuses_labels_beyond():
    x, y = blobs()
    two = np.where(y == 1, 2, y)  # labels 0 and 2 only
    proba = LogRegProbe(num_classes=4).fit(x, two).predict_proba(x)
    assert proba.shape == (len(x), 4)
    assert np.all(proba[:, [1, 3]] == 0) and np.all(proba[:, [0, 2]] > 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    with pytest.raises(TransferError, match=r"head 'logreg': labels \[2\] are outside 0\.\.1"):
        LogRegProbe(num_classes=2).fit(x, y)


# --- registry -----------------------------------------------------------------------------------


@pytest.fixture
def own_registry(monkeypatch):
    """A copy of the registry for tests that register heads, and no third-party entry points."""
    monkeypatch.setattr(registry, "_HEADS", dict(registry._HEADS))
    monkeypatch.setattr(registry, "entry_points", lambda group: [])


def test_available_lists_the_built_in_heads_and_filters_by_pattern(own_registry):
    assert available() == ["attention", "conv", "linear", "logreg", "mlp", "multilayer"]
    assert available("l*") == ["linear", "logreg"]
    assert available("nothing*") == []


def test_get_builds_a_new_head_with_the_options_given():
    first, second = get("mlp", num_classes=5, hidden=32), get("mlp", num_classes=5, hidden=32)
    assert type(first) is MLPHead and first is not second
    assert (first.num_classes, first.hidden) == (5, (32,))


def test_register_adds_a_head_under_its_name(own_registry):
    register("tiny")(TinyHead)
    assert "tiny" in available()
    head = get("tiny", num_classes=2, scale=3.0)
    assert type(head) is TinyHead and head.scale == 3.0 and TinyHead.head_name == "tiny"
    with pytest.raises(TransferError, match=r"head name 'linear' is already registered"):
        register("linear")(TinyHead)


def test_get_takes_an_import_path():
    head = get(f"{__name__}:TinyHead", num_classes=2, scale=2.0)
    assert type(head) is TinyHead and head.scale == 2.0
    assert type(get("transfer.heads.linear:LinearHead", num_classes=2)) is LinearHead
    with pytest.raises(TransferError, match=rf"head '{__name__}:TinyHead' has no option 'scal'"):
        get(f"{__name__}:TinyHead", num_classes=2, scal=2.0)
    with pytest.raises(TransferError, match=r"head 'no_such_module:Head' cannot be imported"):
        get("no_such_module:Head", num_classes=2)


def test_get_loads_a_third_party_head_from_its_entry_point(own_registry, monkeypatch):
    points = [
        EntryPoint("thirdparty", "transfer.heads.linear:LinearHead", "transfer.heads"),
        EntryPoint("broken", "transfer.heads.linear:Missing", "transfer.heads"),
        EntryPoint("other", "transfer.heads.mlp:MLPHead", "some.other.group"),
    ]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [p for p in points if p.group == group]
    )
    assert available() == ["attention", "broken", "conv", "linear", "logreg", "mlp", "multilayer", "thirdparty"]
    head = get("thirdparty", num_classes=4)
    assert type(head) is LinearHead and head.num_classes == 4
    assert LinearHead.head_name == "linear"  # an alias does not rename the class
    with pytest.raises(TransferError, match=r"head 'broken' \(entry point .*\) cannot be loaded"):
        get("broken", num_classes=4)


def test_unknown_head_is_one_line_naming_it_and_the_registered_ones(own_registry):
    with pytest.raises(TransferError) as error:
        get("lineer", num_classes=2)
    message = str(error.value)
    assert "\n" not in message
    assert "unknown head 'lineer'; did you mean 'linear'" in message
    assert "registered heads: attention, conv, linear, logreg, mlp" in message


def test_unknown_option_is_one_line_naming_head_option_and_valid_options():
    with pytest.raises(TransferError) as error:
        get("mlp", num_classes=2, hiden=(8,))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("head 'mlp' has no option 'hiden'; did you mean 'hidden'; valid")
    valid = message.split("valid options: ")[1].split(", ")
    assert valid == ["activation", "dropout", "hidden", "logits", "norm", "pooling", "standardize"]


def test_missing_num_classes_is_named():
    with pytest.raises(TransferError, match=r"head 'conv' needs option 'num_classes'"):
        get("conv")


@pytest.mark.parametrize(
    "name,options,pattern",
    [
        ("linear", {"pooling": "mean"}, r"head 'linear': pooling='mean' must be one of avg, max, flatten, grid2$"),
        ("mlp", {"norm": "group"}, r"head 'mlp': norm='group' must be one of none, batch, layer$"),
        ("mlp", {"hidden": (8, 0)}, r"head 'mlp': hidden=0 must be an integer >= 1"),
        ("conv", {"dropout": 1.5}, r"head 'conv': dropout=1.5 must be a number in \[0, 1\)"),
        ("attention", {"num_classes": 1}, r"head 'attention': num_classes=1 must be an integer"
         r" >= 2"),
        ("conv", {"filters": "8"}, r"head 'conv': filters='8' must be an integer >= 1"),
        ("conv", {"standardize": "no"}, r"head 'conv': standardize='no' must be true or false"),
    ],
)
def test_bad_option_value_is_one_line_naming_head_and_option(name, options, pattern):
    with pytest.raises(TransferError, match=f"^{pattern}$"):
        get(name, **{"num_classes": 3, **options})


def test_package_exports_the_public_api():
    public = {"get", "register", "available", "resolve", *(c.__name__ for c in CLASSES.values())}
    assert public | {"LogRegProbe", "FeaturePooling", "pool_array"} <= set(transfer.heads.__all__)
    assert all(hasattr(transfer.heads, name) for name in transfer.heads.__all__)
    assert transfer.heads.get is registry.get and transfer.heads.LinearHead.__module__ == (
        "transfer.heads.linear"
    )
