"""`BackboneSpec`: which graph, fed where and with what, cut where: made once, checked when made.

What `Backbone.load` takes, as one small frozen value (as `TrainingSettings` is for training):
`transfer.fit`, `sweep`, `open_inputs` and the CLI pass it down instead of half a dozen keywords,
and an extraction records it as plain data (`to_dict`) that another process loads again
(`from_dict`). Only cheap checks here and no TensorFlow: the graph is read by `load`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from transfer.errors import TransferError, check_keywords


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    path: str  # a .pb/.pbtxt, SavedModel directory, .keras/.h5 file, or `example:NAME`
    cut: str | tuple = "auto"  # a tensor or scope, `a,b`, `candidates`, or several (a tuple)
    signature: str | None = None  # a SavedModel's signature (default: serving_default)
    inputs: str | tuple | None = None  # the tensors to feed (default: the graph's inputs)
    feeds: dict | None = None  # other inputs' fixed values, {tensor: value}
    allow_ops: tuple = ()  # ops beyond the allowlist that this graph may run
    max_memory: str | int | None = None  # what one example's tensors may take at once ("16G")

    def __post_init__(self):
        if not isinstance(self.path, (str, Path)) or not str(self.path):
            raise TransferError(f"backbone={self.path!r} must be a path or example:NAME")
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "cut", _names("cut", self.cut, allow_none=False))
        object.__setattr__(self, "inputs", _names("inputs", self.inputs))
        if self.signature is not None and not isinstance(self.signature, str):
            raise TransferError(f"signature={self.signature!r} (--signature) must be a signature name")
        if self.feeds is not None and not isinstance(self.feeds, dict):
            raise TransferError(f"feeds={self.feeds!r} (--feed) must map tensor names to values")
        allow_ops = (self.allow_ops,) if isinstance(self.allow_ops, str) else tuple(self.allow_ops or ())
        if not all(isinstance(op, str) and op for op in allow_ops):
            raise TransferError(f"allow_ops={self.allow_ops!r} (--allow-op) must be op type names")
        object.__setattr__(self, "allow_ops", allow_ops)
        if self.max_memory is not None:
            from transfer.graph.memory import parse_size

            parse_size(self.max_memory)

    @classmethod
    def of(cls, spec: BackboneSpec | str | Path, **changes) -> BackboneSpec:
        """`spec` (or a path) with `changes`, checked; an unknown name is a one-line TransferError."""
        check_keywords("backbone spec", changes, FIELDS)
        if isinstance(spec, cls):
            return dataclasses.replace(spec, **changes)
        return cls(spec, **changes)

    @classmethod
    def of_backbone(cls, backbone) -> BackboneSpec:
        """What a loaded `Backbone` was made from: loading this gives the same backbone."""
        return cls(backbone.loaded.source, cut=tuple(cut.spec for cut in backbone.cuts),
                   signature=backbone.loaded.signature, inputs=backbone.requested_inputs,
                   feeds=backbone.feed_values or None, allow_ops=backbone.allow_ops, max_memory=backbone.max_memory)

    def load(self, loaded=None):
        """The `Backbone` this spec names (read, checked and cut); with `loaded`, a graph already
        read (a `.keras` file's embedded copy), cut as this spec says."""
        from transfer.graph.backbone import Backbone

        if loaded is None:
            return Backbone.load(self.path, cut=_listed(self.cut), inputs=_listed(self.inputs),
                                 signature=self.signature, allow_ops=self.allow_ops, feeds=self.feeds,
                                 max_memory=self.max_memory)
        return Backbone(loaded, cut=_listed(self.cut), inputs=_listed(self.inputs), allow_ops=self.allow_ops,
                        feeds=self.feeds, max_memory=self.max_memory)

    def to_dict(self) -> dict:
        """Plain JSON data (lists for tuples); `from_dict` makes the same spec again."""
        return {name: _listed(value) for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> BackboneSpec:
        check_keywords("backbone spec", values, FIELDS)
        return cls(**values)


FIELDS = tuple(field.name for field in dataclasses.fields(BackboneSpec))


def _names(what: str, value, allow_none: bool = True):
    """A name as it is, several as a tuple (hashable, frozen); anything else is refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise TransferError(f"{what}={value!r} (--{what}) must be a tensor name or a list of them")


def _listed(value):
    return list(value) if isinstance(value, tuple) else value
