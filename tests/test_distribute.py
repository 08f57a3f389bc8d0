"""Training under a tf.distribute strategy (issue 14 item 3): two logical CPUs, two workers on
127.0.0.1, and the strategy's bad inputs. Logical devices and MultiWorkerMirroredStrategy must
be set up before TensorFlow starts, so those runs are subprocesses (with timeouts)."""
import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

import keras
import transfer

from transfer.training import distribute
from transfer.choices import STRATEGIES
from transfer.cli.main import main
from transfer.errors import TransferError

DIGITS = "digits:5-9?per_class=10"
FIT = ["fit", "--backbone", "example:digits", "--cut", "block2_out", "--head-opt", "pooling=flatten",
       "--data", DIGITS, "--lr", "0.01"]
QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_python(code: str, timeout: float = 120, cwd=None, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh Python, so that it configures TensorFlow before TensorFlow starts."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**QUIET, **env})


def last_json_line(output: str):
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess or two: ~35 s of CPU each
def test_mirrored_over_two_logical_cpus_learns_as_well_as_one_device(tmp_path):
    """Same data, seed and global batch: the replicas' summed gradients are the one device's
    (exactly so without shuffling, see the second check); the shuffle order under a strategy
    differs (the distributed dataset is a rewritten pipeline), hence "within seed noise"."""
    done = run_python("""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np, transfer
        from transfer.training.distribute import fit_model

        def run(strategy):
            result = transfer.fit("example:digits", "digits:5-9?per_class=20", cut="block2_out", head="linear",
                                  head_options={"pooling": "flatten"}, epochs=12, lr=0.01, verbose=0,
                                  strategy=strategy)
            return result.metrics["test"]["accuracy"]

        def unshuffled(strategy):
            keras.utils.set_random_seed(0)
            x = np.random.default_rng(0).normal(size=(50, 8)).astype("float32")
            y = (np.arange(50) % 3).astype("int32")
            with strategy.scope():
                model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
                model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            fit_model(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=2)
            return [w.tolist() for w in model.get_weights()]

        def thawed(strategy):  # thawed layers from the cache, two stages, a GroupedOptimizer: how far they moved
            result = transfer.fit("example:digits", "digits:5-9?per_class=10", cut="resnet_features", epochs=3,
                                  thaw=2, head_epochs=1, thaw_epochs=2, thaw_lr_scale=0.5, lr=0.01, verbose=0,
                                  cache_dir="cache", export=(), strategy=strategy)
            layer = result.model.get_layer("features")
            trained = [w.numpy() for w in layer.thawed_weights]
            layer.restore_pretrained()
            moved = max(float(np.abs(t - w.numpy()).max()) for t, w in zip(trained, layer.thawed_weights))
            return {"moved": moved, "stages": result.history["stage"]}

        mirrored = transfer.training.distribute.strategy_named("mirrored")
        print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "one": run("default"),
                          "two": run(mirrored), "weights_one": unshuffled(tf.distribute.get_strategy()),
                          "weights_two": unshuffled(mirrored), "thawed": thawed(mirrored)}))
    """, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = last_json_line(done.stdout)
    assert found["replicas"] == 2
    assert found["one"] > 0.7 and found["two"] > 0.7  # chance is 0.2
    assert abs(found["one"] - found["two"]) < 0.1
    for one, two in zip(found["weights_one"], found["weights_two"]):
        assert np.allclose(one, two, atol=1e-5)
    assert found["thawed"]["stages"] == [1, 2, 2] and found["thawed"]["moved"] > 1e-4


class Recorder(keras.callbacks.Callback):
    """What callbacks see: every hook in order, and the logs of each epoch."""

    def __init__(self):
        super().__init__()
        self.events, self.epochs = [], []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(f"batch_end {batch} {sorted(logs)}")

    def on_test_begin(self, logs=None):
        self.events.append("test_begin")

    def on_test_batch_end(self, batch, logs=None):
        self.events.append(f"test_batch_end {batch} {sorted(logs)}")

    def on_test_end(self, logs=None):
        self.events.append(f"test_end {sorted(logs)}")

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(dict(logs))

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def fit_by(loop, class_weight=None):
    """A small model trained on fixed batches by `loop`; what it and its callbacks ended with."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype("float32"), (np.arange(40) % 3).astype("int32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(2.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])  # lr 2: val_loss soon stops improving, early stopping ends the run
    recorder = Recorder()
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = loop(model, batches, validation=batches, epochs=20, callbacks=[recorder, stopper],
                   class_weight=class_weight)
    return history.history, recorder, stopper, model.get_weights()


@pytest.mark.parametrize("class_weight", [None, {0: 1.0, 1: 3.0, 2: 0.5}])
def test_the_step_loop_keeps_model_fits_contract(class_weight):
    """The multi-worker loop (here under the default strategy) against Keras' model.fit: the
    same history, hooks, logs, early stopping and restored weights."""
    def step_loop(model, train, *, validation, epochs, callbacks, class_weight):
        return distribute._StepLoop(model).fit(train, validation, epochs, callbacks, class_weight, verbose=0)

    keras_history, keras_seen, keras_stop, keras_weights = fit_by(distribute.fit_model, class_weight)
    history, seen, stop, weights = fit_by(step_loop, class_weight)
    assert keras_stop.stopped_epoch > 0 and stop.stopped_epoch == keras_stop.stopped_epoch
    assert stop.best_epoch == keras_stop.best_epoch
    assert seen.events == keras_seen.events
    assert len(seen.epochs) == len(keras_seen.epochs)
    for mine, theirs in zip(seen.epochs, keras_seen.epochs):
        assert mine == pytest.approx(theirs, abs=1e-5)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"} == set(keras_history)
    for name, values in keras_history.items():
        assert np.allclose(history[name], values, atol=1e-5), name
    for mine, theirs in zip(weights, keras_weights):
        assert np.allclose(mine, theirs, atol=1e-5)


def test_mirrored_with_one_device_trains_and_says_so(tmp_path, capsys):
    code = main([*FIT, "--epochs", "2", "--strategy", "mirrored", "--export", "none", "--out", str(tmp_path / "run")])
    assert code == 0
    assert "warning: --strategy mirrored over 1 device (CPU:0): the same as default" in capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] == {"name": "mirrored", "replicas": 1}


def test_fit_takes_any_strategy_instance(tmp_path):
    result = transfer.fit("example:digits", DIGITS, cut="block2_out", head_options={"pooling": "flatten"}, epochs=2,
                          lr=0.01, verbose=0, export=(), out=tmp_path / "run",
                          strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert result.run_dir == tmp_path / "run" and len(result.history["loss"]) == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] == {"name": "OneDeviceStrategy", "replicas": 1}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_worker(index: int, hosts: list[str], arguments: list[str], home):
    """One `transfer` process of the cluster, in its own working and temporary directories."""
    (home / "tmp").mkdir(parents=True)
    tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    return subprocess.Popen([sys.executable, "-m", "transfer.cli", *arguments], cwd=home, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**QUIET, "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(home / "tmp")})


def finish(workers, timeout: float) -> list[tuple[int, str, str]]:
    """Every worker's (exit status, stdout, stderr); all are killed if one hangs."""
    try:
        return [(worker.wait(timeout=timeout), *worker.communicate()) for worker in workers]
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
        raise


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.slow  # a subprocess or two: ~35 s of CPU each
def test_two_workers_on_localhost_train_one_model_and_only_the_chief_writes(tmp_path):
    """`--strategy multiworker` as two processes, where Keras' model.fit cannot run and the step
    loop does: thawed layers from the shared feature cache, their GroupedOptimizer, gradual
    unfreezing, class weights and TensorBoard's callback. Both end with the same model; the
    chief writes the run directory, worker 1 nothing (its temporary directory is removed)."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    out = tmp_path / "run"
    arguments = ["fit", "--backbone", "example:digits", "--cut", "resnet_features", "--data", DIGITS, "--lr", "0.01",
                 "--epochs", "3", "--thaw", "2", "--unfreeze-every", "1", "--thaw-lr-scale", "0.5",
                 "--class-weight", "balanced", "--cache-dir", str(tmp_path / "cache"), "--tensorboard",
                 "--strategy", "multiworker", "--out", str(out), "--json"]
    workers = [start_worker(index, hosts, arguments, tmp_path / f"worker{index}") for index in range(2)]
    (chief_code, chief_out, chief_err), (other_code, other_out, other_err) = finish(workers, timeout=240)
    assert chief_code == 0, chief_err[-3000:]
    assert other_code == 0, other_err[-3000:]
    chief, other = json.loads(chief_out), json.loads(other_out)
    assert chief.pop("train_seconds") > 0 and other.pop("train_seconds") > 0
    assert chief.pop("run_dir") == str(out) and other.pop("run_dir") is None  # the chief writes the run
    assert chief == other  # one model: the same metrics, the same epoch kept
    assert chief["training"]["epochs_run"] == 3 and chief["test"]["accuracy"] > 0.3  # chance is 0.2
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == {"name": "multiworker", "replicas": 2}
    with open(out / "history.csv") as handle:
        assert next(csv.reader(handle)) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert {"model.keras", "metrics.json", "export", "tensorboard/train"} <= set(files_under(out))
    assert files_under(tmp_path / "worker1") == ["tmp"]  # neither a run directory nor temporary files
    assert files_under(tmp_path / "worker0") == ["tmp"]
    assert not (tmp_path / "run.partial").exists()


@pytest.mark.slow  # two subprocesses: ~30 s of CPU
def test_a_worker_killed_mid_training_stops_the_other_with_one_line(tmp_path):
    """TensorFlow's health check aborts the collectives of the worker left alone: it exits 2 with
    one line, and its run directory is not left half-written."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    arguments = [*FIT, "--epochs", "500", "--patience", "500", "--strategy", "multiworker", "--export", "none",
                 "--out", str(tmp_path / "run")]
    workers = [start_worker(index, hosts, arguments, tmp_path / f"worker{index}") for index in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run.partial").exists() and time.monotonic() < deadline:  # the chief trains now
            time.sleep(0.5)
        time.sleep(3)
        workers[1].kill()
        code, _, err = finish(workers[:1], timeout=120)[0]
    finally:
        for worker in workers:
            worker.kill()
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("transfer fit: error: a worker of the cluster is gone, so training stopped (")
    assert last.endswith("start every worker again") and "Traceback" not in err
    assert not list(tmp_path.glob("run*"))


@pytest.mark.slow
def test_sweep_trains_every_setting_under_the_strategy(tmp_path, capsys):
    """One strategy for the whole sweep, the best setting's fit run included (a second
    MirroredStrategy inside the first one's scope would be refused by TensorFlow)."""
    code = main(["sweep", "--backbone", "example:digits", "--cut", "resnet_features", "--data", DIGITS,
                 "--thaw", "0,1", "--epochs", "2", "--strategy", "mirrored", "--export", "none",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sweep")])
    assert code == 0, capsys.readouterr().err
    best = json.loads((tmp_path / "sweep" / "best" / "config.json").read_text())
    assert best["strategy"] == {"name": "mirrored", "replicas": 1}
    assert len(json.loads((tmp_path / "sweep" / "sweep.json").read_text())) == 2


@pytest.mark.parametrize("tf_config, message", [
    (None, "TF_CONFIG, which is not set"),
    ("{cluster", "TF_CONFIG is not JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no cluster"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', "TF_CONFIG has no task"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}',
     "TF_CONFIG task type 'chief' is not in its cluster; valid: worker"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG task index 2 names worker 2, but the cluster has 2 worker(s): valid indices 0 to 1"),
])
def test_a_bad_tf_config_is_one_line_naming_what_is_wrong(tf_config, message, monkeypatch, capsys, tmp_path):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert main([*FIT, "--strategy", "multiworker", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("tf_config", [
    {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}},
    {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief"}},  # index 0 when not given
])
def test_a_good_tf_config_passes_as_tensorflow_reads_it(tf_config):
    assert distribute.check_tf_config(json.dumps(tf_config)) == tf_config


@pytest.mark.slow
def test_a_worker_whose_address_is_taken_says_so():
    """Two workers started with the same task index: the second cannot bind its address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        hosts = [f"127.0.0.1:{taken.getsockname()[1]}", f"127.0.0.1:{free_ports(1)[0]}"]
        done = run_python("""
            import transfer
            from transfer.training.distribute import strategy_named
            try:
                strategy_named("multiworker")
            except transfer.TransferError as error:
                print(error)
        """, timeout=90, TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 0}}))
    assert f"cannot start worker 0's server at {hosts[0]} (TF_CONFIG task): the address is taken" in done.stdout, \
        done.stderr[-2000:]


def test_unknown_strategy_names_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*FIT, "--strategy", "tpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --strategy: invalid choice: 'tpu' (choose from" in err
    assert all(name in err.splitlines()[-1] for name in STRATEGIES)
    with pytest.raises(TransferError, match="strategy='tpu' .--strategy. must be one of default, mirrored, "
                                            "multiworker"):
        distribute.strategy_named("tpu")
    with pytest.raises(TransferError, match="strategy=2 must be one of default, mirrored, multiworker or a "
                                            "tf.distribute.Strategy"):
        distribute.strategy_named(2)


@pytest.mark.slow
def test_multiworker_after_tensorflow_started_says_how_to_pass_a_strategy():
    """TensorFlow allows collective ops only before its first op; a script that ran TF already
    gets one line saying what to do instead of TF's RuntimeError."""
    done = run_python("""
        import json, tensorflow as tf, transfer
        from transfer.training.distribute import strategy_named
        tf.constant(1.0) + 1
        try:
            strategy_named("multiworker")
        except transfer.TransferError as error:
            print(error)
    """, TF_CONFIG=json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                               "task": {"type": "worker", "index": 0}}))
    assert "must be set up before TensorFlow runs anything" in done.stdout, done.stderr[-2000:]
    assert "strategy=" in done.stdout


@pytest.mark.slow  # two subprocesses
def test_a_sweep_trains_its_settings_together_on_two_workers(tmp_path):
    """Branches of one model (`transfer.training.branches`) under the step loop: both workers
    rank alike, their per-branch scores read through the strategy."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    arguments = ["sweep", "--backbone", "example:digits", "--cut", "resnet_features", "--data", DIGITS,
                 "--heads", "linear,mlp", "--lr", "0.01,0.03", "--epochs", "3", "--cache-dir", str(tmp_path / "cache"),
                 "--strategy", "multiworker", "--export", "none", "--out", str(tmp_path / "sweep"), "--json"]
    workers = [start_worker(index, hosts, arguments, tmp_path / f"worker{index}") for index in range(2)]
    (chief_code, chief_out, chief_err), (other_code, other_out, other_err) = finish(workers, timeout=300)
    assert chief_code == 0, chief_err[-3000:]
    assert other_code == 0, other_err[-3000:]
    ranked = [[(row["head"], row["lr"], row["val_accuracy_mean"]) for row in json.loads(out)["rows"]]
              for out in (chief_out, other_out)]
    assert ranked[0] == ranked[1] and len(ranked[0]) == 4
