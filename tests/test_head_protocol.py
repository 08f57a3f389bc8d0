"""The head protocol: what each kind of head declares (traits, options), and that the registry,
`transfer.fit` and sweeps read those declarations rather than probing heads."""
import dataclasses
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from transfer.errors import TransferError  # before keras: sets KERAS_BACKEND

import keras  # noqa: E402
from keras import ops  # noqa: E402

import transfer  # noqa: E402
from transfer.cli.main import main  # noqa: E402
from transfer.heads import REQUIRED, Head, HeadTraits, Option, available, get, kind_of, registry, traits_of  # noqa: E402
from transfer.sweep.grid import expand_grid  # noqa: E402
from transfer.sweep.sweeping import _storage_pool  # noqa: E402
from transfer.training.fitting import cache_pool  # noqa: E402
from transfer.training.keras_training import trained_with_refit  # noqa: E402
from transfer.training.sources import adapt_head  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = "digits:5-9?per_class=10"
KERAS_HEAD = HeadTraits(adapts=True, logits=True)
TRAITS = {  # what each registered head is, written out
    "linear": dataclasses.replace(KERAS_HEAD, averages_positions=("pooling", "avg")),
    "mlp": dataclasses.replace(KERAS_HEAD, averages_positions=("pooling", "avg")),
    "conv": KERAS_HEAD,  # its convolutions read the positions before it pools
    "attention": KERAS_HEAD,
    "multilayer": dataclasses.replace(KERAS_HEAD, several_cuts=True, averages_positions=("grid", 1), refits=True,
                                      subsets=True, concatenates=True),
    "logreg": HeadTraits(keras=False, averages_positions=("pooling", "avg")),
}
SETTABLE = {
    "linear": ["dropout", "logits", "pooling", "standardize"],
    "mlp": ["activation", "dropout", "hidden", "logits", "norm", "pooling", "standardize"],
    "conv": ["activation", "dropout", "filters", "kernel_size", "logits", "pooling", "standardize"],
    "attention": ["dropout", "key_dim", "logits", "num_heads", "standardize"],
    "multilayer": ["concatenation", "grid", "logits", "penalty", "refit", "standardize", "strength", "tolerance"],
    "logreg": ["C", "max_iter", "pooling", "standardize"],
}
LAYER_KWARGS = {"dtype", "name", "num_classes", "trainable"}


@pytest.fixture
def own_registry(monkeypatch):
    """A copy of the registry, and no third-party entry points."""
    monkeypatch.setattr(registry, "_HEADS", dict(registry._HEADS))
    monkeypatch.setattr(registry, "entry_points", lambda group: [])


# --- user heads ---------------------------------------------------------------------------------


class PlainHead(keras.layers.Layer):
    """A user's head that declares nothing: a Keras layer of one cut."""

    def __init__(self, num_classes, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.scale = num_classes, scale
        self.dense = keras.layers.Dense(num_classes, activation="softmax")

    def call(self, inputs):
        return self.dense(self.scale * ops.reshape(inputs, (-1, int(np.prod(inputs.shape[1:])))))


class PlainModelHead(keras.Model):
    """A user's head written as a keras.Model, declaring nothing."""

    def __init__(self, num_classes, width=4, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(num_classes, activation="softmax")

    def call(self, inputs):
        return self.dense(inputs)


class CutsHead(keras.layers.Layer):
    """A user's head of several cuts: each averaged over its positions, concatenated, Dense."""

    traits = HeadTraits(several_cuts=True)
    options = (Option("num_classes"), Option("scale", 1.0, "a number"))

    def __init__(self, num_classes, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.scale = num_classes, scale
        self.dense = keras.layers.Dense(num_classes, activation="softmax")

    def call(self, inputs):
        pooled = [ops.mean(x, axis=tuple(range(1, len(x.shape) - 1))) if len(x.shape) > 2 else x for x in inputs]
        return self.dense(self.scale * ops.concatenate(pooled, axis=-1))


class OneCutHead(CutsHead):
    """The same head, declaring that it reads one cut."""

    traits = HeadTraits()


class DeepHead(Head):
    """A user's subclass of Head with options of its own, not declared: its constructor's."""

    def __init__(self, num_classes, depth=2, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.depth = depth


def path(cls):
    return f"{__name__}:{cls.__name__}"


# --- what every head declares --------------------------------------------------------------------


def test_every_registered_head_declares_its_traits(own_registry):
    assert available() == sorted(TRAITS)
    for name, traits in TRAITS.items():
        factory = registry.resolve(name)
        assert isinstance(factory.traits, HeadTraits), name
        assert kind_of(name).traits == traits == traits_of(factory), name


def test_every_registered_head_declares_exactly_its_constructor_options(own_registry):
    for name in available():
        factory = registry.resolve(name)
        assert "options" in vars(factory), f"{name} does not declare its options"
        declared = {o.name: o.default for o in factory.options}
        parameters = inspect.signature(factory).parameters.values()
        constructor = {p.name: REQUIRED if p.default is p.empty else p.default for p in parameters
                       if p.kind is not p.VAR_KEYWORD}
        assert declared == constructor, name
        assert all(o.accepts for o in factory.options), f"{name}: say what each option accepts"
        assert kind_of(name).settable == SETTABLE[name]


def test_a_built_head_has_the_traits_of_its_kind():
    assert traits_of(get("multilayer", num_classes=2)) == TRAITS["multilayer"]
    assert traits_of(get("logreg")) == TRAITS["logreg"]
    assert traits_of(keras.layers.Dense(2)) == HeadTraits()


def test_a_user_head_that_declares_nothing_gets_the_defaults():
    for cls, own in ((PlainHead, ["scale"]), (PlainModelHead, ["width"])):
        kind = kind_of(path(cls))
        assert kind.traits == HeadTraits() == HeadTraits(keras=True, several_cuts=False, averages_positions=None,
                                                         adapts=False, logits=False, refits=False, subsets=False)
        assert kind.settable == own  # its constructor's options, not Layer's dtype, name, trainable
        assert kind.options[0] == Option("num_classes", REQUIRED)
    deep = kind_of(path(DeepHead))
    assert deep.traits == KERAS_HEAD and deep.settable == ["depth"]  # Head's traits, its own options
    assert get(path(DeepHead), num_classes=3, depth=4).depth == 4


def test_a_user_head_that_declares_its_options_is_held_to_them():
    kind = kind_of(path(CutsHead))
    assert kind.traits.several_cuts and kind.settable == ["scale"]
    with pytest.raises(TransferError, match=r"^head '.*:CutsHead' has no option 'scal'; did you mean 'scale'; "
                                            r"valid options: scale$"):
        get(path(CutsHead), num_classes=2, scal=2.0)


def test_a_factory_with_keyword_arguments_of_its_own_takes_any_option(own_registry):
    registry.register("anything")(lambda num_classes, **options: PlainHead(num_classes, **options))
    assert kind_of("anything").settable is None and not kind_of("anything").takes("pooling")
    assert get("anything", num_classes=2, scale=3.0).scale == 3.0
    kind_of("anything").check_options({"scale": 3.0})


# --- option errors: the head's own options, the same from fit and sweep -----------------------------


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("head", ["linear", "mlp", "multilayer", "logreg"])
def test_a_mistyped_option_lists_exactly_the_heads_own_options_in_fit_and_sweep(head, capsys, tmp_path):
    common = ["--backbone", "example:digits", "--data", DATA, "--head-opt", "hiden=3", "--cache-dir",
              str(tmp_path / "cache")]
    fitted = one_line_error(capsys, ["fit", *common, "--head", head, "--out", str(tmp_path / "fit")])
    swept = one_line_error(capsys, ["sweep", *common, "--heads", head, "--out", str(tmp_path / "sweep")])
    assert f"head {head!r} has no option 'hiden'" in fitted
    assert f"head option 'hiden' applies to none of the swept heads ({head}: " in swept
    listed_by_fit = fitted.split("valid options: ")[1].split(", ")
    listed_by_sweep = re.search(rf"\({head}: (.*)\)$", swept).group(1).split(", ")
    assert listed_by_fit == listed_by_sweep == SETTABLE[head]
    assert not LAYER_KWARGS & set(listed_by_fit)
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("command,flag", [("fit", "--head"), ("sweep", "--heads")])
def test_num_classes_as_a_head_option_is_a_one_line_error(command, flag, capsys, tmp_path):
    err = one_line_error(capsys, [command, "--backbone", "example:digits", "--data", DATA, flag, "linear",
                                  "--head-opt", "num_classes=3", "--out", str(tmp_path / "run"), "--cache-dir",
                                  str(tmp_path / "cache")])
    assert err.endswith("head 'linear': num_classes is set from the data's classes, not as a head option; "
                        "valid options: dropout, logits, pooling, standardize")
    assert not any(tmp_path.iterdir())


def test_a_head_option_of_the_layer_base_is_refused():
    for option in ("dtype", "name", "trainable"):
        with pytest.raises(TransferError, match=rf"^head 'linear' has no option '{option}'"):
            kind_of("linear").check_options({option: None})
    with pytest.raises(TransferError, match=r"^head '.*:PlainHead' has no option 'name'; valid options: scale$"):
        kind_of(path(PlainHead)).build(num_classes=2, name="mine")


# --- training reads the declarations ------------------------------------------------------------------


def test_a_user_head_that_declares_several_cuts_trains_on_several_and_one_that_does_not_is_refused():
    result = transfer.fit("example:digits", DATA, cut="block1_out,block2_out", head=path(CutsHead), epochs=1,
                          export=(), verbose=0)
    assert result.model.layers[-1].__class__ is CutsHead and 0 <= result.metrics["validation"]["accuracy"] <= 1
    with pytest.raises(TransferError, match=rf"^head '{re.escape(path(OneCutHead))}' trains on one cut; got 2 cuts "
                                            r"\(block1_out, block2_out\); a head of several cuts: --head multilayer$"):
        transfer.fit("example:digits", DATA, cut="block1_out,block2_out", head=path(OneCutHead), epochs=1,
                     export=(), verbose=0)


def test_what_a_cache_of_several_cuts_stores_follows_what_the_heads_declare():
    several = [{"head": "linear", "head_options": {}}, {"head": "logreg", "head_options": {"pooling": "avg"}}]
    assert _storage_pool(None, several, several_cuts=True, progress=False) == "avg"
    for setting in ({"head": "linear", "head_options": {"pooling": "max"}},
                    {"head": "conv", "head_options": {}},  # its convolutions need the maps
                    {"head": "attention", "head_options": {}},
                    {"head": path(PlainHead), "head_options": {}}):
        assert _storage_pool(None, [setting], several_cuts=True, progress=False) == "none", setting
    backbone = type("Cuts", (), {"multi_cut": True})()
    assert cache_pool(backbone, kind_of("multilayer"), {}) == "avg"
    assert cache_pool(backbone, kind_of("multilayer"), {"grid": 2}) == "none"
    assert cache_pool(backbone, kind_of("linear"), {}) == "none"  # reads one cut


def test_a_sweep_trains_the_probe_without_the_keras_axes_and_knows_it_by_its_traits():
    settings = expand_grid(["linear", "logreg"], lr=[0.1, 0.01])
    assert [(s["head"], s["lr"]) for s in settings] == [("linear", 0.1), ("linear", 0.01), ("logreg", None)]


class AdaptingHead:
    """Has `adapt`, `standardize`, `refit` and `logits`: only what it declares is used."""

    standardize, refit, logits = True, 0.5, True

    def __init__(self):
        self.adapted_on, self.refits = None, 0

    def adapt(self, batches, steps=None):
        self.adapted_on = [np.asarray(batch) for batch in batches]
        return self

    def begin_refit(self):
        self.refits += 1


class DeclaredHead(AdaptingHead):
    traits = HeadTraits(adapts=True, refits=True, logits=True)


class FeatureSource:
    """What `adapt_head` reads: a model around a head, and batches of (features, labels)."""

    def model(self, head):
        inputs = keras.Input((3,))
        return keras.Model(inputs, head(inputs))

    def adapt_batches(self):
        return [(np.ones((2, 3), "float32"), np.zeros(2))]


def test_training_adapts_and_refits_only_a_head_that_declares_it():
    undeclared, declared = AdaptingHead(), DeclaredHead()
    for head in (undeclared, declared):
        adapt_head(head, FeatureSource())
    assert undeclared.adapted_on is None and np.array_equal(declared.adapted_on[0], np.ones((2, 3)))
    assert len(trained_with_refit(undeclared, lambda: "log")) == 1 and undeclared.refits == 0
    assert trained_with_refit(declared, lambda: "log") == ["log", "log"] and declared.refits == 1


def test_no_probing_of_heads_is_left_in_training_and_sweeps():
    probes = re.compile(r"getattr\((head|factory|head_factory)\b|inspect\.signature|\bis_keras\b|\bseveral_inputs\b")
    for folder in ("transfer/training", "transfer/sweep"):
        for source in sorted((ROOT / folder).glob("*.py")):
            found = [line.strip() for line in source.read_text().splitlines() if probes.search(line)]
            assert not found, f"{source.relative_to(ROOT)} probes heads: {found}"
