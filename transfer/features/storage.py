"""Where the feature cache lives: a local directory (`pathlib.Path`), or any location that
`tf.io.gfile` reads and writes (`gs://bucket/cache` where TensorFlow's GCS support is present,
`hdfs://…`, TensorFlow's in-memory `ram://…`), as a `RemotePath`.

A `RemotePath` offers the part of pathlib's interface the cache uses, so the cache has one code
path for both; what differs is said here, once:

- local: `fcntl` locks per entry, files fsynced and renamed, shards memory-mapped when read;
- remote: no lock (gfile has none), files written under a temporary name and renamed (on object
  stores a rename is a copy, but an object appears only whole), shards read whole through gfile.

TensorFlow is imported on the first use of a remote path only: `transfer cache ls` on a local
directory answers without it.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import types
import uuid
from pathlib import Path

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def location(path) -> Path | RemotePath:
    """`path` as a `Path` (a local directory, `file://` included) or a `RemotePath` (another scheme)."""
    if isinstance(path, RemotePath):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return RemotePath(text) if _SCHEME.match(text) else Path(text)


def is_local(path) -> bool:
    return not isinstance(path, RemotePath)


class RemotePath:
    """A file or directory reached through `tf.io.gfile`, with the pathlib methods the cache uses."""

    def __init__(self, url: str):
        scheme, _, rest = url.partition("://")
        self._url = f"{scheme}://{rest.rstrip('/')}"

    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"RemotePath({self._url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __lt__(self, other) -> bool:
        return self._url < str(other)

    def __truediv__(self, name) -> RemotePath:
        return RemotePath(f"{self._url}/{name}")

    @property
    def name(self) -> str:
        return self._url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        head = self._url.rsplit("/", 1)[0]
        return RemotePath(head) if "://" in head else self

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    # -- queries ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        return _gfile("exists", self._url)

    def is_dir(self) -> bool:
        return _gfile("isdir", self._url)

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def iterdir(self) -> list[RemotePath]:
        return [self / name.rstrip("/") for name in _gfile("listdir", self._url)]

    def glob(self, pattern: str) -> list[RemotePath]:
        return [RemotePath(name) for name in _gfile("glob", f"{self._url}/{pattern}")]

    def stat(self):
        return types.SimpleNamespace(st_size=_gfile("stat", self._url).length)

    # -- reading and writing ---------------------------------------------------------------------

    def open(self, mode: str = "r"):
        return _gfile("GFile", self._url, mode)

    def read_bytes(self) -> bytes:
        with self.open("rb") as handle:
            return _call(handle.read)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        with self.open("wb") as handle:
            _call(handle.write, data)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if exist_ok and self.is_dir():
            return
        _gfile("makedirs" if parents else "mkdir", self._url)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            _gfile("remove", self._url)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def write_atomic(self, data: bytes) -> None:
        """Written under a temporary name (a random one: workers on other machines share the
        directory), then renamed over the final name."""
        temporary = self.with_name(f".{self.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            temporary.write_bytes(data)
            _gfile("rename", str(temporary), self._url, overwrite=True)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


def rmtree(path) -> None:
    if is_local(path):
        import shutil

        shutil.rmtree(path)
    else:
        _gfile("rmtree", str(path))


def load_array(path, mmap: bool = False):
    """A `.npy` file as an array: memory-mapped where local and asked for, else read whole."""
    import io

    import numpy as np

    if is_local(path):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)


def npy_problem(path, dtype: str, shape: tuple) -> str | None:
    """What is wrong with a `.npy` file as the array it must hold (numeric `dtype`, `shape`, C
    order, as the cache writes them), or None. Only the header is read (numpy's own readers,
    which parse a literal): nothing is unpickled, however the file was made."""
    import numpy as np

    try:
        found_shape, fortran_order, found_dtype = _npy_header(path) if is_local(path) else _call(_npy_header, path)
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, TypeError) as error:  # not .npy: a bad magic, a truncated or garbled header
        return f"has no valid .npy header ({' '.join(str(error).split())})"
    if found_dtype.hasobject:
        return f"holds Python objects (a pickle), not {dtype}"
    if found_dtype.kind not in "biuf" or found_dtype != np.dtype(dtype):
        return f"holds {found_dtype}, not {dtype}"
    if tuple(found_shape) != tuple(shape):
        return f"has shape {tuple(found_shape)}, not {tuple(shape)}"
    if fortran_order:
        return "is in Fortran order, not C order"
    return None


def _npy_header(path) -> tuple:
    """(shape, fortran_order, dtype) from a `.npy` file's header, by numpy's own readers."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with path.open("rb") as handle:
        version = npy.read_magic(handle)
        if version not in readers:
            raise ValueError(f"format version {version[0]}.{version[1]}, not 1.0 or 2.0")
        return readers[version](handle)


def _gfile(function: str, *args, **kwargs):
    """`tf.io.gfile.<function>(*args)`, its errors as OSError (what the cache's handlers expect)."""
    return _call(getattr(_tf_gfile(), function), *args, **kwargs)


def _call(function, *args, **kwargs):
    import tensorflow as tf

    try:
        return function(*args, **kwargs)
    except tf.errors.NotFoundError as error:
        raise FileNotFoundError(errno.ENOENT, error.message) from None
    except tf.errors.OpError as error:
        raise OSError(errno.EIO, error.message) from None


@functools.lru_cache(maxsize=None)
def _tf_gfile():
    from transfer._backend import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    return tf.io.gfile
