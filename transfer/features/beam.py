"""Feature extraction as an Apache Beam pipeline (`--runner beam`): the entries of a plain
`transfer extract`, byte for byte (same keys, shards and manifests), computed by many workers.

The launcher (this process) opens and locks the entries (local caches), fixes every new layout
as a plain pass would (extraction batch, shard size: from one example's features) and cuts what
is missing into shard tasks (`FeatureCache.plan`: per split and shard index, shards aligned to
whole extraction batches). The pipeline spreads the tasks over the workers; each worker rebuilds
the extraction once from plain data (`DoFn.setup`: backbone, cut, data, engine) and computes its
shards with the cache's atomic writes and checksums (`transfer.features.cache.extract_shard`);
a final step lists them in each manifest (`FeatureCache.finish`), and the launcher does it again
once the pipeline is done (nothing left to do then, unless the runner skipped the step). A rerun
skips every finished shard.

Why a DoFn with `setup`, not `RunInference`: RunInference's elements are single examples that
`BatchElements` groups at sizes it tunes while it runs, and its TensorFlow model handlers load a
SavedModel or Keras file with TensorFlow's own loaders. A shard must be computed from exactly
the extraction batches of a plain pass (batch composition changes the last float bit), the
examples are best read where they are computed (shipping decoded images from a reader to the
workers costs more than reading them there), and a backbone must pass transfer's safety checks
and be cut. So a work item is a shard, and the model is loaded once per worker in `setup`,
which is what a RunInference model handler does too. Some runners call `setup` once per bundle
(the DaskRunner) rather than once per worker: the extraction is kept per worker process
(`_worker_extraction`), so a worker loads the backbone once whatever its runner does.

Runners. With no `runner` option the pipeline runs on Beam's FnApiRunner, pinned: Beam's
DirectRunner would first try to download its Prism runner from the internet (Beam >= 2.68), and
then fall back to this same FnApiRunner. `runner=DaskRunner` runs it on a dask.distributed
cluster (`dask_client_address=HOST:PORT`). Beam's Dask translation knows only Create, ParDo,
GroupByKey and Flatten (Reshuffle does nothing there) and computes only the pipeline's last
step: there the pipeline is one line, Create -> ParDo, whose last step is the extraction, the
tasks are spread by giving each its own Dask partition, and the manifests are the launcher's
step alone (a fan-in over one partition per shard would be a Dask shuffle of ~shards² tasks:
135 s for 600 empty tasks, against 7 s without it, measured on 2 loaded cores).
"""
from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import json
import re
import sys
import threading

from transfer.features.beam_options import beam_value, import_beam, resolved_runner, uses_dask

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
LOCAL_RUNNER = "FnApiRunner"  # what runs a pipeline without a `runner` option: local, nothing downloaded


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
    """A worker: the extraction rebuilt once per worker process (`setup`), then one shard per task."""

    def __init__(self, description: dict):
        self.description = description
        self.extractor, self.checked = None, set()

    def setup(self):
        self.extractor, self.checked = _worker_extraction(self.description)

    def process(self, task):
        self._check(task)
        count = extract_shard(task, self.extractor)
        WORKER["shards"] += 1
        yield count

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


# A worker process's extractions (with the entries each was checked against), one per description,
# made on first use and kept while the process lives: a runner may call `setup` once per bundle
# (the DaskRunner does), and the backbone is still loaded once per process.
_EXTRACTIONS: dict[str, tuple[Extraction, set]] = {}
_LOADING = threading.Lock()
WORKER = collections.Counter()  # what this process did as a worker: "loads" (extractions built), "shards"


def _worker_extraction(description: dict) -> tuple[Extraction, set]:
    key = json.dumps(description, sort_keys=True, default=str)
    with _LOADING:
        if key not in _EXTRACTIONS:
            import transfer

            transfer.load_tensorflow()
            _EXTRACTIONS[key] = open_extraction(description), set()
            WORKER["loads"] += 1
        return _EXTRACTIONS[key]


def worker_marks() -> dict:
    """What this process did as a worker (`WORKER`), e.g. on every Dask worker:
    `client.run(transfer.features.beam.worker_marks)`."""
    return dict(WORKER)


def write_manifests(_examples, root: str, finishing: dict) -> None:
    """The final step: every extracted entry's manifest, listing its shards."""
    cache = FeatureCache(root)
    for key, size in finishing.items():
        cache.finish(key, size)


def _run(tasks: list, description: dict, cache: FeatureCache, finishing: dict, options: dict, progress: bool) -> None:
    dask = uses_dask(options)
    options = {**QUIET_WORKERS, **resolved_runner(options)}
    if dask:
        if not {"dask_npartitions", "dask_partition_size"} & set(options):  # else all tasks in one partition:
            options["dask_npartitions"] = len(tasks)  # one worker; a partition is also a bundle (one `setup`)
    workers = None
    if dask and options.get("dask_client_address"):
        with parked_stderr(keep=(TransferError,)):
            workers = dask_workers(options["dask_client_address"])
    pipeline_options = PipelineOptions.from_dictionary({name: beam_value(value) for name, value in options.items()})
    runner = None if "runner" in options else local_runner(pipeline_options)
    if progress:
        print(f"beam: {len(tasks)} shard task(s) for {len(finishing)} entr{'y' if len(finishing) == 1 else 'ies'} on "
              f"{_where(options, workers)}", flush=True)
    # Beam's workers and runner log their start-up, channels and notices to fd 2: parked, shown if it fails
    with parked_stderr(keep=(TransferError,)), _progress_bar(tasks) if progress else contextlib.nullcontext():
        result = None
        try:
            pipeline = beam.Pipeline(runner=runner, options=pipeline_options)
            examples = (pipeline
                        | "Shards" >> beam.Create(tasks)
                        | "Spread" >> beam.Reshuffle()  # else Create's one bundle goes to one worker (Dask: a no-op)
                        | "Extract" >> beam.ParDo(ExtractShards(description)))  # on Dask, the last step
            if not dask:  # (Beam's local runner notices a dead worker process only at a later stage)
                _ = (examples
                     | "Examples" >> beam.CombineGlobally(sum)
                     | "Manifests" >> beam.Map(write_manifests, str(cache.root), finishing))
            result = pipeline.run()
            result.wait_until_finish()
        except TransferError:
            raise
        except Exception as error:  # a worker's TransferError arrives wrapped in Beam's error
            raise _said(error, dask) from None
        finally:
            client = getattr(result, "client", None)  # the DaskRunner's connection to the scheduler
            if client is not None:
                client.close()


def local_runner(options: PipelineOptions):
    """Beam's FnApiRunner, made as Beam's DirectRunner makes it after its Prism attempt (with the
    pipeline options for the workers it starts), minus that attempt: nothing is downloaded."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def dask_workers(address: str) -> int:
    """How many workers the Dask cluster at `address` has, each checked to have transfer and
    Apache Beam installed in the versions this process runs: a worker that cannot read its task
    is closed by Dask, and the run would wait for other workers forever."""
    import distributed

    with distributed.Client(address) as client:
        for package in ("transfer", "apache-beam"):
            here = importlib.metadata.version(package)
            versions = client.run(importlib.metadata.version, package, on_error="return")
            for worker, found in versions.items():
                if isinstance(found, Exception):
                    raise TransferError(f"Dask worker {worker} has no {package} installed: every worker needs "
                                        f"transfer installed with its extras ({package} {here} here)")
                if found != here:
                    raise TransferError(f"Dask worker {worker} has {package} {found}, this process {here}: every "
                                        "worker needs the same versions")
        return len(versions)


def _where(options: dict, workers: int | None = None) -> str:
    """The runner, as the progress line names it."""
    runner = options.get("runner", LOCAL_RUNNER).rsplit(".", 1)[-1]
    if runner == "DaskRunner":
        address = options.get("dask_client_address")
        return (f"DaskRunner, scheduler {address} ({workers} worker{'' if workers == 1 else 's'}"
                f"{': the run waits for some' if workers == 0 else ''})" if address else
                "DaskRunner, a new local Dask cluster") + \
            f", {options.get('dask_npartitions', 'by partition size')} partitions"
    if runner == LOCAL_RUNNER and "runner" not in options:
        runner += " (Beam's local runner, pinned: nothing downloaded)"
    workers = f", {options['direct_num_workers']} workers" if "direct_num_workers" in options else ""
    return runner + workers


def _said(error: Exception, dask: bool) -> Exception:
    """A pipeline's failure as one line where it is the user's or a worker's, else as it is."""
    text = f"{type(error).__name__}: {error}"
    message = re.search(r"TransferError: (.+)", text)
    if message:
        return TransferError(message.group(1).strip())
    lost = next((sign for sign in WORKER_LOST if sign in text), None)
    if lost:
        return TransferError(f"a Beam worker stopped mid-pipeline ({lost}); the shards finished so far are kept: run "
                             "the same command again to complete the entries")
    if dask and type(error).__name__ == "KilledWorker":
        return TransferError("a Dask worker died mid-pipeline while extracting (the scheduler gave up on its task: "
                             "KilledWorker); the shards finished so far are kept: run the same command again to "
                             "complete the entries")
    if dask and isinstance(error, ModuleNotFoundError):
        return TransferError(f"a Dask worker cannot import {error.name!r}: every worker needs transfer (with its "
                             "extras) installed, in the same versions as here")
    if dask and isinstance(error, OSError) and "connect" in str(error):  # Dask's client, e.g. not a scheduler there
        return TransferError(f"the Dask scheduler: {error}")
    return error


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
