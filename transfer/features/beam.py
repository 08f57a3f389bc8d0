"""Feature extraction as an Apache Beam pipeline (`--runner beam`): the entries of a plain
`transfer extract`, byte for byte (same keys, shards and manifests), computed by many workers.

The launcher (this process) opens and locks the entries (local caches), fixes every new layout
as a plain pass would (extraction batch, shard size: from one example's features) and cuts what
is missing into shard tasks (`FeatureCache.plan`: per split and shard index, shards aligned to
whole extraction batches). The pipeline spreads the tasks over the workers; each worker rebuilds
the extraction once from plain data (`DoFn.setup`: backbone, cut, data, engine) and computes its
shards with the cache's atomic writes and checksums (`transfer.features.cache.extract_shard`); one final
step lists them in each manifest (`FeatureCache.finish`). A rerun skips every finished shard.

Why a DoFn with `setup`, not `RunInference`: RunInference's elements are single examples that
`BatchElements` groups at sizes it tunes while it runs, and its TensorFlow model handlers load a
SavedModel or Keras file with TensorFlow's own loaders. A shard must be computed from exactly
the extraction batches of a plain pass (batch composition changes the last float bit), the
examples are best read where they are computed (shipping decoded images from a reader to the
workers costs more than reading them there), and a backbone must pass transfer's safety checks
and be cut. So a work item is a shard, and the model is loaded once per worker in `setup`,
which is what a RunInference model handler does too.
"""
from __future__ import annotations

import contextlib
import re
import sys
import threading

from transfer.features.beam_options import beam_value, import_beam

import_beam()
import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from transfer._backend import parked_stderr  # noqa: E402
from transfer.features.cache import FINISHED, FeatureCache, entry_key, extract_shard  # noqa: E402
from transfer.errors import TransferError  # noqa: E402
from transfer.features.extraction import Extraction  # noqa: E402
from transfer.features.inputs import open_extraction  # noqa: E402
from transfer.features.storage import location  # noqa: E402

WORKER_LOST = ("Channel closed prematurely", "Worker subprocess exited")  # the DirectRunner's words for it
QUIET_WORKERS = {"default_sdk_harness_log_level": "WARNING"}  # a worker process logs every channel it opens


def extract(cache: FeatureCache, extractor: Extraction, options: dict, dtype: str = "float32",
            progress: bool = True) -> dict:
    """Every split's entries, one per output (`FeatureCache.extract`'s answer), the missing
    shards computed by a Beam pipeline with these pipeline options."""
    cache.begin(extractor, dtype, progress)
    with cache.claimed(extractor, extractor.roles, dtype) as groups:
        tasks = [task for role, group in groups.items() for task in cache.plan(group, extractor, role, dtype)]
        touched = {path for task in tasks for path in task.paths}
        finishing = {entry.key: None if entry.complete else extractor.count(role)
                     for role, group in groups.items() for entry in group.values()
                     if not entry.complete or str(entry.path) in touched}
        if tasks:
            description = extractor.description()
            if description is None:
                raise TransferError("--runner beam loads the data again on every worker, from its spec; these data "
                                    "are in memory: extract with the local runner")
            _run(tasks, description, cache, finishing, options, progress)
        return {role: [cache.finish(entry.key, finishing[entry.key]) if entry.key in finishing else entry
                       for entry in group.values()] for role, group in groups.items()}


class ExtractShards(beam.DoFn):
    """A worker: the extraction rebuilt once (`setup`), then one shard per task."""

    def __init__(self, description: dict):
        self.description = description
        self.extractor, self.checked = None, set()

    def setup(self):
        import transfer

        transfer.load_tensorflow()
        self.extractor = open_extraction(self.description)

    def process(self, task):
        self._check(task)
        yield extract_shard(task, self.extractor)

    def _check(self, task) -> None:
        """The worker's entries must be the launcher's: same backbone and data on every worker."""
        for output, path in zip(task.outputs, task.paths):
            if (task.role, output, task.dtype) not in self.checked:
                key = entry_key(self.extractor.recipe(task.role, output, task.dtype))
                if key != location(path).name:
                    raise TransferError(f"a Beam worker made entry {key} where the launcher made "
                                        f"{location(path).name}: the backbone and the data must be the same files on "
                                        "every worker")
                self.checked.add((task.role, output, task.dtype))


def write_manifests(_examples, root: str, finishing: dict) -> None:
    """The final step: every extracted entry's manifest, listing its shards."""
    cache = FeatureCache(root)
    for key, size in finishing.items():
        cache.finish(key, size)


def _run(tasks: list, description: dict, cache: FeatureCache, finishing: dict, options: dict, progress: bool) -> None:
    if progress:
        runner = options.get("runner", "DirectRunner")
        workers = f", {options['direct_num_workers']} workers" if "direct_num_workers" in options else ""
        print(f"beam: {len(tasks)} shard task(s) for {len(finishing)} entr{'y' if len(finishing) == 1 else 'ies'} on "
              f"{runner}{workers}", flush=True)
    pipeline_options = PipelineOptions.from_dictionary({name: beam_value(value)
                                                        for name, value in {**QUIET_WORKERS, **options}.items()})
    # Beam's workers and runner log their start-up, channels and notices to fd 2: parked, shown if it fails
    with parked_stderr(keep=(TransferError,)), _progress_bar(tasks) if progress else contextlib.nullcontext():
        try:
            with beam.Pipeline(options=pipeline_options) as pipeline:
                examples = (pipeline
                            | "Shards" >> beam.Create(tasks)
                            | "Spread" >> beam.Reshuffle()  # else Create's one bundle goes to one worker
                            | "Extract" >> beam.ParDo(ExtractShards(description))
                            | "Examples" >> beam.CombineGlobally(sum))
                _ = examples | "Manifests" >> beam.Map(write_manifests, str(cache.root), finishing)
        except Exception as error:  # a worker's TransferError arrives wrapped in Beam's error
            message = re.search(r"TransferError: (.+)", str(error))
            if message:
                raise TransferError(message.group(1).strip()) from None
            lost = next((sign for sign in WORKER_LOST if sign in str(error)), None)
            if lost:
                raise TransferError(f"a Beam worker stopped mid-pipeline ({lost}); the shards finished so far are "
                                    "kept: run the same command again to complete the entries") from None
            raise


@contextlib.contextmanager
def _progress_bar(tasks: list):
    """Examples extracted so far, from the tasks' records as they appear (workers are other
    processes, maybe other machines: the cache is what they share)."""
    import keras

    bar = keras.utils.Progbar(sum(task.count for task in tasks), unit_name="example",
                              verbose=1 if sys.stdout.isatty() else 2)
    stop, seen = threading.Event(), [0]

    def done() -> int:
        return sum(task.count for task in tasks
                   if (location(task.paths[0]) / FINISHED.format(index=task.index)).exists())

    def poll():
        while not stop.wait(1.0):
            seen[0] = max(seen[0], done())  # the final step removes the records it lists
            bar.update(seen[0])

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
    if seen[0] < bar.target:
        bar.update(bar.target)
