"""A sweep's grid: the axes and their defaults, a grid file (TOML or YAML), and every setting
they expand to."""
from __future__ import annotations

import itertools
import json
from pathlib import Path


from transfer import heads as registry
from transfer.heads.registry import CLASS_COUNT
from transfer.errors import TransferError, check_int
from transfer.training.settings import check_setting, default
from transfer.training.thaw_schedule import ThawTraining


# The training axes and their defaults (those of `transfer.fit`; thaw 0 = frozen); None where a
# head has no training loop of its own (the scikit-learn probe).
TRAINING_AXES = {**{name: (default(name),) for name in ("lr", "epochs", "batch_size", "optimizer")}, "thaw": (0,)}
# How thawed layers train (`transfer.training.thaw_schedule`): axes of the settings with thaw > 0 only.
THAW_AXES = {name: (None,) for name in ThawTraining.__dataclass_fields__ if name != "thaw_epochs"}
SETTING_AXES = {**TRAINING_AXES, **THAW_AXES}
GRID_KEYS = ("heads", "cuts", *SETTING_AXES, "head_options")
CSV_COLUMNS = ("rank", "cut", "head", *SETTING_AXES, "head_options", "val_accuracy_mean", "val_accuracy_std",
               "test_accuracy_mean", "test_accuracy_std", "seconds_mean", "repeats")
EVAL_BATCH = 256
ALL_CUTS = "all"  # the `cut` of a setting whose head reads every swept cut at once (`multilayer`)
TENSORBOARD_SCORES = ("val_accuracy", "test_accuracy")  # a run's scores that the HParams dashboard shows


def expand_grid(heads, *, head_options=None, **axes) -> list[dict]:
    """Every distinct setting of the grid, in grid order.

    Each axis is a list of choices (a scalar is one choice; a list-valued option is a list of
    lists: `hidden=[[64], [128, 64]]`). An axis only multiplies the heads it applies to: a head
    option those that take it, the training axes (lr, epochs, batch_size, optimizer) the Keras
    heads, so that no setting is trained twice under two names.
    """
    unknown = sorted(set(axes) - set(SETTING_AXES))
    if unknown:
        raise TransferError(f"unknown sweep axis {unknown[0]!r}; valid: {', '.join(GRID_KEYS[2:])}")
    training = {key: _axis(key, axes.get(key, default)) for key, default in TRAINING_AXES.items()}
    _check_training_axes(training)
    thawing = _thaw_axes({key: _axis(key, axes.get(key, default)) for key, default in THAW_AXES.items()},
                         any(training["thaw"]))
    options = {key: _axis(f"head option {key!r}", values) for key, values in (head_options or {}).items()}
    kinds = {name: registry.kind_of(name) for name in _axis("heads", heads)}
    if CLASS_COUNT in options:  # set from the data: the one-line error `transfer.fit` gives
        next(iter(kinds.values())).check_options(options)
    for option in options:
        if not any(kind.settable is None or option in kind.settable for kind in kinds.values()):
            taken = "; ".join(f"{name}: {kind.valid_options()}" for name, kind in kinds.items())
            raise TransferError(f"head option {option!r} applies to none of the swept heads ({taken})")
    settings = []
    for name, kind in kinds.items():
        own = {key: values for key, values in options.items() if kind.settable is None or key in kind.settable}
        own_training = training if kind.traits.keras else {key: (None,) for key in TRAINING_AXES}
        for trained, chosen in itertools.product(itertools.product(*own_training.values()),
                                                 itertools.product(*own.values())):
            setting = dict(zip(own_training, trained))
            for thaw_options in itertools.product(*thawing.values()) if setting["thaw"] else [()]:
                settings.append({"head": name, **setting, **dict.fromkeys(THAW_AXES),
                                 **dict(zip(thawing, thaw_options)), "head_options": dict(zip(own, chosen))})
    return list({setting_key(setting): setting for setting in settings}.values())  # first of each duplicate


def load_grid(path) -> dict:
    """The `expand_grid` keyword arguments in a TOML or YAML grid file (`heads` may come from elsewhere)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise TransferError(f"cannot read grid file {str(path)!r}: {reason}") from None
    if path.suffix == ".toml":
        import tomllib

        parse, errors, kind = tomllib.loads, tomllib.TOMLDecodeError, "TOML"
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TransferError(f"grid file {str(path)!r} is YAML, which needs pyyaml: "
                                "pip install pyyaml, or write the grid in TOML") from None
        parse, errors, kind = yaml.safe_load, yaml.YAMLError, "YAML"
    else:
        raise TransferError(f"grid file {str(path)!r} must end in .toml, .yaml or .yml")
    try:
        grid = parse(text)
    except errors as error:
        raise TransferError(f"grid file {str(path)!r} is not valid {kind}: {' '.join(str(error).split())}") from None
    if not isinstance(grid, dict):
        raise TransferError(f"grid file {str(path)!r} must map keys to choices; valid keys: {', '.join(GRID_KEYS)}")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise TransferError(f"grid file {str(path)!r} has unknown key {unknown[0]!r}; "
                            f"valid keys: {', '.join(GRID_KEYS)}")
    if not isinstance(grid.get("head_options", {}), dict):
        raise TransferError(f"grid file {str(path)!r}: head_options must be a table of option = [choices]")
    return grid


def _axis(what: str, values) -> list:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values:
        raise TransferError(f"sweep: {what} has no choices; give at least one")
    return values


def _check_training_axes(training: dict) -> None:
    """Refuse bad values before the first of many runs, not in the middle of the sweep."""
    for key, values in training.items():
        for value in values:
            if key == "thaw":  # 0: frozen, a setting of the sweep (fit's thaw is None or >= 1)
                check_int("sweep", "thaw", value, minimum=0)
            else:
                check_setting(key, value, owner="sweep")


def _thaw_axes(axes: dict, thawing: bool) -> dict:
    """The thaw options' choices, each combination checked now (not mid-sweep); given without a
    thaw > 0 on the grid they would apply to nothing, which is an error."""
    given = {key: values for key, values in axes.items() if values != [None]}
    if given and not thawing:
        raise TransferError(f"sweep: {next(iter(given))} shapes how thawed layers train: add thaw values > 0 "
                            "(--thaw 1,2)")
    for combination in itertools.product(*axes.values()):
        ThawTraining(**dict(zip(axes, combination))).check(thawing=True)
    return axes


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)
