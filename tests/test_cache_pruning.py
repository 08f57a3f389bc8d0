"""A cache that does not only grow (issue 25, item 15): last use, `cache ls` by last use with the
total, `cache prune --max-size/--older-than`, the `TRANSFER_CACHE_MAX` cap, entries in use spared."""
from __future__ import annotations

import fcntl
import json
import os
import time

import pytest

from transfer.cli.main import main
from transfer.features.cache import FeatureCache
from transfer.features.cache_pruning import CAP_VARIABLE, USED, last_used, parse_age, prune
from transfer.features.inputs import open_inputs
from cli_checks import user_error

DATA = "digits:5-9?per_class=10"
HOUR = 3600.0


@pytest.fixture
def aged(tmp_path):
    """A cache of three entries (train, validation, test of one cut), last used 3 days, 2 days
    and 1 hour ago (their `.used` marks set back, as time would have)."""
    entries = open_inputs("example:digits", DATA, cut="block2_out").extract(tmp_path / "cache", progress=False)
    now = time.time()
    ages = {"train": 72 * HOUR, "validation": 48 * HOUR, "test": 1 * HOUR}
    for role, (entry,) in entries.items():
        os.utime(entry.path / USED, (now - ages[role], now - ages[role]))
    return FeatureCache(tmp_path / "cache"), {role: entry.key for role, (entry,) in entries.items()}


def test_every_extraction_marks_its_entries_used(tmp_path):
    inputs = open_inputs("example:digits", DATA, cut="block2_out")
    (entry,) = inputs.extract(tmp_path, progress=False)["train"]
    os.utime(entry.path / USED, (1.0, 1.0))
    assert last_used(entry) == 1.0
    inputs.extract(tmp_path, progress=False)  # a hit: nothing extracted, but used now
    assert time.time() - last_used(entry) < 60


def test_prune_to_a_size_removes_the_least_recently_used_first(aged):
    cache, keys = aged
    sizes = {entry.key: entry.size_bytes() for entry in cache.entries()}
    removed, spared = prune(cache, max_bytes=sizes[keys["test"]] + sizes[keys["validation"]], dry_run=True)
    assert [r.key for r in removed] == [keys["train"]] and not spared
    assert len(cache.entries()) == 3  # a dry run removes nothing
    removed, _ = prune(cache, max_bytes=sizes[keys["test"]])
    assert [r.key for r in removed] == [keys["train"], keys["validation"]]
    assert [entry.key for entry in cache.entries()] == [keys["test"]]


def test_prune_by_age_and_entries_in_use_are_spared(aged):
    cache, keys = aged
    entry = cache.open(keys["validation"])
    with open(entry.path / ".lock", "a") as held:  # as an extraction into it holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        removed, spared = prune(cache, older_than=parse_age("36h"))
    assert [r.key for r in removed] == [keys["train"]] and spared == [keys["validation"]]
    recently = time.time() - 100
    os.utime(entry.path / USED, (recently, recently))  # used 100 s ago: another run may be reading it
    removed, spared = prune(cache, older_than=1.0)
    assert [r.key for r in removed] == [keys["test"]] and spared == [keys["validation"]]


def test_the_size_cap_applies_after_each_extraction_and_keeps_what_it_extracted(aged, monkeypatch):
    cache, keys = aged
    monkeypatch.setenv(CAP_VARIABLE, "1K")  # less than any entry
    five_minutes_ago = time.time() - 300
    os.utime(cache.open(keys["test"]).path / USED, (five_minutes_ago, five_minutes_ago))
    entries = open_inputs("example:digits", DATA, cut="block1_out").extract(cache.root, progress=False)
    kept = {entry.key for entry in cache.entries()}
    # what this extraction returned is in use, the test entry was used 5 minutes ago (another run
    # may be reading it); the entries unused for days are removed
    assert kept == {entry.key for (entry,) in entries.values()} | {keys["test"]}


def test_cache_ls_sorts_by_last_use_and_gives_the_total(aged, capsys):
    cache, keys = aged
    assert main(["cache", "ls", "--cache-dir", str(cache.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["key"] for row in rows] == [keys["test"], keys["validation"], keys["train"]]
    assert {row["backbone"] for row in rows} == {"example:digits"} and rows[0]["data"] == "digits"
    assert main(["cache", "ls", "--cache-dir", str(cache.root)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:3] == ["key", "last", "used"] and printed[1].startswith(keys["test"])
    assert printed[-1].startswith("3 entries, 1.8 MiB in ")


def test_cache_prune_through_the_cli(aged, capsys):
    cache, keys = aged
    assert main(["cache", "prune", "--cache-dir", str(cache.root), "--older-than", "60h", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {keys['train']}" in out and "would remove 1 entries" in out and len(cache.entries()) == 3
    assert main(["cache", "prune", "--cache-dir", str(cache.root), "--older-than", "30h", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in done["removed"]] == [keys["train"], keys["validation"]] and not done["dry_run"]
    user_error(capsys, ["cache", "prune", "--cache-dir", str(cache.root)], r"give --max-size SIZE .* or --older-than")
    with pytest.raises(SystemExit):
        main(["cache", "prune", "--older-than", "3 months"])
    assert "give an age such as 30d" in capsys.readouterr().err
