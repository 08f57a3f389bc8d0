"""The feature cache: keys, format, resume after kill -9, checksums, locking, bad input."""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from transfer.features import cache as cache_module
from transfer.features.cache import FeatureCache
from transfer.cli.main import main
from cli_checks import user_error
from transfer.errors import TransferError
from transfer.features.inputs import open_inputs

from graphs import feature_model

DATA = "digits:5-9?per_class=10"


def extract(cache_dir, cut="block2_out", data=DATA, dtype="float32", shard_size=None, **options):
    inputs = open_inputs("example:digits", data, cut=cut, **options)
    entries = inputs.extract(cache_dir, dtype=dtype, shard_size=shard_size, progress=False)
    return inputs, {role: listed[0] for role, listed in entries.items()}  # one cut: one entry per split


def test_extract_writes_features_equal_to_the_backbone_and_labels(tmp_path):
    inputs, entries = extract(tmp_path, shard_size=64)
    assert set(entries) == {"train", "validation", "test"}
    test = entries["test"]
    assert test.complete and test.count == inputs.splits.sizes["test"] and test.feature_shapes == [(4, 4, 32)]
    assert len(test.manifest["shards"]) == -(-test.count // 64)  # ceil: shards of 64 examples
    features, labels = test.arrays()
    images = np.stack([x for x, _ in inputs.splits.test.take(70)])
    expected = feature_model(inputs).predict(images, verbose=0)
    np.testing.assert_allclose(features[:70], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels[:70], [y for _, y in inputs.splits.test.take(70).as_numpy_iterator()])
    streamed = np.concatenate([f for f, _ in test.dataset(chunk=50).batch(100).as_numpy_iterator()])
    np.testing.assert_array_equal(streamed, features)


def test_second_extraction_reuses_the_entries(tmp_path):
    _, first = extract(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")}
    _, again = extract(tmp_path)
    assert {r: e.key for r, e in again.items()} == {r: e.key for r, e in first.items()}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")} == stamps


def test_every_ingredient_changes_the_key(tmp_path, tiny):
    def key(**options):
        return extract(tmp_path / "keys", **options)[1]["train"].key

    base = key()
    assert key() == base
    changed = {
        "cut": key(cut="block1_out"),
        "preprocessing": key(scale="0..1"),
        "data": key(data="digits:5-9?per_class=12"),
        "split seed": key(seed=1),
        "dtype": key(dtype="float16"),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed


def test_changed_backbone_file_is_a_new_entry(tmp_path):
    from transfer.graph.loading import EXAMPLES_DIR

    copy = tmp_path / "digits.pb"
    shutil.copy(EXAMPLES_DIR / "digits.pb", copy)
    one = open_inputs(copy, DATA, cut="block2_out").extract(tmp_path / "c", progress=False)
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(copy.read_bytes())
    graph_def.node.add(name="unused", op="NoOp")  # same features, other bytes: another fingerprint
    copy.write_bytes(graph_def.SerializeToString())
    two = open_inputs(copy, DATA, cut="block2_out").extract(tmp_path / "c", progress=False)
    assert one["train"][0].key != two["train"][0].key


def test_float16_storage_halves_the_disk_and_stays_close(tmp_path):
    _, full = extract(tmp_path / "f32", cut="resnet_features")
    _, half = extract(tmp_path / "f16", cut="resnet_features", dtype="float16")
    assert full["test"].feature_shapes == [(32,)]  # 2-D features too
    assert np.load(half["test"].path / half["test"].manifest["shards"][0]["features"]).dtype == np.float16
    assert half["test"].size_bytes() < 0.6 * full["test"].size_bytes()
    np.testing.assert_allclose(half["test"].arrays()[0], full["test"].arrays()[0], rtol=2e-3, atol=2e-3)


def test_corrupt_shard_is_found_by_verify_and_extracted_again(tmp_path, capsys):
    _, entries = extract(tmp_path, shard_size=100)  # 96: shards hold whole batches of 32
    test = entries["test"]
    assert [s["count"] for s in test.manifest["shards"]][:2] == [96, 96]
    shard = test.path / test.manifest["shards"][2]["features"]
    original = shard.read_bytes()
    shard.write_bytes(original[:-8] + b"\x00" * 8)
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 3  # corrupt: neither a bug nor a user error
    captured = capsys.readouterr()
    assert f"entry {test.key}: corrupt or missing shard(s) [2]" in captured.err and "CORRUPT [2]" in captured.out
    _, repaired = extract(tmp_path, shard_size=100)  # recomputed from the same batches: the same bytes
    assert shard.read_bytes() == original and repaired["test"].bad_shards() == []
    (test.path / test.manifest["shards"][0]["labels"]).unlink()
    assert FeatureCache(tmp_path).open(test.key).bad_shards() == [0]


class _Canary:
    """Unpickling this object creates the file `path`: whether a pickle was loaded shows on disk."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _poisoned(entry, how: str, canary) -> tuple:
    """Shard 0 of `entry` replaced by a file that is not the array its manifest says, the
    manifest's checksum updated to match (only the header can tell); (path, original bytes)."""
    shard = entry.manifest["shards"][0]
    key = "labels" if how == "int64 labels" else "features"
    path = entry.path / shard[key]
    original = path.read_bytes()
    array = np.load(path)
    if how == "pickle":
        objects = np.empty(len(array), dtype=object)
        objects[:] = [_Canary(canary) for _ in range(len(array))]
        np.save(path, objects, allow_pickle=True)
    elif how == "truncated header":
        path.write_bytes(original[:30])
    else:
        changed = {"float64": lambda a: a.astype("float64"), "int64 labels": lambda a: a.astype("int64"),
                   "shape": lambda a: a[:-1], "fortran order": np.asfortranarray}[how](array)
        np.save(path, changed, allow_pickle=False)
    shard[f"{key}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (entry.path / "manifest.json").write_text(json.dumps(entry.manifest))
    assert path.read_bytes() != original
    return path, original


@pytest.mark.parametrize("how,problem", [
    ("pickle", "holds Python objects (a pickle), not float32"),
    ("float64", "holds float64, not float32"),
    ("int64 labels", "holds int64, not int32"),
    ("shape", "has shape (49, 4, 4, 32), not (50, 4, 4, 32)"),
    ("truncated header", "has no valid .npy header"),
    ("fortran order", "is in Fortran order, not C order"),
])
def test_a_shard_that_is_not_the_array_its_manifest_says_is_corrupt(tmp_path, capsys, how, problem):
    """Checksum intact, header wrong: `cache verify` says corrupt, a load is one line before tf.data
    reads anything, an extraction repairs it, and nothing is ever unpickled."""
    canary = tmp_path / "unpickled"
    _, entries = extract(tmp_path / "cache")
    train = entries["train"]
    path, original = _poisoned(train, how, canary)
    assert main(["cache", "verify", "--cache-dir", str(tmp_path / "cache")]) == 3
    printed = capsys.readouterr()
    assert f"entry {train.key}: corrupt or missing shard(s) [0] ({path.name} {problem}" in printed.err
    assert "CORRUPT [0]" in printed.out
    opened = FeatureCache(tmp_path / "cache").open(train.key)
    for load in (opened.dataset, opened.arrays):
        with pytest.raises(TransferError) as error:
            load()
        message = str(error.value)
        assert message.startswith(f"cache shard {path} {problem}") and "the entry is corrupt" in message
        assert "\n" not in message
    _, repaired = extract(tmp_path / "cache")
    assert path.read_bytes() == original and repaired["train"].bad_shards() == []
    assert not canary.exists()


def test_fit_from_a_cache_with_a_pickled_shard_extracts_it_again(tmp_path, capsys):
    canary = tmp_path / "unpickled"
    _, entries = extract(tmp_path / "cache")
    path, original = _poisoned(entries["train"], "pickle", canary)
    code = main(["fit", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA, "--epochs", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--export", "none"])
    printed = capsys.readouterr()
    assert code == 0 and "Traceback" not in printed.err, printed.err
    assert path.read_bytes() == original and not canary.exists()
    assert json.loads((tmp_path / "run/metrics.json").read_text())["validation"]["accuracy"] is not None


EXTRACT_ALL_DIGITS = ["-m", "transfer.cli", "extract", "--backbone", "example:digits", "--cut", "block1_out",
                      "--data", "digits", "--validation-split", "0", "--batch-size", "1", "--shard-size", "100",
                      "--json"]


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_same_result(tmp_path):
    """A real `kill -9` in the middle of a real extraction, then a second run."""
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen([sys.executable, *EXTRACT_ALL_DIGITS, "--cache-dir", str(killed_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        manifests = list(killed_dir.glob("*/manifest.json"))
        if manifests and len(_read_json(manifests[0]).get("shards", [])) >= 2:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (manifest,) = killed_dir.glob("*/manifest.json")
    partial = _read_json(manifest)
    assert not partial["complete"] and 2 <= len(partial["shards"]) < 18, "the kill must land mid-extraction"
    finished_before = [s["features_sha256"] for s in partial["shards"]]
    for cache_dir in (killed_dir, clean_dir):
        done = subprocess.run([sys.executable, *EXTRACT_ALL_DIGITS, "--cache-dir", str(cache_dir)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-1000:]
    resumed, clean = _read_json(manifest), _read_json(clean_dir / manifest.parent.name / "manifest.json")
    assert resumed["complete"]
    assert [s["features_sha256"] for s in resumed["shards"]][:len(finished_before)] == finished_before
    assert [(s["features_sha256"], s["labels_sha256"]) for s in resumed["shards"]] == \
        [(s["features_sha256"], s["labels_sha256"]) for s in clean["shards"]]
    assert sum(s["count"] for s in resumed["shards"]) == 1797


@pytest.mark.slow
def test_two_processes_extracting_into_one_cache(tmp_path):
    runs = [subprocess.Popen([sys.executable, *EXTRACT_ALL_DIGITS[:-5], "--shard-size", "300", "--json",
                              "--cache-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-800:] for _, err in outputs]
    listed = [json.loads(out) for out, _ in outputs]
    assert listed[0] == listed[1] and listed[0][0]["examples"] == 1797 and listed[0][0]["complete"]
    (entry,) = FeatureCache(tmp_path).entries()
    assert entry.bad_shards() == [] and not list(entry.path.glob(".*.tmp"))


def _read_json(path):
    return json.loads(path.read_text())


# -- bad input: one line, exit 2, nothing already cached lost ---------------------------------------



def test_unwritable_cache_directory(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    err = user_error(capsys, ["extract", "--backbone", "example:digits", "--data", DATA,
                             "--cache-dir", str(blocker / "cache")])
    assert f"cache directory '{blocker / 'cache'}' is not writable" in err


def test_full_disk_keeps_the_finished_shards(capsys, tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync_until_full(fd):
        calls.append(fd)
        if len(calls) > 6:  # three shards (features, labels, manifest each) fit; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(cache_module.os, "fsync", fsync_until_full)
    err = user_error(capsys, ["extract", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA,
                             "--shard-size", "20", "--batch-size", "10", "--cache-dir", str(tmp_path)])
    assert "no space left on the device" in err and "shards already finished are kept" in err
    (entry,) = FeatureCache(tmp_path).entries()
    assert len(entry.manifest["shards"]) == 2 and entry.bad_shards() == [] and not entry.complete
    assert not list(entry.path.glob(".*.tmp"))
    monkeypatch.setattr(cache_module.os, "fsync", real_fsync)
    _, entries = extract(tmp_path, shard_size=20, batch_size=10)
    assert entries["train"].complete and entries["train"].count == 50


def test_corrupt_manifest(capsys, tmp_path):
    _, entries = extract(tmp_path)
    entry = entries["train"]
    (entry.path / "manifest.json").write_text("{ not json")
    err = user_error(capsys, ["cache", "ls", "--cache-dir", str(tmp_path)])
    assert f"cache manifest {entry.path / 'manifest.json'} is corrupt" in err
    assert f"transfer cache rm {entry.key}" in err
    assert list(entry.path.glob("features-*.npy")), "shards are kept"


@pytest.mark.parametrize("field,value,problem", [
    ("count", "lots", "shard 0's 'count' is 'lots', not a count"),
    ("labels", "../../elsewhere.npy", "shard 0 names no labels file, or a file outside the entry"),
    ("shards", {"0": 1}, "'shards' is not a list"),
    ("dtype", "object", "'dtype' is 'object', not one of float32, float16"),
])
def test_a_manifest_field_of_the_wrong_type_is_one_line(capsys, tmp_path, field, value, problem):
    _, entries = extract(tmp_path)
    path = entries["train"].path / "manifest.json"
    manifest = _read_json(path)
    if field in ("shards", "dtype"):
        manifest[field] = value
    else:
        manifest["shards"][0][field] = value
    path.write_text(json.dumps(manifest))
    assert problem in user_error(capsys, ["cache", "verify", "--cache-dir", str(tmp_path)])


def test_temporary_files_of_a_dead_extraction_are_removed_on_the_next_run(tmp_path):
    _, entries = extract(tmp_path)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = int(finished.stdout)  # a process that has ended
    stale = entries["train"].path / f".features-00009.npy.{dead}.tmp"
    live = entries["train"].path / f".manifest.json.{os.getpid()}.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    extract(tmp_path)
    assert not stale.exists() and live.exists()


def test_entry_that_belongs_to_another_backbone(capsys, tmp_path):
    _, entries = extract(tmp_path)
    entry = entries["train"]
    manifest = _read_json(entry.path / "manifest.json")
    manifest["backbone_fingerprint"] = "0" * 64
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    err = user_error(capsys, ["extract", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA,
                             "--cache-dir", str(tmp_path)])
    assert f"cache entry {entry.key} belongs to backbone fingerprint 000000000000" in err
    moved = tmp_path / ("f" * 32)
    shutil.copytree(entries["test"].path, moved)
    err = user_error(capsys, ["cache", "ls", "--cache-dir", str(tmp_path), "f" * 32])
    assert f"holds the manifest of entry '{entries['test'].key}'" in err


def test_cache_ls_and_rm(capsys, tmp_path):
    _, entries = extract(tmp_path)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {row["key"] for row in listed} == {e.key for e in entries.values()}
    assert {row["role"]: row["examples"] for row in listed} == {"train": 50, "validation": 179, "test": 667}
    assert main(["cache", "rm", "--cache-dir", str(tmp_path), entries["train"].key]) == 0
    assert not entries["train"].path.exists() and entries["test"].path.exists()
    assert "no cache entry 'nope'" in user_error(capsys, ["cache", "rm", "--cache-dir", str(tmp_path), "nope"])
    assert "or --all to remove every entry" in user_error(capsys, ["cache", "rm", "--cache-dir", str(tmp_path)])
    assert entries["test"].path.exists()
    assert main(["cache", "rm", "--cache-dir", str(tmp_path), "--all"]) == 0
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("scale", ["none", "-1..1", "0..1"])
def test_extraction_computes_the_feature_model_features(scale):
    """Extraction runs the preprocessing and the pruned function without a Keras model; the
    features are the Keras feature model's, bit for bit, except where grappler, seeing both in one
    graph, folds the scale (x * (1 / 255)) straight into the first conv's weights: ~2 ulp."""
    inputs = open_inputs("example:digits", DATA, cut="block2_out", scale=scale)
    images, _ = next(iter(inputs.batches.evaluation("test")))
    features, expected = np.asarray(inputs.feature_batch(images)), feature_model(inputs).predict_on_batch(images)
    if scale == "0..1":
        np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(features, expected)


# -- several cuts: one pass, one entry per cut ------------------------------------------------------


def test_several_cuts_are_one_pass_with_one_entry_per_cut(tmp_path):
    """The entries of a multi-cut extraction are the single-cut entries (same keys), with the same
    features; a cut added later is the only one extracted."""
    inputs, _ = extract(tmp_path / "single", cut="block1_out")
    _, single2 = extract(tmp_path / "single", cut="block2_out")
    single1 = {role: listed[0] for role, listed in inputs.extract(tmp_path / "single", progress=False).items()}
    both = open_inputs("example:digits", DATA, cut="block1_out,block2_out")
    several = both.extract(tmp_path / "both", progress=False)
    for role, (first, second) in several.items():
        assert (first.key, second.key) == (single1[role].key, single2[role].key)
        assert first.output == single1[role].output and first.feature_shapes == [(8, 8, 16)]
        np.testing.assert_allclose(first.arrays()[0], single1[role].arrays()[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(second.arrays()[0], single2[role].arrays()[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(first.arrays()[1], second.arrays()[1])
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "both").rglob("*.npy")}
    three = open_inputs("example:digits", DATA, cut="block1_out,block2_out,resnet_features")
    added = three.extract(tmp_path / "both", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "both").rglob("*.npy") if p in stamps} == stamps
    assert [entry.feature_shapes for entry in added["test"]] == [[(8, 8, 16)], [(4, 4, 32)], [(32,)]]
    features = three.cached_features(tmp_path / "both", progress=False)
    assert features.feature_shapes == [(8, 8, 16), (4, 4, 32), (32,)]
    (block1, block2, pooled), labels = next(iter(features.test.batch(5)))
    assert block1.shape == (5, 8, 8, 16) and pooled.shape == (5, 32) and labels.shape == (5,)
    by_cut = three.cached_features_by_cut(tmp_path / "both", progress=False)
    assert list(by_cut) == ["block1_out", "block2_out", "resnet_features"]
    assert by_cut["block2_out"].feature_shapes == [(4, 4, 32)]


def test_pooled_extraction_stores_a_vector_per_cut(tmp_path, capsys):
    inputs = open_inputs("example:digits", DATA, cut="block1_out,block2_out")
    pooled = inputs.extract(tmp_path, pool="avg", progress=False)
    full = inputs.extract(tmp_path, progress=False)
    for listed_pooled, listed_full in zip(pooled["test"], full["test"]):
        assert listed_pooled.key != listed_full.key
        assert listed_pooled.feature_shapes[0] == listed_full.feature_shapes[0][-1:]
        np.testing.assert_allclose(listed_pooled.arrays()[0], listed_full.arrays()[0].mean(axis=(1, 2)), rtol=1e-5,
                                   atol=1e-6)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    cuts = [cut.name for cut in inputs.backbone.cuts]
    assert len(rows) == 12 and sorted({(row["cut"], row["pool"]) for row in rows}) == sorted(
        (cut, pool) for cut in cuts for pool in ("avg", "none"))
    with pytest.raises(TransferError, match=r"pool='mean' \(--pool\) must be one of"):
        inputs.extract(tmp_path, pool="mean")


def test_a_resumed_entry_keeps_its_extraction_batch(tmp_path):
    """Completed with another --batch-size, an entry's shards are still computed from the batches it
    was started with: the same bytes as an uninterrupted extraction."""
    _, whole = extract(tmp_path / "whole", shard_size=20, batch_size=10)
    _, cut_short = extract(tmp_path / "resumed", shard_size=20, batch_size=10)
    entry = cut_short["test"]
    manifest = _read_json(entry.path / "manifest.json")
    manifest["shards"], manifest["complete"] = manifest["shards"][:3], False  # as if killed after 3 shards
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    _, resumed = extract(tmp_path / "resumed", shard_size=64, batch_size=32)
    assert resumed["test"].manifest["batch_size"] == 10 and resumed["test"].manifest["shard_size"] == 20
    assert [s["features_sha256"] for s in resumed["test"].manifest["shards"]] == \
        [s["features_sha256"] for s in whole["test"].manifest["shards"]]


def test_a_pass_over_many_cuts_holds_a_bounded_buffer(tmp_path, monkeypatch):
    """Shards shrink so that every output's unwritten features of a pass stay within PASS_BYTES:
    block1_out (4096 bytes an example) and block2_out (2048) with room for 64 examples of both."""
    monkeypatch.setattr(cache_module, "PASS_BYTES", 64 * (4096 + 2048))
    entries = open_inputs("example:digits", DATA, cut="block1_out,block2_out").extract(tmp_path, progress=False)
    assert {entry.manifest["shard_size"] for listed in entries.values() for entry in listed} == {64}
    monkeypatch.undo()
    _, alone = extract(tmp_path / "alone", cut="block1_out")
    assert alone["test"].manifest["shard_size"] == 2**26 // 4096  # one cut: ~64 MiB shards, as before
