"""Head registry: names to head factories, so a CLI flag or a sweep list can name a head.

Plain dicts and a decorator, as in timm's `register_model`. A name that is not registered is
taken as an import path if it reads `module:attribute`, else looked up among the entry points
of the group `transfer.heads` (third-party packages; loaded only on a miss, so importing the
registry stays cheap). `kind_of(name)` is what training code reads before it builds a head: the
factory with its declared traits and options (`transfer.heads.protocol`). Every user mistake is
one `TransferError` line that names the bad value and lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import inspect
from importlib.metadata import entry_points

import keras

from transfer.choices import HEAD_ENTRY_POINTS
from transfer.errors import TransferError, unknown_head

from .protocol import REQUIRED, HeadTraits, Option, traits_of

ENTRY_POINT_GROUP = HEAD_ENTRY_POINTS  # third-party heads register here (`transfer.choices`)
CLASS_COUNT = "num_classes"  # every head's first argument, set by training from the data: not a user's option
_HEADS = {}


@dataclasses.dataclass(frozen=True)
class HeadKind:
    """A head name resolved: its factory, the traits it declares, the options it takes (None:
    any, for a factory whose **kwargs are its own)."""

    name: str
    factory: object
    traits: HeadTraits
    options: tuple[Option, ...] | None

    @property
    def settable(self) -> list[str] | None:
        """The names of the options a user sets (`--head-opt`, `head_options=`), sorted; None: any."""
        return None if self.options is None else sorted(o.name for o in self.options if o.name != CLASS_COUNT)

    def takes(self, option: str) -> bool:
        """Whether the head declares `option` (a head that takes any declares none)."""
        return self.options is not None and any(o.name == option for o in self.options)

    def default(self, option: str):
        """The default of an option the head takes (REQUIRED where it has none)."""
        return next(o.default for o in self.options if o.name == option)

    def averages_positions(self, options: dict) -> bool:
        """Whether the head, with these options, reduces each feature tensor to its mean over
        positions anyway (`traits.averages_positions`), so that a cache may store those means."""
        if self.traits.averages_positions is None:
            return False
        option, value = self.traits.averages_positions
        return self.takes(option) and options.get(option, self.default(option)) == value

    def pools_to_grid2(self, options: dict) -> bool:
        """Whether the head, with these options, averages each feature tensor into a 2x2 grid of
        cells (`pooling=grid2`, `multilayer`'s `grid=2`): from a `grid2` cache it then reads the
        same cells as from the whole maps."""
        if self.traits.averages_positions is None:
            return False
        option, _ = self.traits.averages_positions
        return self.takes(option) and options.get(option, self.default(option)) in ("grid2", 2)

    def check_options(self, options) -> None:
        """Refuse, in one line, an option a user gave (`--head-opt`, `head_options=`) that the head
        does not take; `num_classes` is the data's, never the user's."""
        if CLASS_COUNT in options:
            raise TransferError(f"head {self.name!r}: {CLASS_COUNT} is set from the data's classes, not as a head "
                                f"option; valid options: {self.valid_options()}")
        if self.options is not None:
            self._check_names(options, self.settable)

    def build(self, **arguments):
        """A new head from these arguments (`num_classes` and options), each checked first."""
        if self.options is not None:
            self._check_names(arguments, [o.name for o in self.options])
            for option in self.options:
                if option.default is REQUIRED and option.name not in arguments:
                    raise TransferError(f"head {self.name!r} needs option {option.name!r}; "
                                        f"valid options: {self.valid_options()}")
        return self.factory(**arguments)

    @property
    def description(self) -> str:
        """The first line of the factory's docstring (what `transfer heads` shows)."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    def describe(self) -> dict:
        """The head as plain JSON data: name, description, traits and the options a user sets."""
        options = [{"name": o.name, "default": None if o.default is REQUIRED else _plain(o.default),
                    "required": o.default is REQUIRED, "accepts": o.accepts}
                   for o in self.options or () if o.name != CLASS_COUNT]
        return {"name": self.name, "description": self.description, "traits": dataclasses.asdict(self.traits),
                "options": options if self.options is not None else None}

    def valid_options(self) -> str:
        """The options a user may set, as an error lists them."""
        return "any" if self.options is None else ", ".join(self.settable)

    def _check_names(self, given, names) -> None:
        for option in given:
            if option not in names:
                close = difflib.get_close_matches(option, names, n=1)
                hint = f"; did you mean {close[0]!r}" if close else ""
                raise TransferError(f"head {self.name!r} has no option {option!r}{hint}; "
                                    f"valid options: {self.valid_options()}")


def register(name):
    """Class decorator: make a head available as `get(name, ...)`.

    A class registered for the first time gets `head_name = name` (its errors say which head);
    registering it again under an alias, as an entry point may, leaves that name alone.
    """

    def decorator(factory):
        old = _HEADS.get(name)
        if old is not None and _qualname(old) != _qualname(factory):
            raise TransferError(f"head name {name!r} is already registered to {_qualname(old)}")
        _HEADS[name] = factory
        if inspect.isclass(factory) and "head_name" not in vars(factory):
            factory.head_name = name
        return factory

    return decorator


def available(pattern="*"):
    """Sorted names of the registered and entry-point heads that match an fnmatch pattern."""
    names = set(_HEADS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(fnmatch.filter(names, pattern))


def get(name, **options):
    """A new head `name` built with `options` (`num_classes` among them); unknown names and
    options are one-line errors."""
    return kind_of(name).build(**options)


def kind_of(name) -> HeadKind:
    """The head behind a name, entry point or `module:attr` path, with its declared traits and
    options: what a training loop reads before it builds one."""
    factory = resolve(name)
    return HeadKind(name, factory, traits_of(factory), _options_of(factory))


def resolve(name):
    """The factory (usually a class) behind a head name, entry point or `module:attr` path."""
    if not isinstance(name, str):
        heads = ", ".join(available())
        raise TransferError(f"a head name is a string, got {name!r}; registered heads: {heads}")
    if name in _HEADS:
        return _HEADS[name]
    if ":" in name:
        return _import_path(name)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            return load_entry_point(entry_point)
    raise unknown_head(name, available())


def load_entry_point(entry_point):
    """Load a third-party head from its entry point and register it under the entry point's name."""
    try:
        factory = entry_point.load()
    except (ImportError, AttributeError) as error:
        raise TransferError(
            f"head {entry_point.name!r} (entry point {entry_point.value!r}) "
            f"cannot be loaded: {error}"
        ) from error
    _check_callable(entry_point.name, factory)
    return register(entry_point.name)(factory)


def _import_path(path):
    module_name, _, attribute = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise TransferError(f"head {path!r} cannot be imported: {error}") from error
    _check_callable(path, factory)
    return factory


def _check_callable(name, factory):
    if not callable(factory):
        kind = type(factory).__name__
        raise TransferError(f"head {name!r} is a {kind}, not a head class or factory")


def _options_of(factory) -> tuple[Option, ...] | None:
    """The options a head factory declares itself (`options`, on the class or function, not
    inherited: a subclass with other arguments declares its own); for one that declares none, its
    constructor's keyword parameters. None (any option) for a factory that takes **kwargs of its
    own; a Keras layer's **kwargs are the base Layer's (name, dtype, trainable), not head options."""
    declared = vars(factory).get("options") if hasattr(factory, "__dict__") else None
    if declared is not None:
        return tuple(declared)
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters) and not (
            inspect.isclass(factory) and issubclass(factory, keras.layers.Layer)):
        return None
    return tuple(Option(p.name, REQUIRED if p.default is p.empty else p.default)
                 for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _plain(value):
    """A default as JSON has it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _qualname(factory):
    return f"{factory.__module__}.{getattr(factory, '__qualname__', repr(factory))}"
