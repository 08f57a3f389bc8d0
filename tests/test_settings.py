"""TrainingSettings: one place for training defaults and checks, shared by fit, sweep and the CLI."""
import dataclasses
import json

import pytest

import transfer
from transfer.cli.main import build_parser, main
from transfer.errors import TransferError
from transfer.training.settings import FIELDS, TrainingSettings, default
from transfer.sweep.grid import TRAINING_AXES

DIGITS = "digits:5-9?per_class=10"


def test_the_cli_defaults_are_the_settings_defaults():
    args = build_parser().parse_args(["fit", "--backbone", "b.pb", "--data", "d"])
    assert TrainingSettings(**{name: getattr(args, name) for name in FIELDS}) == TrainingSettings()
    sweep = build_parser().parse_args(["sweep", "--backbone", "b.pb", "--data", "d"])
    assert sweep.patience == default("patience") and sweep.seed == default("seed")
    assert {name: values[0] for name, values in TRAINING_AXES.items() if name != "thaw"} == {
        name: default(name) for name in ("lr", "epochs", "batch_size", "optimizer")}


def test_fit_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (f"(default {default('epochs')})", f"(default {default('batch_size')})",
                  f"(default {default('lr')})", f"(default {default('patience')})"):
        assert shown in text


@pytest.mark.parametrize("changes,message", [
    ({"epochs": 0}, r"^epochs=0 \(--epochs\) must be an integer >= 1$"),
    ({"batch_size": 2.5}, r"^batch_size=2.5 \(--batch-size\) must be an integer >= 1$"),
    ({"lr": float("inf")}, r"^lr=inf \(--lr\) must be a number > 0$"),
    ({"optimizer": "adamm"}, r"^optimizer='adamm' \(--optimizer\) must be one of adam, adamw, sgd, rmsprop, nadam$"),
    ({"patience": -1}, r"^patience=-1 \(--patience\) must be an integer >= 0$"),
    ({"class_weight": "even"}, r"^class_weight='even' \(--class-weight\) must be one of none, balanced$"),
    ({"thaw": 0}, r"^thaw=0 \(--thaw\) must be an integer >= 1$"),
    ({"thaw": 2, "thaw_from": "block2"}, r"^thaw=2 and thaw_from='block2' both choose the thawed layers"),
    ({"thaw_lr_scale": 0.1}, r"^thaw_lr_scale=0.1 \(--thaw-lr-scale\) shapes how thawed layers train"),
    ({"thaw": 1, "unfreeze_every": 0}, r"^unfreeze_every=0 \(--unfreeze-every\) must be an integer >= 1$"),
])
def test_a_bad_setting_is_one_line_when_made(changes, message):
    with pytest.raises(TransferError, match=message):
        TrainingSettings(**changes)


def test_settings_record_under_the_keyword_names_and_change_by_replace():
    settings = TrainingSettings.of(TrainingSettings(epochs=3), lr=0.01, thaw=1, thaw_lr_scale=0.1)
    assert (settings.epochs, settings.lr, settings.thawing) == (3, 0.01, True)
    assert set(settings.to_config()) == set(FIELDS)
    assert settings.thaw_training.thaw_lr_scale == 0.1
    with pytest.raises(TypeError, match="epoch"):
        TrainingSettings.of(epoch=3)  # a misspelt name fails as any Python keyword does
    assert dataclasses.is_dataclass(settings) and hash(settings) == hash(TrainingSettings.of(settings))


@pytest.mark.slow
def test_fit_takes_a_settings_object_or_its_keywords(tmp_path):
    settings = TrainingSettings(epochs=2, lr=0.01, seed=3)
    by_object = transfer.fit("example:digits", DIGITS, settings, cut="block2_out", head_options={"pooling": "flatten"},
                             out=tmp_path / "a", export=(), verbose=0)
    by_keywords = transfer.fit("example:digits", DIGITS, cut="block2_out", head_options={"pooling": "flatten"},
                               epochs=2, lr=0.01, seed=3, out=tmp_path / "b", export=(), verbose=0)
    assert by_object.history == by_keywords.history
    config = json.loads((tmp_path / "a/config.json").read_text())
    assert {name: config[name] for name in FIELDS} == settings.to_config()
    with pytest.raises(TransferError, match=r"^epochs=0"):
        transfer.fit("example:digits", DIGITS, settings, epochs=0)  # keywords change the object, checked
