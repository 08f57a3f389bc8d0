"""Data spec strings (`digits:5-9?per_class=10`, `folder:PATH`, `photos/`) read without TensorFlow.

`transfer.datasets.load` opens the source a spec names; the CLI reads the same spec first, before
TensorFlow loads (~8 s), so that a data path that does not exist or an unknown scheme is said at
once. One grammar, here, for both.
"""
from __future__ import annotations

import os

from transfer.errors import TransferError

SCHEMES = ("folder:PATH", "npz:FILE", "tfds:NAME[:SPLIT]", "digits[:CLASSES]")
LOADED = ("folder", "npz", "tfds", "digits")  # the schemes `transfer.datasets` opens
OPTIONS = ("per_class",)


def split_options(spec: str) -> tuple[str, dict]:
    """Split 'BODY?key=value&...' into BODY and its options (only `per_class` is known)."""
    body, mark, query = spec.rpartition("?")
    if not mark or "=" not in query:
        return spec, {}
    options = {}
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key not in OPTIONS:
            raise TransferError(f"unknown option {key!r} in {spec!r}; valid: {', '.join(OPTIONS)}")
        if not value.isdigit() or int(value) < 1:
            raise TransferError(f"{key}={value!r} in {spec!r} must be a positive integer")
        options[key] = int(value)
    return body, options


def source_of(spec: str) -> tuple[str, str]:
    """(scheme, rest) of a spec without options: a path that exists is a folder or an .npz file;
    a path that does not, an unknown scheme or a scheme with nothing after its colon is one line."""
    scheme, colon, rest = spec.partition(":")
    if os.path.exists(spec) or not colon and spec != "digits":
        if not os.path.exists(spec):
            raise TransferError(f"data directory {spec!r} does not exist (valid specs: "
                                f"{', '.join(SCHEMES)}, or a folder or .npz path)")
        return ("npz" if spec.endswith(".npz") else "folder"), spec
    if scheme not in LOADED:
        raise TransferError(f"unknown data scheme {scheme!r} in {spec!r}; valid: "
                            f"{', '.join(SCHEMES)}, or a folder or .npz path")
    if not rest and scheme != "digits":
        raise TransferError(f"{spec!r} names nothing after the colon; valid: {', '.join(SCHEMES)}")
    return scheme, rest


def check_spec(spec: str) -> None:
    """What can be said of a data spec string before anything is read (the CLI's early check).
    A `folder:`/`npz:` path that does not exist is said here too (the loaders say it later)."""
    scheme, rest = source_of(split_options(spec)[0])
    path = os.path.expanduser(rest)
    if scheme in ("folder", "npz") and not os.path.exists(path):
        kind = "data directory" if scheme == "folder" else "npz file"
        raise TransferError(f"{kind} {path!r} does not exist")
