"""Features on disk, extracted once: sharded `.npy` files plus a JSON manifest per entry.

An entry holds one split's features and labels; the features can be several tensors per
example (a thawed suffix's inputs), stored as one `.npy` file each per shard. Its key is a
fingerprint of everything that decides the features (graph bytes, cut, inputs, preprocessing,
the data's identity and split, the stored dtype, the engine), so a changed ingredient is a new
entry, never stale features.

Crash safety: every file is written under a temporary name and renamed; the manifest lists
only finished shards, each with a SHA-256, so a killed extraction resumes after its last
finished shard, and a corrupt shard is found by its checksum and extracted again. An
exclusive lock per entry lets two processes share one cache directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transfer.errors import TransferError, check_choice
from transfer.files import update_with_file, write_atomic

if TYPE_CHECKING:
    import tensorflow as tf

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16")
SHARD_BYTES = 64 * 2**20  # ~64 MiB of features per shard: streamable, cheap to re-extract
ROLES = ("train", "validation", "test")


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRANSFER_CACHE") or Path.home() / ".cache" / "transfer")


def entry_key(ingredients: dict) -> str:
    """A stable fingerprint of the ingredients (JSON with sorted keys)."""
    text = json.dumps({"format": FORMAT_VERSION, **ingredients}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def ingredients(backbone, input_kind, identity: dict, role: str, dtype: str, engine: str = "tf") -> dict:
    """What decides the features of one split: the key is made from exactly this (the engine
    only when it is not TensorFlow, so that older keys stay valid)."""
    return {
        **({"engine": engine} if engine != "tf" else {}),
        "backbone": {"fingerprint": backbone.fingerprint, "signature": backbone.loaded.signature,
                     "inputs": [t.name for t in backbone.inputs],
                     "cut": [c.name for c in backbone.cuts] if backbone.multi_cut else backbone.cuts[0].name,
                     **({"feeds": backbone.feed_values} if backbone.feeds else {})},  # old keys stay valid
        "input": input_kind.recipe(),  # the preprocessing of images; arrays go in as they are
        "data": identity,
        "role": role,
        "dtype": dtype,
    }


@dataclasses.dataclass
class Entry:
    """One cached split: `manifest` is what `manifest.json` says."""

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return self.manifest.get("complete", False)

    @property
    def count(self) -> int:
        return sum(shard["count"] for shard in self.manifest["shards"])

    @property
    def feature_shape(self) -> tuple:
        """One example's feature shape; a list of shapes when each example holds several tensors."""
        shapes = self.feature_shapes
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def feature_shapes(self) -> list[tuple]:
        return [tuple(shape) for shape in self.manifest.get("feature_shapes") or [self.manifest["feature_shape"]]]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("*.npy"))

    def bad_shards(self) -> list[int]:
        """Indices of shards whose files are missing or whose checksums do not match."""
        return [i for i, shard in enumerate(self.manifest["shards"])
                if any(_sha256_file(self.path / shard[name]) != shard[f"{name}_sha256"]
                       for name in (*_feature_keys(len(self.feature_shapes)), "labels"))]

    def arrays(self) -> tuple:
        """All features and labels in memory (for the scikit-learn probe and small data); the
        features are a tuple of arrays when each example holds several tensors."""
        keys = _feature_keys(len(self.feature_shapes))
        shards = self.manifest["shards"]
        features = tuple(np.concatenate([np.load(self.path / s[key]) for s in shards]).astype("float32") if shards
                         else np.zeros((0, *shape), "float32") for key, shape in zip(keys, self.feature_shapes))
        labels = (np.concatenate([np.load(self.path / s["labels"]) for s in shards]) if shards
                  else np.zeros((0,), "int32"))
        return (features[0] if len(keys) == 1 else features), labels

    def dataset(self, chunk: int = 1024) -> tf.data.Dataset:
        """Unbatched (features float32, label int32), streamed shard by shard from memory maps:
        a cache larger than memory trains without being loaded."""
        import tensorflow as tf  # here only: `transfer cache ls` answers without TensorFlow
        keys = _feature_keys(len(self.feature_shapes))
        shards = [([str(self.path / s[key]) for key in keys], str(self.path / s["labels"]))
                  for s in self.manifest["shards"]]

        def chunks():
            for feature_files, labels_file in shards:
                features = [np.load(name, mmap_mode="r") for name in feature_files]
                labels = np.load(labels_file, mmap_mode="r")
                for start in range(0, len(labels), chunk):
                    parts = tuple(np.asarray(f[start:start + chunk], "float32") for f in features)
                    yield (parts[0] if len(parts) == 1 else parts), np.asarray(labels[start:start + chunk], "int32")

        specs = tuple(tf.TensorSpec((None, *shape), tf.float32) for shape in self.feature_shapes)
        spec = (specs[0] if len(specs) == 1 else specs, tf.TensorSpec((None,), tf.int32))
        stream = tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()
        return stream.apply(tf.data.experimental.assert_cardinality(self.count))  # Keras then knows the epoch


def _feature_keys(count: int) -> list[str]:
    """Manifest keys of a shard's feature files: `features`, then `features_1`, ... (several tensors)."""
    return ["features"] + [f"features_{i}" for i in range(1, count)]


class FeatureCache:
    """A directory of entries (`--cache-dir`, default `$TRANSFER_CACHE` or ~/.cache/transfer)."""

    def __init__(self, root=None, shard_size: int | None = None):
        """`shard_size`: examples per shard (default: as many as make ~64 MiB)."""
        self.root = Path(root) if root is not None else default_cache_dir()
        self.shard_size = shard_size

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        return [self.open(p.name) for p in sorted(self.root.iterdir()) if (p / MANIFEST).exists()]

    def open(self, key: str) -> Entry:
        path = self.root / key
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise TransferError(f"no cache entry {key!r} in {self.root}")
        try:
            manifest = json.loads(manifest_path.read_text())
            problem = _manifest_problem(manifest)
        except ValueError as error:
            problem = f"not JSON: {error}"
        if problem:
            raise TransferError(f"cache manifest {manifest_path} is corrupt ({problem}); its shards are kept: "
                                f"`transfer cache rm {key}` to drop the entry")
        if manifest.get("key") != key:
            raise TransferError(f"cache entry {key!r} holds the manifest of entry {manifest.get('key')!r}; "
                                f"`transfer cache rm {key}` to drop it")
        return Entry(path, manifest)

    def remove(self, key: str) -> None:
        entry = self.root / key
        if not entry.is_dir():
            raise TransferError(f"no cache entry {key!r} in {self.root}")
        with _locked(entry):
            shutil.rmtree(entry)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise TransferError(f"cache directory {str(self.root)!r} is not writable: {error.strerror}") from None

    # -- extraction ----------------------------------------------------------------------------

    def extract(self, inputs, dtype: str = "float32", progress: bool = True) -> dict[str, Entry]:
        """The entries of every split of `inputs` (`transfer.pipeline.Inputs`), extracting only
        what is missing or corrupt."""
        check_choice("cache dtype", dtype, DTYPES, flag="--cache-dtype")
        self.check_writable()
        engine = inputs.extraction_engine(self.root)
        if progress and engine.note:
            print(f"engine: {engine.note}", flush=True)
        extractor = _ListedOutputs(inputs.feature_batch, [c.spec for c in inputs.backbone.cuts])
        entries = {}
        for role in ROLES:
            if getattr(inputs.splits, role) is None:
                continue
            recipe = ingredients(inputs.backbone, inputs.kind, inputs.splits.identity, role, dtype, engine.name)
            entries[role] = self._fill(entry_key(recipe), recipe, extractor, inputs.batches, role, dtype,
                                       progress)
        return entries

    def _fill(self, key, recipe, extractor, batches, role, dtype, progress) -> Entry:
        path = self.root / key
        path.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            _remove_stale_temporaries(path)
            entry = self.open(key) if (path / MANIFEST).exists() else self._new_entry(path, recipe)
            if entry.manifest["backbone_fingerprint"] != recipe["backbone"]["fingerprint"]:
                raise TransferError(f"cache entry {key} belongs to backbone fingerprint "
                                    f"{entry.manifest['backbone_fingerprint'][:12]}, not "
                                    f"{recipe['backbone']['fingerprint'][:12]}; `transfer cache rm {key}`")
            for index in entry.bad_shards():
                shard = entry.manifest["shards"][index]
                dataset = batches.evaluation(role, skip=shard["start"], take=shard["count"])
                self._write_shard(entry, index, *_joined([extractor.batch(images, y, dtype) for images, y in dataset]))
            if not entry.complete:
                self._extract_rest(entry, extractor, batches, role, dtype, progress)
        return entry

    def _new_entry(self, path: Path, recipe: dict) -> Entry:
        manifest = {"key": path.name, "format": FORMAT_VERSION, "complete": False, "role": recipe["role"],
                    "dtype": recipe["dtype"], "backbone_fingerprint": recipe["backbone"]["fingerprint"],
                    "ingredients": recipe, "feature_shape": None, "shards": []}
        return Entry(path, manifest)

    def _extract_rest(self, entry: Entry, extractor, batches, role, dtype, progress: bool) -> None:
        """Stream the examples after the finished shards; a shard is written whenever it fills."""
        import keras

        total = batches.splits.sizes.get(role)
        # In a log file (no terminal), one line at the end: a live bar's ANSI codes would litter it.
        verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
        bar = keras.utils.Progbar(total, unit_name="example", verbose=verbose)
        bar.update(entry.count)
        buffered, buffered_count, shard_size = [], 0, None
        for images, y in batches.evaluation(role, skip=entry.count):
            features, labels = extractor.batch(images, y, dtype)
            if shard_size is None:
                shapes = [list(f.shape[1:]) for f in features]
                entry.manifest["feature_shape"], entry.manifest["feature_shapes"] = shapes[0], shapes
                example_bytes = sum(f[0].nbytes for f in features)
                shard_size = _aligned(self.shard_size or SHARD_BYTES // max(1, example_bytes), batches.batch_size)
            buffered.append((features, labels))
            buffered_count += len(labels)
            while buffered_count >= shard_size:
                features, labels = _joined(buffered)
                self._write_shard(entry, len(entry.manifest["shards"]), [f[:shard_size] for f in features],
                                  labels[:shard_size])
                buffered = [([f[shard_size:] for f in features], labels[shard_size:])]
                buffered_count -= shard_size
            bar.update(entry.count + buffered_count)
        if buffered_count:
            self._write_shard(entry, len(entry.manifest["shards"]), *_joined(buffered))
        if entry.manifest["feature_shape"] is None:
            raise TransferError(f"no examples to extract for the {role} split")
        entry.manifest["complete"] = True
        _write_atomic(entry.path / MANIFEST, json.dumps(entry.manifest, indent=1).encode())

    def _write_shard(self, entry: Entry, index: int, features: list, labels: np.ndarray) -> None:
        shards = entry.manifest["shards"]
        start = shards[index]["start"] if index < len(shards) else entry.count
        record = {"start": start, "count": int(len(labels))}
        keys = _feature_keys(len(features))
        for key, array in (*zip(keys, features), ("labels", labels)):
            record[key] = f"{key}-{index:05d}.npy"
            record[f"{key}_sha256"] = _write_atomic(entry.path / record[key], _npy_bytes(array))
        if index < len(shards):
            shards[index] = record
        else:
            shards.append(record)
        _write_atomic(entry.path / MANIFEST, json.dumps(entry.manifest, indent=1).encode())


class _ListedOutputs:
    """The features of one batch (`Inputs.feature_batch`) as a list of arrays, in cut order
    (several cuts come as a dict keyed by cut)."""

    def __init__(self, features, cut_specs: list[str]):
        self.features, self.cut_specs = features, cut_specs

    def batch(self, images, labels, dtype: str) -> tuple[list[np.ndarray], np.ndarray]:
        outputs = self.features(images)
        outputs = [outputs[spec] for spec in self.cut_specs] if isinstance(outputs, dict) else [outputs]
        return [np.asarray(o).astype(dtype) for o in outputs], labels.numpy().astype("int32")


def _joined(batches: list) -> tuple[list[np.ndarray], np.ndarray]:
    """[(features list, labels), ...] -> (one array per feature tensor, labels)."""
    features = [np.concatenate(parts) for parts in zip(*(f for f, _ in batches))]
    return features, np.concatenate([y for _, y in batches])


def _aligned(shard_size: int, batch_size: int) -> int:
    """Shards hold whole batches, so a resumed or repaired shard is computed from exactly the
    same batches as in an uninterrupted run (batch composition can change the last float bit)."""
    return max(batch_size, shard_size // batch_size * batch_size)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a manifest's structure (hand-edited, or from another program), or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "'shards' is not a list"
    if manifest.get("feature_shape") is not None and not isinstance(manifest["feature_shape"], list):
        return "'feature_shape' is not a list"
    for index, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shard {index} is not an object"
        for field in ("start", "count"):
            if isinstance(shard.get(field), bool) or not isinstance(shard.get(field), int) or shard[field] < 0:
                return f"shard {index}'s {field!r} is {shard.get(field)!r}, not a count"
        names = [k for k in shard if k == "labels" or k.startswith("features")]
        if "labels" not in names or any(not isinstance(shard[k], str) or "/" in shard[k] for k in names):
            return f"shard {index} names no labels file, or a file outside the entry"
    return None


def _remove_stale_temporaries(entry_path: Path) -> None:
    """Temporary files (`.NAME.PID.tmp`) of an extraction whose process is gone: a killed run
    leaves them; the entry's lock is held, so no live writer of this entry owns them."""
    for temporary in entry_path.glob(".*.tmp"):
        pid = temporary.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                temporary.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: Path, data: bytes) -> str:
    return write_atomic(path, data, "the shards already finished are kept and the next run resumes")


def _sha256_file(path: Path) -> str | None:
    return update_with_file(hashlib.sha256(), path).hexdigest() if path.is_file() else None


@contextlib.contextmanager
def _locked(entry_path: Path):
    """An exclusive lock per entry: a second extractor waits, then finds the work done."""
    with open(entry_path / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
