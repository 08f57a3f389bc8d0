"""Extraction as an Apache Beam pipeline (`--runner beam`), on Beam's local runner and on a real
dask.distributed cluster (`--runner dask`: a scheduler and two worker processes started here), and
caches outside the local disk (`ram://`): the same entries as a plain extract, byte for byte;
reruns, kills, bad input, and no connection made beyond this machine."""
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from transfer import datasets
from transfer.features.cache import FeatureCache
from transfer.cli.main import main
from cli_checks import user_error
from transfer.errors import TransferError, TransferWarning
from transfer.features.inputs import open_inputs
from transfer.features.runners import BeamRunner, get_runner

DATA = "digits:5-9?per_class=10"
TWO_WORKERS = {"direct_num_workers": "2", "direct_running_mode": "multi_processing"}


def digests(root) -> dict:
    """sha256 of every file under a cache directory (local or any tf.io.gfile location)."""
    found = {}
    for directory, _, names in tf.io.gfile.walk(str(root)):
        for name in names:
            path = f"{directory.rstrip('/')}/{name}"
            with tf.io.gfile.GFile(path, "rb") as handle:
                found[path[len(str(root).rstrip("/")) + 1:]] = hashlib.sha256(handle.read()).hexdigest()
    return found


def stamps(root: Path) -> dict:
    """Each file's modification time, but the entries' last-use marks (every use touches them)."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != ".used"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plain extraction of two cuts (shards of 64 examples): what Beam must write, byte for byte."""
    root = tmp_path_factory.mktemp("plain")
    open_inputs("example:digits", DATA, cut="block1_out,block2_out").extract(root, shard_size=64, progress=False)
    return digests(root)


def test_beam_writes_the_plain_entries_byte_for_byte_and_a_rerun_skips_them(tmp_path, plain, capsys):
    inputs = open_inputs("example:digits", DATA, cut="block1_out,block2_out")
    entries = inputs.extract(tmp_path, shard_size=64, runner=get_runner("beam"))
    assert "beam: 15 shard task(s) for 6 entries on FnApiRunner (Beam's local runner, pinned: nothing downloaded)" \
        in capsys.readouterr().out
    assert digests(tmp_path) == plain and len(plain) == 6 * 3 + 2 * 2 * 15  # lock, use mark, manifest; 15 shards a cut
    assert [entry.count for entry in entries["test"]] == [667, 667] and all(e.complete for e in entries["test"])
    before = stamps(tmp_path)
    again = inputs.extract(tmp_path, shard_size=64, runner=get_runner("beam"))
    assert stamps(tmp_path) == before and "beam:" not in capsys.readouterr().out  # nothing to do: no pipeline
    assert [e.key for e in again["test"]] == [e.key for e in entries["test"]]


def test_beam_repairs_a_corrupt_shard_and_completes_what_a_plain_run_started(tmp_path, plain):
    """Corrupt shard: recomputed alone, the same bytes. A plain run cut short: Beam extracts
    only the shards after it, in the layout it recorded."""
    inputs = open_inputs("example:digits", DATA, cut="block1_out,block2_out")
    inputs.extract(tmp_path, shard_size=64, progress=False)
    entry = inputs.extract(tmp_path, progress=False)["test"][1]
    shard = entry.path / entry.manifest["shards"][3]["features"]
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\0")
    manifest = json.loads((entry.path / "manifest.json").read_text())
    other = inputs.extract(tmp_path, progress=False)["validation"][0]
    cut_short = json.loads((other.path / "manifest.json").read_text())
    cut_short["shards"], cut_short["complete"] = cut_short["shards"][:1], False  # as if killed after one shard
    (other.path / "manifest.json").write_text(json.dumps(cut_short, indent=1))
    for name in ("features-00001.npy", "labels-00002.npy"):
        (other.path / name).unlink()
    untouched = {p: t for p, t in stamps(tmp_path).items() if p.parent != entry.path and p.parent != other.path}
    other_batches = open_inputs("example:digits", DATA, cut="block1_out,block2_out", batch_size=8)
    # the recorded layout wins
    other_batches.extract(tmp_path, shard_size=999, runner=get_runner("beam"), progress=False)
    assert digests(tmp_path) == plain
    assert json.loads((entry.path / "manifest.json").read_text()) == manifest
    assert {p: t for p, t in stamps(tmp_path).items() if p in untouched} == untouched


@pytest.mark.slow
def test_two_worker_processes_write_the_plain_entries(tmp_path, plain):
    inputs = open_inputs("example:digits", DATA, cut="block1_out,block2_out")
    inputs.extract(tmp_path, shard_size=64, progress=False, runner=BeamRunner(TWO_WORKERS))
    assert digests(tmp_path) == plain


@pytest.mark.slow
def test_fit_and_a_thawed_sweep_extract_on_beam(tmp_path, capsys):
    """fit --runner beam fills the cache (a plain fit then finds it); a thaw's prefix (a recut
    backbone) is rebuilt on the workers as well."""
    argv = ["fit", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA, "--epochs", "2",
            "--export", "none", "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--runner", "beam", "--out", str(tmp_path / "beam")]) == 0
    assert "beam: 3 shard task(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "beam" / "config.json").read_text())["runner"] == "beam"
    before = stamps(tmp_path / "cache")
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert stamps(tmp_path / "cache") == before
    inputs = open_inputs("example:digits", DATA, cut="block2_out")
    from transfer.layers.thawing import ThawedFeatureLayer

    layer = ThawedFeatureLayer(inputs.backbone, last=1)
    inputs.cached_prefix(layer, tmp_path / "prefix-plain", progress=False)
    inputs.cached_prefix(layer, tmp_path / "prefix-beam", progress=False, runner=get_runner("beam"))
    assert digests(tmp_path / "prefix-beam") == digests(tmp_path / "prefix-plain")
    assert "runs the extraction into the feature cache" in user_error(
        capsys, [*argv[:-2], "--runner", "beam", "--out", str(tmp_path / "uncached")])


# -- a cache outside the local disk (TensorFlow's in-memory file system) ---------------------------


def test_a_ram_cache_holds_the_plain_entries_and_trains(tmp_path, plain, capsys):
    inputs = open_inputs("example:digits", DATA, cut="block1_out,block2_out")
    for runner in ("local", "beam"):
        root = f"ram://transfer-{runner}/cache"
        with pytest.warns(TransferWarning, match=f"cache {root} is not on the local disk: its entries have no lock"):
            entries = inputs.extract(root, shard_size=64, runner=get_runner(runner), progress=False)
        assert digests(root) == {name: digest for name, digest in plain.items()  # no locks, no use marks there
                                 if not name.endswith((".lock", ".used"))}
    assert entries["test"][0].path.name == entries["test"][0].key and str(entries["test"][0].path).startswith("ram://")
    local = FeatureCache(tmp_path).entries()
    with pytest.warns(TransferWarning):
        features = inputs.cached_features("ram://transfer-beam/cache", progress=False)
    (first, second), labels = next(iter(features.test.batch(700)))
    expected = open_inputs("example:digits", DATA, cut="block2_out").cached_features(tmp_path, progress=False)
    np.testing.assert_array_equal(second, next(iter(expected.test.batch(700)))[0])
    assert first.shape == (667, 8, 8, 16) and labels.shape == (667,) and not local
    assert main(["cache", "verify", "--cache-dir", "ram://transfer-beam/cache", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and all(row["complete"] and row["bad_shards"] == [] for row in rows)
    assert main(["extract", "--backbone", "example:digits", "--cut", "block2_out", "--data", DATA,
                 "--cache-dir", "ram://transfer-beam/cache", "--json"]) == 0
    err = capsys.readouterr().err.strip().splitlines()  # --json: the stage lines on stderr, then the warning
    assert [line.split(" split from the cache (entry ")[0] for line in err[:-1]] == [
        f"features: the {role}" for role in ("train", "validation", "test")]
    assert err[-1] == ("transfer extract: warning: cache ram://transfer-beam/cache is not on the local disk: its "
                       "entries have no lock, so two extractions must not fill the same entry at once (a rerun after a "
                       "killed one is safe)")
    assert main(["cache", "rm", "--cache-dir", "ram://transfer-beam/cache", "--all"]) == 0
    assert not tf.io.gfile.glob("ram://transfer-beam/cache/*/manifest.json")


# -- a pipeline killed mid-way -----------------------------------------------------------------------

def _error_line(err: str) -> str:
    """The one error line a failed command ends with; what comes before it is only stage lines
    (`--json` prints them on stderr), never a traceback."""
    lines = err.strip().splitlines()
    assert lines and not any("Traceback" in line or ": error:" in line for line in lines[:-1]), err[-2000:]
    return lines[-1]


EXTRACT_DIGITS = ["extract", "--backbone", "example:digits", "--cut", "block1_out", "--data", "digits:0-4",
                  "--validation-split", "0", "--batch-size", "1", "--shard-size", "50", "--json"]  # 901: 19 shards


def beam_workers(session: int) -> list:
    """The Beam SDK worker processes of a session, read from /proc (not `ps`, whose output
    width and options vary between machines); the `sh -c` wrapping a worker is left out."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if int(fields[3]) == session and b"sdk_worker_main" in b" ".join(argv) and not argv[0].endswith(b"sh"):
            found.append(int(stat.parent.name))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("killed_process", ["worker", "launcher"])
def test_killed_pipeline_reruns_to_the_plain_entry(tmp_path, killed_process):
    """`kill -9` of one worker process of a two-worker `transfer extract --runner beam` (the
    command stops with one line, exit 2), or of the command with its workers, while shards are
    being written; a Beam rerun and a plain rerun each complete the entry exactly as a clean
    plain extraction writes it."""
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "transfer.cli", *EXTRACT_DIGITS, "--cache-dir", str(killed),
                                "--runner", "beam", *[f"--beam-option={k}={v}" for k, v in TWO_WORKERS.items()]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and len(list(killed.glob("*/.shard-*.json"))) < 4:
        time.sleep(0.02)
    assert process.poll() is None, f"the pipeline ended before the kill: {process.communicate()[1][-2000:]}"
    if killed_process == "worker":
        workers = beam_workers(session=process.pid)
        assert workers, "no Beam worker process found in the command's session"
        os.kill(workers[0], signal.SIGKILL)
        err = _error_line(process.communicate(timeout=120)[1])  # after --json's stage lines on stderr
        assert process.returncode == 2, err[-2000:]
        assert err.startswith("transfer extract: error: a Beam worker stopped mid-pipeline (") and err.endswith(
            "); the shards finished so far are kept: run the same command again to complete the entries")
    else:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes
        process.wait()
    (entry,) = [path.parent for path in killed.glob("*/manifest.json")]
    partial = json.loads((entry / "manifest.json").read_text())
    finished = list(entry.glob(".shard-*.json"))
    assert not partial["complete"] and partial["shard_size"] == 50 and 4 <= len(finished) < 19, \
        "the kill must land mid-pipeline"
    shutil.copytree(killed, tmp_path / "killed-then-plain")
    assert main([*EXTRACT_DIGITS, "--cache-dir", str(killed), "--runner", "beam"]) == 0
    assert main([*EXTRACT_DIGITS, "--cache-dir", str(tmp_path / "killed-then-plain")]) == 0
    assert main([*EXTRACT_DIGITS, "--cache-dir", str(tmp_path / "clean")]) == 0
    clean = digests(tmp_path / "clean")
    assert len(clean) == 3 + 2 * 19  # lock, use mark, manifest, 19 shards
    assert digests(killed) == clean and digests(tmp_path / "killed-then-plain") == clean


# -- bad input: one line, exit 2 ---------------------------------------------------------------------



def test_bad_runner_and_beam_options(capsys):
    extract = ["extract", "--backbone", "example:digits", "--data", DATA]
    with pytest.raises(SystemExit) as exit_:
        main([*extract, "--runner", "spark"])
    assert exit_.value.code == 2 and "invalid choice: 'spark' (choose from 'local', 'beam', 'dask')" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*extract, "--runner", "beam", "--beam-option", "direct_num_workers"])
    assert exit_.value.code == 2 and "expected KEY=VALUE (a Beam pipeline option), got 'direct_num_workers'" in \
        capsys.readouterr().err
    err = user_error(capsys, [*extract, "--runner", "beam", "--beam-option", "direct_num_worker=2"])
    assert err.endswith("Beam has no pipeline option 'direct_num_worker'; did you mean direct_num_workers, "
                        "num_workers, max_num_workers?")
    err = user_error(capsys, [*extract, "--runner", "beam", "--beam-option", "direct_running_mode=fast"])
    assert "direct_running_mode=fast: argument --direct_running_mode: invalid choice: 'fast'" in err
    assert "sets a Beam pipeline option: add --runner beam" in user_error(
        capsys, [*extract, "--beam-option", "direct_num_workers=2"])
    with pytest.raises(TransferError, match=r"runner='spark' \(--runner\) must be one of local, beam, dask"):
        get_runner("spark")


@pytest.mark.slow
def test_beam_missing_is_one_line_saying_what_to_install(tmp_path):
    code = ("import sys; sys.modules['apache_beam'] = None; from transfer.cli.main import main; "
            f"sys.exit(main(['extract', '--backbone', 'example:digits', '--data', {DATA!r}, '--runner', 'beam']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        "transfer extract: error: --runner beam needs Apache Beam: pip install 'transfer[beam]'")


def test_data_in_memory_cannot_be_sent_to_workers(tmp_path):
    splits = datasets.load(DATA)
    inputs = open_inputs("example:digits", splits, cut="block2_out")
    with pytest.raises(TransferError, match="loads the data again on every worker, from its spec"):
        inputs.extract(tmp_path, runner=get_runner("beam"), progress=False)
    inputs.extract(tmp_path, progress=False)  # once cached, nothing is sent anywhere
    assert inputs.extract(tmp_path, runner=get_runner("beam"), progress=False)["train"][0].complete


# -- nothing downloaded at run time ------------------------------------------------------------------

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def outbound_refused(monkeypatch):
    """Every connection (and name lookup) this process attempts to anything but this machine
    fails, and is listed (Beam's DirectRunner >= 2.68 fetches its Prism runner through these)."""
    attempts = []

    def refused(host) -> None:
        if str(host) not in LOCAL_HOSTS:
            attempts.append(host)
            raise OSError(f"test: no connection beyond this machine ({host})")

    connect, connect_ex, create_connection, getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                           socket.create_connection, socket.getaddrinfo)

    def watched(method):
        def attempt(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refused(address[0])
            return method(self, address, *args)
        return attempt

    def watched_creation(address, *args, **kwargs):
        refused(address[0])
        return create_connection(address, *args, **kwargs)

    def watched_lookup(host, *args, **kwargs):
        if host is not None:
            refused(host.decode() if isinstance(host, bytes) else host)
        return getaddrinfo(host, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(socket.socket, "connect", watched(connect))
        patched.setattr(socket.socket, "connect_ex", watched(connect_ex))
        patched.setattr(socket, "create_connection", watched_creation)
        patched.setattr(socket, "getaddrinfo", watched_lookup)
        yield attempts


def test_the_default_beam_run_connects_to_nothing_beyond_this_machine(tmp_path, plain, monkeypatch, capsys):
    with outbound_refused(monkeypatch) as attempts:
        with pytest.raises(OSError, match="no connection beyond this machine"):  # the watch works
            urllib.request.urlopen("https://example.com", timeout=5)
        assert attempts == ["example.com"]
        attempts.clear()
        open_inputs("example:digits", DATA, cut="block1_out,block2_out").extract(tmp_path, shard_size=64,
                                                                                 runner=get_runner("beam"))
    assert attempts == [], f"the pipeline tried to reach {attempts}"
    assert "on FnApiRunner (Beam's local runner, pinned: nothing downloaded)" in capsys.readouterr().out
    assert digests(tmp_path) == plain


# -- a dask.distributed cluster: a scheduler and two worker processes on this machine -----------------


@contextlib.contextmanager
def dask_cluster(workers: int = 2, preload=(), **config):
    """A `distributed.LocalCluster` of 2 worker processes (1 thread each) on 127.0.0.1, its
    scheduler in this process (`config`: dask settings it starts with), and a client to it."""
    import dask
    import distributed

    with dask.config.set(config), distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=40, preload=list(preload)) as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client


@pytest.fixture(scope="module")
def cluster():
    with dask_cluster() as started:
        yield started


def marks(client) -> dict:
    """What each worker process did: {worker address: {"loads": .., "shards": ..}}."""
    from transfer.features.beam import worker_marks

    return client.run(worker_marks)


@pytest.mark.slow
def test_a_dask_cluster_writes_the_plain_entries_on_both_workers(tmp_path, plain, cluster, monkeypatch, capsys):
    """`--runner beam --beam-option runner=DaskRunner`: the plain entries, file for file; both
    workers extracted shards and loaded the backbone once each (a Dask bundle, with its own
    `setup`, is one task); the launcher connects to nothing but the scheduler here; `--runner
    dask` says the same, and a rerun finds everything done."""
    scheduler, client = cluster
    argv = ["extract", "--backbone", "example:digits", "--cut", "block1_out,block2_out", "--data", DATA,
            "--shard-size", "64", "--cache-dir", str(tmp_path / "cache"), "--json"]
    before = marks(client)
    with outbound_refused(monkeypatch) as attempts:
        assert main([*argv, "--runner", "beam", "--beam-option", "runner=DaskRunner",
                     "--beam-option", f"dask_client_address={scheduler.scheduler_address}"]) == 0
    assert attempts == [], f"the launcher tried to reach {attempts}"
    assert digests(tmp_path / "cache") == plain
    after = marks(client)
    assert len(after) == 2 and all(after[w]["shards"] > before.get(w, {}).get("shards", 0) for w in after), after
    assert sum(after[w]["shards"] - before.get(w, {}).get("shards", 0) for w in after) == 15
    assert all(m["loads"] == 1 for m in after.values()), after
    capsys.readouterr()
    stamped = stamps(tmp_path / "cache")
    assert main([*argv[:-1], "--runner", "dask", "--beam-option",
                 f"dask_client_address={scheduler.scheduler_address}"]) == 0
    assert stamps(tmp_path / "cache") == stamped and "beam:" not in capsys.readouterr().out


@pytest.mark.slow
def test_dask_writes_the_manifests_of_a_pass_over_every_split(tmp_path, cluster, capsys):
    """Three entries of one shard each (the Python API's `get_runner("dask", ...)`): every manifest
    is complete, the tasks' records folded into it, and the progress line names the cluster."""
    scheduler, client = cluster
    root = tmp_path / "cache"
    inputs = open_inputs("example:digits", DATA, cut="block2_out")
    entries = inputs.extract(root, runner=get_runner("dask", {"dask_client_address": scheduler.scheduler_address}))
    out = capsys.readouterr().out
    assert f"on DaskRunner, scheduler {scheduler.scheduler_address} (2 workers), 3 partitions" in out
    plain_root = tmp_path / "plain"
    inputs.extract(plain_root, progress=False)
    assert digests(root) == digests(plain_root) and all(e.complete for split in entries.values() for e in split)
    assert not list(root.glob("*/.shard-*.json"))  # the tasks' records, folded into the manifests


@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures", [0, 3])
def test_a_dask_worker_killed_mid_run_keeps_its_finished_shards_and_a_rerun_completes_them(tmp_path, allowed_failures):
    """`kill -9` of one worker process while `transfer extract --runner dask` runs. With the
    scheduler set to give up on a task whose worker dies (allowed-failures 0), the command stops
    with one line, exit 2, the shards finished so far stay, and the same command again completes
    the entry without computing them again. With Dask's default (3), the scheduler runs the dead
    worker's tasks again on the other worker and the command completes by itself. Either way the
    entry is exactly what a plain extraction writes."""
    with dask_cluster(**{"distributed.scheduler.allowed-failures": allowed_failures}) as (scheduler, client):
        killed = tmp_path / "killed"
        command = [*EXTRACT_DIGITS, "--cache-dir", str(killed), "--runner", "dask",
                   "--beam-option", f"dask_client_address={scheduler.scheduler_address}"]
        pids = client.run(os.getpid)
        process = subprocess.Popen([sys.executable, "-m", "transfer.cli", *command], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None and len(list(killed.glob("*/.shard-*.json"))) < 4:
            time.sleep(0.02)
        assert process.poll() is None, f"the pipeline ended before the kill: {process.communicate()[1][-2000:]}"
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        err = process.communicate(timeout=180)[1].strip()
        (entry,) = [path.parent for path in killed.glob("*/manifest.json")]
        if allowed_failures:
            assert process.returncode == 0, err[-2000:]
            assert json.loads((entry / "manifest.json").read_text())["complete"]
        else:
            assert process.returncode == 2, err[-2000:]
            assert _error_line(err) == (
                "transfer extract: error: a Dask worker died mid-pipeline while extracting (the scheduler gave up on "
                "its task: KilledWorker); the shards finished so far are kept: run the same command again to "
                "complete the entries")
            finished = list(entry.glob(".shard-*.json"))
            assert not json.loads((entry / "manifest.json").read_text())["complete"] and 4 <= len(finished) < 19
            kept = {path.name: path.stat().st_mtime_ns for path in entry.glob("features-*.npy")}
            assert main(command) == 0
            assert {name: (entry / name).stat().st_mtime_ns for name in kept} == kept  # not computed again
    assert main([*EXTRACT_DIGITS, "--cache-dir", str(tmp_path / "clean")]) == 0
    assert digests(killed) == digests(tmp_path / "clean")


@pytest.mark.slow
def test_a_dask_worker_without_transfer_is_one_line(tmp_path, capsys):
    """Dask closes a worker that cannot unpickle its task, and the run would wait for others
    forever: the launcher asks every worker first."""
    hidden = tmp_path / "transfer_not_installed.py"
    hidden.write_text("import importlib.metadata as metadata\n"
                      "installed = metadata.version\n"
                      "def version(name):\n"
                      "    if name == 'transfer':\n"
                      "        raise metadata.PackageNotFoundError(name)\n"
                      "    return installed(name)\n"
                      "metadata.version = version\n")
    with dask_cluster(workers=1, preload=[str(hidden)]) as (scheduler, _):
        user_error(capsys, ["extract", "--backbone", "example:digits", "--data", DATA, "--cache-dir", tmp_path / "c",
                            "--runner", "dask", "--beam-option", f"dask_client_address={scheduler.scheduler_address}"],
                   r"^transfer extract: error: Dask worker tcp://127\.0\.0\.1:\d+ has no transfer installed: every "
                   r"worker needs transfer installed with its extras \(transfer \S+ here\)$")
    assert not list((tmp_path / "c").glob("*/.shard-*"))


def test_a_dask_address_nobody_listens_at_is_one_line_within_seconds(capsys):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    err = user_error(capsys, ["extract", "--backbone", "example:digits", "--data", DATA, "--runner", "dask",
                              "--beam-option", f"dask_client_address=tcp://127.0.0.1:{port}"])
    assert time.monotonic() - started < 10
    assert err == (f"transfer extract: error: --beam-option dask_client_address=tcp://127.0.0.1:{port}: no Dask "
                   "scheduler answers (nothing listens there); start one (`dask scheduler`, then `dask worker "
                   "ADDRESS` on each machine) or give its address")
    assert "--runner dask runs on Beam's DaskRunner, not --beam-option runner=DirectRunner" in user_error(
        capsys, ["extract", "--backbone", "example:digits", "--data", DATA, "--runner", "dask",
                 "--beam-option", "runner=DirectRunner"])
    assert "did you mean dask_client_address" in user_error(
        capsys, ["extract", "--backbone", "example:digits", "--data", DATA, "--runner", "dask",
                 "--beam-option", "dask_client_adress=127.0.0.1:8786"])
