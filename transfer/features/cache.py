"""Features on disk, extracted once: sharded `.npy` files plus a JSON manifest per entry.

An entry holds one cut's features of one split, and the labels. Its key is a fingerprint of
everything that decides the features (graph bytes, cut, inputs, preprocessing, pooling, the
data's identity and split, the stored dtype, the engine), so a changed ingredient is a new
entry, never stale features; several cuts extracted in one pass are one entry each, so adding a
cut later extracts only that cut. What to extract comes from an extractor
(`transfer.features.extraction.Extraction`): this module knows files, not backbones.

Batch-size independence: an entry records the extraction batch it was started with and keeps
it when resumed or repaired, so its shards are computed from the same batches whatever the
`--batch-size` of the run that completes it (batch composition can change the last float bit).

Crash safety: every file is written under a temporary name and renamed; the manifest lists
only finished shards, each with a SHA-256, so a killed extraction resumes after its last
finished shard, and a corrupt shard is found by its checksum and extracted again. An
exclusive lock per entry lets two processes share one cache directory.

Shards computed elsewhere (`plan` cuts what is missing into `ShardTask`s, each computable on its
own: a pipeline's work items, `transfer.features.runners`): a task writes its shard files and a small
record beside them (`.shard-NNNNN.json`); `finish` then lists them in the manifest, exactly as a
plain pass would have. A rerun after a killed pipeline keeps every recorded shard.

Where the cache lives: a local directory, or any location `tf.io.gfile` reaches
(`transfer.features.storage`); a remote one has no lock (one warning says so) and is read through gfile.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transfer.detail import detail
from transfer.errors import TransferError, TransferWarning, check_choice
from transfer.choices import CACHE_DTYPES
from transfer.files import update_with_file, write_atomic
from transfer.features.cache_pruning import apply_cap, mark_used
from transfer.features.storage import is_local, load_array, location, npy_problem, rmtree

if TYPE_CHECKING:
    import tensorflow as tf

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_BYTES = 64 * 2**20  # ~64 MiB of features per shard: streamable, cheap to re-extract
PASS_BYTES = 2**30  # at most ~1 GiB of every output's unwritten shards held by one pass (many cuts)
FINISHED = ".shard-{index:05d}.json"  # a task's record of a finished shard, until the manifest lists it
WRITERS = 4  # threads that finish the entries of a pass (their last shards and manifests)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRANSFER_CACHE") or Path.home() / ".cache" / "transfer")


def entry_key(ingredients: dict) -> str:
    """A stable fingerprint of the ingredients (JSON with sorted keys)."""
    text = json.dumps({"format": FORMAT_VERSION, **ingredients}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass
class Entry:
    """One cached split: `manifest` is what `manifest.json` says."""

    path: Path  # or a transfer.features.storage.RemotePath
    manifest: dict
    finished: dict = dataclasses.field(default_factory=dict, repr=False)  # index -> record: shards done by
    # tasks after a gap in the manifest's list (a pipeline still running, or killed)

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
    def feature_shapes(self) -> list[tuple]:
        """One example's shape per feature tensor: one, or several in entries written before each
        cut had its own entry (a thaw's prefix outputs); `feature_shape` in older manifests."""
        shapes = self.manifest.get("feature_shapes") or [self.manifest.get("feature_shape")]
        return [tuple(shape) for shape in shapes if shape is not None]

    @property
    def output(self) -> str | None:
        """The cut this entry holds, as its extraction named it."""
        cut = self.manifest.get("ingredients", {}).get("backbone", {}).get("cut")
        return cut if isinstance(cut, str) else None

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("*.npy"))

    def bad_shards(self) -> list[int]:
        """Indices of shards that are corrupt (see `shard_problems`)."""
        return list(self.shard_problems())

    def shard_problems(self) -> dict[int, str]:
        """index -> what is wrong, for each shard with a file that is missing, fails its checksum,
        or is not the array the manifest says (a `.npy` header of another dtype, shape or order,
        or of Python objects: a pickle, which is never loaded)."""
        problems = {i: self._problem(shard) for i, shard in enumerate(self.manifest["shards"])}
        return {i: problem for i, problem in problems.items() if problem}

    def _intact(self, shard: dict) -> bool:
        return self._problem(shard) is None

    def _problem(self, shard: dict) -> str | None:
        for key, dtype, shape in self._files(shard):
            if _sha256_file(self.path / shard[key]) != shard[f"{key}_sha256"]:
                return f"{shard[key]} is missing or fails its checksum"
            problem = npy_problem(self.path / shard[key], dtype, shape)
            if problem:
                return f"{shard[key]} {problem}"
        return None

    def _files(self, shard: dict) -> list[tuple]:
        """(manifest key, dtype, shape) of each of a shard's files, as the cache writes them."""
        count = shard["count"]
        features = [(key, self.manifest["dtype"], (count, *shape))
                    for key, shape in zip(_feature_keys(len(self.feature_shapes)), self.feature_shapes)]
        return [*features, ("labels", "int32", (count,))]

    def check_headers(self) -> None:
        """Every shard file's `.npy` header as the manifest says, else one TransferError line: read
        before tf.data or numpy touches the data (checksums are checked when the entry is opened
        for extraction: `FeatureCache.extract` repairs what fails)."""
        for shard in self.manifest["shards"]:
            for key, dtype, shape in self._files(shard):
                problem = npy_problem(self.path / shard[key], dtype, shape)
                if problem:
                    raise TransferError(f"cache shard {self.path / shard[key]} {problem}: the entry is corrupt; "
                                        f"extract again to repair it, or `transfer cache rm {self.key}`")

    def arrays(self) -> tuple:
        """All features and labels in memory (for the scikit-learn probe and small data); the
        features are a tuple of arrays when each example holds several tensors."""
        self.check_headers()
        keys = _feature_keys(len(self.feature_shapes))
        shards = self.manifest["shards"]
        features = tuple(np.concatenate([load_array(self.path / s[key]) for s in shards]).astype("float32")
                         if shards else np.zeros((0, *shape), "float32")
                         for key, shape in zip(keys, self.feature_shapes))
        labels = (np.concatenate([load_array(self.path / s["labels"]) for s in shards]) if shards
                  else np.zeros((0,), "int32"))
        return (features[0] if len(keys) == 1 else features), labels

    def dataset(self, chunk: int = 1024) -> tf.data.Dataset:
        """Unbatched (features float32, label int32), streamed shard by shard from memory maps
        (a remote cache: each shard read whole through gfile): a cache larger than memory trains
        without being loaded."""
        import tensorflow as tf  # here only: `transfer cache ls` answers without TensorFlow
        self.check_headers()  # a bad shard is one line now, not an error from inside tf.data later
        keys = _feature_keys(len(self.feature_shapes))
        shards = [([self.path / s[key] for key in keys], self.path / s["labels"]) for s in self.manifest["shards"]]

        def chunks():
            for feature_files, labels_file in shards:
                features = [load_array(name, mmap=True) for name in feature_files]
                labels = load_array(labels_file, mmap=True)
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
        """`root`: a directory, or any location tf.io.gfile reaches (`gs://…`, `ram://…`).
        `shard_size`: examples per shard (default: as many as make ~64 MiB)."""
        self.root = location(root) if root is not None else default_cache_dir()
        self.shard_size = shard_size

    @property
    def local(self) -> bool:
        """On the local disk: entries are locked, shards memory-mapped."""
        return is_local(self.root)

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
            rmtree(entry)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise TransferError(f"cache directory {str(self.root)!r} is not writable: {error.strerror}") from None

    # -- extraction ----------------------------------------------------------------------------

    def extract(self, extractor, dtype: str = "float32", progress: bool = True) -> dict[str, list[Entry]]:
        """Every split's entries, one per output of `extractor`, extracting only what is missing
        or corrupt: the missing outputs of a split in one pass.

        `extractor` (`transfer.features.extraction.Extraction` is one) has `outputs` (names, one entry
        each), `roles` (the splits), `batch_size`, `note` (said before extracting), `backbone_source`
        (what a new entry's manifest names as its backbone), `size(role)`
        (examples, or None), `recipe(role, output, dtype)` (the entry's ingredients: its key) and
        `batches(role, outputs, batch_size, skip, take)` (([one float array per output], int32
        labels) per batch).
        """
        self.begin(extractor, dtype, progress)
        entries = {}
        for role in extractor.roles:
            with self.claimed(extractor, [role], dtype) as groups:
                group = groups[role]
                for output, entry in group.items():
                    self._repair(entry, extractor, role, output, dtype)
                layouts = _by_layout(group)
                if progress and not layouts:  # said, so that a run never sits silent
                    keys = ", ".join(entry.key[:12] for entry in group.values())
                    print(f"features: the {role} split from the cache (entry {keys})", flush=True)
                for layout, pending in layouts.items():
                    started = time.perf_counter()
                    self._extract_rest(pending, extractor, role, dtype, layout, progress)
                    count = extractor.size(role)
                    detail(f"extracted the {role} split in {time.perf_counter() - started:.1f} s"
                           + (f" ({count / max(time.perf_counter() - started, 1e-9):.0f} examples/s)" if count else ""))
                for output, entry in group.items():
                    detail(f"cache entry {entry.key} ({role}, {output}): {entry.path}")
            entries[role] = list(group.values())
        return entries

    def used(self, entries: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
        """`entries` (what an extraction returned, however it ran) marked as used now, then the
        cache pruned to `TRANSFER_CACHE_MAX` if set, never removing them
        (`transfer.features.cache_pruning`)."""
        listed = [entry for role in entries.values() for entry in role]
        mark_used(listed)
        apply_cap(self, keep={entry.key for entry in listed})
        return entries

    def begin(self, extractor, dtype: str, progress: bool) -> None:
        """What every extraction checks and says first, whatever runs it."""
        check_choice("cache dtype", dtype, CACHE_DTYPES, flag="--cache-dtype")
        self.check_writable()
        if not self.local:
            warnings.warn(TransferWarning(
                f"cache {self.root} is not on the local disk: its entries have no lock, so two extractions must not "
                "fill the same entry at once (a rerun after a killed one is safe)"), stacklevel=2)
        if progress and extractor.note:
            print(f"engine: {extractor.note}", flush=True)
        elif not extractor.note:
            detail("engine: TensorFlow (--engine auto times ONNX Runtime and OpenVINO against it where installed)")

    @contextlib.contextmanager
    def claimed(self, extractor, roles: list[str], dtype: str):
        """`{role: {output: Entry}}` for these splits, opened for extraction (stale temporary files
        removed, finished task records adopted), each entry locked until the block ends (local
        caches: a second extractor waits, then finds the work done)."""
        recipes = {role: {output: extractor.recipe(role, output, dtype) for output in extractor.outputs}
                   for role in roles}
        paths = {role: {output: self.root / entry_key(recipe) for output, recipe in listed.items()}
                 for role, listed in recipes.items()}
        every = sorted({path for listed in paths.values() for path in listed.values()})
        for path in every:
            path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as locks:
            for path in every:  # one order for every process: no deadlock
                locks.enter_context(_locked(path))
            yield {role: {output: self._opened(paths[role][output], recipe, extractor.backbone_source)
                          for output, recipe in listed.items()}
                   for role, listed in recipes.items()}

    def _opened(self, path: Path, recipe: dict, backbone_source: str) -> Entry:
        _remove_stale_temporaries(path)
        entry = self.open(path.name) if (path / MANIFEST).exists() else _new_entry(path, recipe, backbone_source)
        if entry.manifest["backbone_fingerprint"] != recipe["backbone"]["fingerprint"]:
            raise TransferError(f"cache entry {path.name} belongs to backbone fingerprint "
                                f"{entry.manifest['backbone_fingerprint'][:12]}, not "
                                f"{recipe['backbone']['fingerprint'][:12]}; `transfer cache rm {path.name}`")
        _adopt_finished(entry)
        return entry

    # -- shards as independent tasks (a pipeline's work items) ----------------------------------

    def plan(self, group: dict[str, Entry], extractor, role: str, dtype: str) -> list[ShardTask]:
        """The shards one split's entries still need, as tasks: each corrupt shard (recomputed
        for its entry alone, from its own batches, as `extract` repairs it), then each missing
        shard, for every entry of a layout that lacks it, in one pass. A new layout is chosen as
        a plain pass would choose it (from one example's features) and written into the
        manifests first, so that every task and every rerun cut the same shards. Beyond the
        interface `extract` uses, the extractor counts a split's examples: `count(role)`."""
        tasks = []
        for output, entry in group.items():
            batch_size = entry.manifest.get("batch_size") or extractor.batch_size
            for index in entry.bad_shards():
                shard = entry.manifest["shards"][index]
                tasks.append(ShardTask(role, index, shard["start"], shard["count"], (output,), (str(entry.path),),
                                       batch_size, dtype))
        layouts = _by_layout(group)
        size = extractor.count(role) if layouts else 0
        if layouts and not size:
            raise TransferError(f"no examples to extract for the {role} split")
        for (batch_size, shard_size), pending in layouts.items():
            if shard_size is None:
                batch_size = extractor.batch_size
                probe, _ = next(iter(extractor.batches(role, list(pending), batch_size, take=1)))
                shard_size = self._shard_size(probe, dtype, batch_size)
                for entry, features in zip(pending.values(), probe):
                    _describe_layout(entry, features.astype(dtype), batch_size, shard_size)
                    _write_manifest(entry)
            for index, start in enumerate(range(0, size, shard_size)):
                todo = [output for output, entry in pending.items()
                        if index >= len(entry.manifest["shards"]) and index not in entry.finished]
                if todo:
                    tasks.append(ShardTask(role, index, start, min(shard_size, size - start), tuple(todo),
                                           tuple(str(pending[output].path) for output in todo), batch_size, dtype))
        return tasks

    def finish(self, key: str, size: int | None = None) -> Entry:
        """An entry whose missing or corrupt shards tasks have computed: its manifest lists them
        all and says it is complete (the manifest a plain pass writes), the tasks' records
        removed. `size`: the split's examples (None: those the entry lists already)."""
        entry = self.open(key)
        _adopt_finished(entry, verify=False)  # written by this run's tasks, after their files: no re-reading
        if entry.finished or size is not None and entry.count != size:
            raise TransferError(f"cache entry {key} holds {entry.count} of {size or entry.count} examples after its "
                                "extraction: a task did not finish; extract again to complete it")
        if not entry.complete:
            entry.manifest["complete"] = True
            _write_manifest(entry)
        return entry

    def _shard_size(self, features: list, dtype: str, batch_size: int) -> int:
        """Examples per shard of a new layout: `shard_size`, else ~64 MiB of the largest output,
        fewer when the pass's outputs together would hold more than ~1 GiB before their shards
        are written (a pass over every block of a large network); whole batches."""
        sizes = [f[0].astype(dtype).nbytes for f in features]
        fitting = min(SHARD_BYTES // max(1, max(sizes)), PASS_BYTES // max(1, sum(sizes)))
        return _aligned(self.shard_size or fitting, batch_size)

    def _repair(self, entry: Entry, extractor, role: str, output: str, dtype: str) -> None:
        """Shards whose files are missing or corrupt, extracted again from the same batches."""
        batch_size = entry.manifest.get("batch_size") or extractor.batch_size
        for index in entry.bad_shards():
            shard = entry.manifest["shards"][index]
            self._write_shard(entry, index, *_computed(extractor, role, [output], batch_size, shard["start"],
                                                      shard["count"], dtype))

    def _extract_rest(self, pending: dict[str, Entry], extractor, role: str, dtype: str, layout: tuple,
                      progress: bool) -> None:
        """One pass over the examples after the finished shards, for every pending output; an
        entry's shard is written whenever it fills. Entries of one layout (extraction batch and
        shard size) hold shards of the same examples, so a pass serves them all."""
        import keras

        batch_size, shard_size = layout
        batch_size = batch_size or extractor.batch_size
        start = min(entry.count for entry in pending.values())
        # In a log file (no terminal), one line at the end: a live bar's ANSI codes would litter it.
        verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
        if progress:
            resumed = f", resuming after {start}" if start else ""
            print(f"features: extracting the {role} split ({len(pending)} cut(s){resumed})", flush=True)
        bar = keras.utils.Progbar(extractor.size(role), unit_name="example", verbose=verbose)
        done = start
        bar.update(done)
        buffers = {output: _ShardBuffer(entry, start) for output, entry in pending.items()}
        for features, labels in extractor.batches(role, list(pending), batch_size, skip=start):
            if shard_size is None:  # a new layout
                shard_size = self._shard_size(features, dtype, batch_size)
            for buffer, array in zip(buffers.values(), features):
                buffer.add(array.astype(dtype, copy=False), labels)
                for shard_features, shard_labels in buffer.full_shards(shard_size):
                    _describe_layout(buffer.entry, shard_features, batch_size, shard_size)
                    self._write_shard(buffer.entry, len(buffer.entry.manifest["shards"]), [shard_features],
                                      shard_labels)
            done += len(labels)
            bar.update(done)

        def finish(buffer: _ShardBuffer) -> None:
            rest = buffer.rest()
            if rest is not None:
                _describe_layout(buffer.entry, rest[0], batch_size, shard_size)
                self._write_shard(buffer.entry, len(buffer.entry.manifest["shards"]), [rest[0]], rest[1],
                                  manifest=False)  # written once below, complete
            if not buffer.entry.manifest.get("feature_shapes"):
                raise TransferError(f"no examples to extract for the {role} split")
            buffer.entry.manifest["complete"] = True
            _write_manifest(buffer.entry)

        # Entries are finished side by side: writing, hashing and fsyncing release the GIL, and a
        # pass over many cuts ends with one shard per cut to write (ResNet50's 177: ~890 MB).
        with concurrent.futures.ThreadPoolExecutor(WRITERS) as writers:
            list(writers.map(finish, buffers.values()))

    def _write_shard(self, entry: Entry, index: int, features: list, labels: np.ndarray,
                     manifest: bool = True) -> None:
        """A shard's files, then (unless the caller writes it next) the manifest that lists it."""
        shards = entry.manifest["shards"]
        start = shards[index]["start"] if index < len(shards) else entry.count
        record = write_shard(entry.path, index, start, features, labels)
        if index < len(shards):
            shards[index] = record
        else:
            shards.append(record)
        if manifest:
            _write_manifest(entry)
        if entry.finished.pop(index, None) is not None:  # a task's record of it, left by a killed pipeline
            (entry.path / FINISHED.format(index=index)).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Shard `index` (examples [start, start + count) of split `role`) of the entries at `paths`,
    one per output, computed in one pass from batches of `batch_size`: plain data, so that a
    pipeline can ship it to a worker."""

    role: str
    index: int
    start: int
    count: int
    outputs: tuple
    paths: tuple  # each output's entry directory, as text
    batch_size: int
    dtype: str


def extract_shard(task: ShardTask, extractor) -> int:
    """Compute a task's shard and write it into each of its entries, with the record that says it
    is finished (`FeatureCache.finish` lists it in the manifest); returns its example count."""
    features, labels = _computed(extractor, task.role, list(task.outputs), task.batch_size, task.start,
                                 task.count, task.dtype)
    for path, array in zip(task.paths, features):
        entry_path = location(path)
        record = write_shard(entry_path, task.index, task.start, [array], labels)
        _write_atomic(entry_path / FINISHED.format(index=task.index), json.dumps(record).encode())
    return len(labels)


def write_shard(entry_path: Path, index: int, start: int, features: list, labels: np.ndarray) -> dict:
    """Shard `index`'s files (features, then labels), each whole or absent; its manifest record."""
    record = {"start": start, "count": int(len(labels))}
    for key, array in (*zip(_feature_keys(len(features)), features), ("labels", labels)):
        record[key] = f"{key}-{index:05d}.npy"
        record[f"{key}_sha256"] = _write_atomic(entry_path / record[key], _npy_bytes(array))
    return record


def _computed(extractor, role: str, outputs: list, batch_size: int, start: int, count: int,
              dtype: str) -> tuple[list[np.ndarray], np.ndarray]:
    """One shard's stored features (one array per output) and labels, from its own batches."""
    batches = extractor.batches(role, outputs, batch_size, skip=start, take=count)
    return _joined([_stored(f, y, dtype) for f, y in batches])


def _write_manifest(entry: Entry) -> None:
    _write_atomic(entry.path / MANIFEST, json.dumps(entry.manifest, indent=1).encode())


def _adopt_finished(entry: Entry, verify: bool = True) -> None:
    """Shards that tasks finished (their records beside them) and whose files check out join
    the manifest: a repaired one replaces its listed record, missing ones are appended while
    they continue the list; the others wait in `entry.finished` for the shards before them.
    Records are removed once the manifest that lists them is written (or when they do not
    check out). `verify`: hash the files (False: the records are this run's, trusted)."""
    shards, waiting, done, changed = entry.manifest["shards"], {}, [], False
    for path in entry.path.glob(".shard-*.json"):
        record, index = _finished_record(entry, path, verify)
        if record is not None and index < len(shards):
            shards[index], changed = record, True
        elif record is not None:
            waiting[index] = (record, path)
            continue
        done.append(path)
    while len(shards) in waiting:
        record, path = waiting.pop(len(shards))
        shards.append(record)
        done.append(path)
        changed = True
    if changed:
        _write_manifest(entry)
    for path in done:
        with contextlib.suppress(OSError):
            path.unlink()
    entry.finished = {index: record for index, (record, _) in waiting.items()}


def _finished_record(entry: Entry, path, verify: bool = True) -> tuple[dict | None, int]:
    """A task's record of a finished shard and its index, or None when it does not check out."""
    index = path.name[len(".shard-"):-len(".json")]
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError):
        return None, -1
    if not index.isdigit() or not entry.feature_shapes or _manifest_problem({"shards": [record]}):
        return None, -1
    return (record if not verify or entry._intact(record) else None), int(index)


class _ShardBuffer:
    """One pending entry's features of a pass, cut into shards as they fill; the batches before
    the entry's finished shards (another entry of the pass needed them) are dropped."""

    def __init__(self, entry: Entry, position: int):
        self.entry, self.position = entry, position
        self.features, self.labels = [], []

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        drop = max(0, min(len(labels), self.entry.count - self.position))
        self.position += len(labels)
        if drop < len(labels):
            self.features.append(features[drop:])
            self.labels.append(labels[drop:])

    def full_shards(self, shard_size: int):
        while sum(map(len, self.labels)) >= shard_size:
            features, labels = np.concatenate(self.features), np.concatenate(self.labels)
            self.features, self.labels = [features[shard_size:]], [labels[shard_size:]]
            yield features[:shard_size], labels[:shard_size]

    def rest(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.labels or not sum(map(len, self.labels)):
            return None
        return np.concatenate(self.features), np.concatenate(self.labels)


def _new_entry(path: Path, recipe: dict, backbone_source: str) -> Entry:
    manifest = {"key": path.name, "format": FORMAT_VERSION, "complete": False, "role": recipe["role"],
                "dtype": recipe["dtype"], "backbone_fingerprint": recipe["backbone"]["fingerprint"],
                "backbone_source": backbone_source,
                "ingredients": recipe, "batch_size": None, "shard_size": None, "feature_shapes": None,
                "shards": []}
    return Entry(path, manifest)


def _by_layout(group: dict[str, Entry]) -> dict[tuple, dict[str, Entry]]:
    """The incomplete entries by (extraction batch, shard size): a resumed entry keeps the
    layout it was started with (batch composition can change the last float bit), new ones
    share whatever the pass chooses (None, None)."""
    layouts = {}
    for output, entry in group.items():
        if not entry.complete:
            layout = (entry.manifest.get("batch_size"), entry.manifest.get("shard_size"))
            layouts.setdefault(layout, {})[output] = entry
    return layouts


def _describe_layout(entry: Entry, features: np.ndarray, batch_size: int, shard_size: int) -> None:
    """What the first shard tells the manifest: the feature shape, and the layout a resumed
    extraction must keep."""
    if not entry.manifest.get("feature_shapes"):
        entry.manifest.update(feature_shapes=[list(features.shape[1:])], batch_size=batch_size,
                              shard_size=shard_size)


def _stored(features: list, labels: np.ndarray, dtype: str) -> tuple[list, np.ndarray]:
    return [f.astype(dtype, copy=False) for f in features], labels


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
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)  # C order, as `npy_problem` checks
    return buffer.getvalue()


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a manifest's structure (hand-edited, or from another program), or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "'shards' is not a list"
    if "dtype" in manifest and manifest["dtype"] not in CACHE_DTYPES:  # an entry's (a task's record has none)
        return f"'dtype' is {manifest['dtype']!r}, not one of {', '.join(CACHE_DTYPES)}"
    for field in ("feature_shape", "feature_shapes", "batch_size", "shard_size"):
        if manifest.get(field) is not None and not isinstance(manifest[field], (list if "shape" in field else int)):
            return f"{field!r} is {manifest[field]!r}, not a {'list' if 'shape' in field else 'count'}"
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
    leaves them; the entry's lock is held, so no live writer of this entry owns them. A remote
    entry has no lock (and its writers' PIDs are other machines'): all of them (see `begin`)."""
    for temporary in entry_path.glob(".*.tmp"):
        pid = temporary.name.rsplit(".", 2)[-2]
        if not is_local(entry_path) or pid.isdigit() and not _alive(int(pid)):
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
    """An exclusive lock per entry: a second extractor waits, then finds the work done (local
    entries; gfile has no locks)."""
    if not is_local(entry_path):
        yield
        return
    with open(entry_path / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
