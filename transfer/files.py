"""Files that are whole or absent: written under a temporary name, fsynced, renamed."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

from transfer.errors import TransferError


def write_atomic(path: Path, data: bytes, full_disk_hint: str = "") -> str:
    """Write `data` to `path` so that a reader never sees half of it; return its SHA-256.
    `full_disk_hint` ends the error when the disk is full (what the user keeps, what to do).
    `path` may be a `transfer.features.storage.RemotePath` (a tf.io.gfile location): its own temporary
    name and rename, no fsync."""
    if not isinstance(path, Path):
        try:
            path.write_atomic(data)
        except OSError as error:
            raise TransferError(f"cannot write {path}: {error.strerror}") from None
        return hashlib.sha256(data).hexdigest()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if error.errno == errno.ENOSPC:
            raise TransferError(f"no space left on the device of {path.parent} while writing {path.name}"
                                + (f"; {full_disk_hint}" if full_disk_hint else "")) from None
        raise TransferError(f"cannot write {path}: {error.strerror}") from None
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def written_whole(path: Path):
    """A temporary path beside `path` for a writer that wants a file name (csv, matplotlib),
    renamed to `path` when the block ends well: a reader never sees half a file."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells matplotlib the format
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def update_with_file(digest, path: Path):
    """Feed a file's bytes to a hashlib digest in 1 MiB blocks (a large graph never sits in memory
    twice); return the digest. `path`: a path, or anything with pathlib's `open` (a RemotePath)."""
    with (path.open("rb") if hasattr(path, "open") else open(path, "rb")) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest
