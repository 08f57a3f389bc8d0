"""A sweep's journal: each finished trial on disk as it finishes, so that a killed sweep resumes.

`trials.jsonl` in the sweep's partial directory (`OUT.partial`): its first line is the sweep's
definition (what decides its results: backbone, cuts, data, preprocessing, the settings, seed,
repeats ...) with its fingerprint, then one line per finished trial (its setting, seed and
metrics), flushed and fsynced before the next trial starts. A kill can tear only the last line:
it is ignored, and cut off before the next line is appended. Rerun with the same definition, a
sweep takes the journal's trials as they are and trains the others; a journal of another
definition is refused rather than mixed in (its trials were not trained on the same terms).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from transfer.errors import TransferError
from transfer.files import write_atomic

JOURNAL = "trials.jsonl"


class TrialJournal:
    """The journal in `directory` of the sweep that `definition` (JSON-able) describes: opened to
    resume when it holds trials of that sweep, else started afresh."""

    def __init__(self, directory, definition: dict):
        self.path = Path(directory) / JOURNAL
        self.definition = json.loads(_text(definition))  # as the journal gives it back
        self.fingerprint = _fingerprint(definition)
        header, self.trials, end = _read(self.path)
        _check_same_sweep(self.path.parent, header, self.trials, definition)
        if self.trials:
            os.truncate(self.path, end)  # a torn last line goes: the next line starts on its own
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, (_text({"fingerprint": self.fingerprint, "definition": self.definition})
                                     + "\n").encode())

    def get(self, setting: dict, seed: int) -> dict | None:
        """The metrics of the finished trial of `setting` with `seed`, or None."""
        return self.trials.get(_trial_key(setting, seed), {}).get("metrics")

    def record(self, trial: str, setting: dict, seed: int, metrics: dict) -> None:
        """A finished trial (`trial`: its name in the sweep, e.g. `003-seed1`), on disk when this returns."""
        key = _trial_key(setting, seed)
        line = {"key": key, "trial": trial, "setting": setting, "seed": seed, "metrics": metrics}
        with open(self.path, "a") as handle:
            handle.write(_text(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.trials[key] = json.loads(_text(line))


def check_resumable(directory, definition: dict) -> int:
    """How many finished trials of this sweep the journal in `directory` holds (0: none, or no
    journal); a TransferError when they belong to a sweep of another definition."""
    header, trials, _ = _read(Path(directory) / JOURNAL)
    _check_same_sweep(directory, header, trials, definition)
    return len(trials)


def _check_same_sweep(directory, header: dict, trials: dict, definition: dict) -> None:
    """A TransferError when a journal's finished `trials` belong to a sweep of another definition."""
    if not trials or header.get("fingerprint") == _fingerprint(definition):
        return
    theirs, ours = header.get("definition") or {}, json.loads(_text(definition))
    differing = [key for key in ours if theirs.get(key) != ours[key]] or ["definition"]
    raise TransferError(f"{str(directory)!r} holds an unfinished sweep of another {', '.join(differing)} "
                        f"({len(trials)} trial(s) done): remove it to start this sweep, or choose another --out")


def finished_trials(directory) -> int:
    """The finished trials in `directory`'s journal (a partial run directory worth keeping if any)."""
    return len(_read(Path(directory) / JOURNAL)[1])


def _read(path: Path) -> tuple[dict, dict, int]:
    """(header, {key: trial}, the byte offset after the last whole line); a line that does not
    parse (torn by a kill) ends the journal."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}, {}, 0
    header, trials, end = {}, {}, 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or (header and not isinstance(record.get("key"), str)):
            break
        if header:
            trials[record["key"]] = record
        else:
            header = record
        end += len(line)
    return header, trials, end


def _fingerprint(definition: dict) -> str:
    return hashlib.sha256(_text(definition).encode()).hexdigest()


def _trial_key(setting: dict, seed: int) -> str:
    return hashlib.sha256(_text({"setting": setting, "seed": seed}).encode()).hexdigest()[:16]


def _text(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
