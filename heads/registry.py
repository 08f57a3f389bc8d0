"""Head registry: names to head factories, so a CLI flag or a sweep list can name a head.

Plain dicts and a decorator, as in timm's `register_model`. A name that is not registered is
taken as an import path if it reads `module:attribute`, else looked up among the entry points
of the group `transfer.heads` (third-party packages; loaded only on a miss, so importing the
registry stays cheap). Every user mistake is one `TransferError` line that names the
bad value and lists the valid ones.
"""
import difflib
import fnmatch
import importlib
import inspect
from importlib.metadata import entry_points

import keras

from transfer.errors import TransferError

ENTRY_POINT_GROUP = "transfer.heads"
_LAYER_OPTIONS = ("dtype", "name", "trainable")  # what keras.layers.Layer takes through **kwargs
_HEADS = {}


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
    """A new head `name` built with `options`; unknown names and options are one-line errors."""
    factory = resolve(name)
    _check_options(name, factory, options)
    return factory(**options)


def resolve(name):
    """The factory (usually a class) behind a head name, entry point or `module:attr` path.

    A training loop can look at `resolve(name).is_keras` before building anything.
    """
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
    names = available()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}" if close else ""
    raise TransferError(
        f"unknown head {name!r}{hint}; registered heads: {', '.join(names)} "
        f"(or give an import path 'module:Class')"
    )


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


def _check_options(name, factory, options):
    parameters = inspect.signature(factory).parameters.values()
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        if not (inspect.isclass(factory) and issubclass(factory, keras.layers.Layer)):
            return  # a factory taking **kwargs: nothing to check against
        named += _LAYER_OPTIONS
    valid = ", ".join(sorted(named))
    for option in options:
        if option not in named:
            close = difflib.get_close_matches(option, named, n=1)
            hint = f"; did you mean {close[0]!r}" if close else ""
            raise TransferError(
                f"head {name!r} has no option {option!r}{hint}; valid options: {valid}"
            )
    for p in parameters:
        if p.name in named and p.default is p.empty and p.name not in options:
            raise TransferError(f"head {name!r} needs option {p.name!r}; valid options: {valid}")


def _qualname(factory):
    return f"{factory.__module__}.{getattr(factory, '__qualname__', repr(factory))}"
