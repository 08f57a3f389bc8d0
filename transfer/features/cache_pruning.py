"""Keeping the feature cache from only growing: when each entry was last used, and pruning.

Every extraction (a hit included) marks the entries it returns as used (the `.used` file's
time), so `transfer cache ls` can sort by last use and `transfer cache prune` removes the least
recently used first: down to a total size (`--max-size 10G`), or those unused for a while
(`--older-than 30d`). `TRANSFER_CACHE_MAX` (a size) applies the size cap after each extraction.

An entry in use is never removed: one being extracted (its lock is held by another process), one
the running command uses, or one used in the last `RECENT` seconds (another run may be reading
its shards). Only a local cache is pruned.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import time

from transfer.errors import TransferError
from transfer.features.storage import is_local
from transfer.graph.memory import parse_size

USED = ".used"  # an entry's last use: this file's modification time
CAP_VARIABLE = "TRANSFER_CACHE_MAX"  # a size: the cache is pruned to it after each extraction
RECENT = 600  # seconds: an entry used this recently may be being read by another run
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclasses.dataclass(frozen=True)
class Pruned:
    key: str
    bytes: int
    last_used: float


def mark_used(entries) -> None:
    """Record that these entries were used now (local entries; a remote cache keeps no times)."""
    for entry in entries:
        if is_local(entry.path) and entry.path.is_dir():
            (entry.path / USED).touch()


def last_used(entry) -> float:
    """When the entry was last used (seconds since the epoch): its `.used` mark, else when its
    manifest was written (entries made before the marks existed); 0 in a remote cache (no times)."""
    if not is_local(entry.path):
        return 0.0
    for name in (USED, "manifest.json"):
        try:
            return (entry.path / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def parse_age(text) -> float:
    """`30d`, `12h`, `2w`, `90m`, `45s` -> seconds."""
    match = _AGE.fullmatch(str(text))
    if match is None or float(match.group(1)) <= 0:
        raise TransferError(f"--older-than {text!r}: give an age such as 30d, 12h or 2w (s, m, h, d, w)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def prune(cache, max_bytes: int | None = None, older_than: float | None = None, keep=(), dry_run: bool = False,
          now: float | None = None) -> tuple[list[Pruned], list[str]]:
    """Remove the least recently used entries of `cache` (a `FeatureCache`) until the rest take
    at most `max_bytes`, and every entry unused for `older_than` seconds; never one in use (see
    the module's docstring) nor one whose key is in `keep`. Returns what was (with `dry_run`:
    would be) removed, oldest first, and the keys of the entries spared because in use."""
    if not cache.local:
        raise TransferError(f"cache {cache.root} is not on the local disk: pruning needs its entries' locks and "
                            "times; remove entries with `transfer cache rm`")
    now = time.time() if now is None else now
    entries = sorted(((last_used(entry), entry.size_bytes(), entry) for entry in cache.entries()),
                     key=lambda listed: listed[0])  # each entry's files read once
    total = sum(size for _, size, _ in entries)
    removed, spared = [], []
    for used, size, entry in entries:
        unused_for = now - used
        too_big = max_bytes is not None and total > max_bytes
        too_old = older_than is not None and unused_for > older_than
        if not (too_big or too_old):
            continue
        if entry.key in keep or unused_for < RECENT or _being_extracted(entry):
            spared.append(entry.key)
            continue
        if not dry_run:
            cache.remove(entry.key)
        removed.append(Pruned(entry.key, size, used))
        total -= size
    return removed, spared


def apply_cap(cache, keep) -> list[Pruned]:
    """After an extraction: prune to `TRANSFER_CACHE_MAX` if it is set, keeping `keep` (keys)."""
    cap = os.environ.get(CAP_VARIABLE)
    if not cap or not cache.local:
        return []
    return prune(cache, max_bytes=parse_size(cap, flag=CAP_VARIABLE), keep=set(keep))[0]


def _being_extracted(entry) -> bool:
    """Whether another process holds the entry's lock (`transfer.features.cache` takes it while it
    extracts into the entry)."""
    try:
        with open(entry.path / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False
