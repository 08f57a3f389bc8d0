"""Where training runs: a `tf.distribute.Strategy` chosen by name, and the one training loop
that Keras' `model.fit` cannot run.

`strategy_named` turns `default|mirrored|multiworker` (or a Strategy) into the strategy; the
training code creates its variables in `strategy.scope()` and trains with `fit_model`, so it
does not branch on where it runs. `fit_model` is Keras' `model.fit` wherever that works (one
device, `MirroredStrategy`). Under `MultiWorkerMirroredStrategy` Keras 3's `model.fit` fails
(keras-team/keras#20585: `_maybe_symbolic_build` passes the first, per-replica batch to
`strategy.reduce`, which cannot convert it), so there `fit_model` runs Keras' own
`train_step`/`test_step` under `strategy.run` and keeps `model.fit`'s contract: the same
callbacks with the same logs, `stop_training`, the `History`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transfer import _compat
from transfer.errors import TransferError, TransferWarning, check_choice
from transfer.choices import STRATEGIES

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def strategy_named(strategy=None) -> tf.distribute.Strategy:
    """`strategy` if it is a Strategy already, else the one its name says: `default` (the
    strategy in scope, else one device), `mirrored` (every GPU, else every logical CPU of this
    machine) or `multiworker` (the machines of `TF_CONFIG`, read as TensorFlow reads it)."""
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy is not None and not isinstance(strategy, str):
        raise TransferError(f"strategy={strategy!r} must be one of {', '.join(STRATEGIES)} or a "
                            "tf.distribute.Strategy")
    check_choice("strategy", "default" if strategy is None else strategy, STRATEGIES, flag="--strategy")
    if strategy == "mirrored":
        return _mirrored()
    if strategy == "multiworker":
        return _multiworker()
    return tf.distribute.get_strategy()


def _mirrored() -> tf.distribute.MirroredStrategy:
    """Every GPU, else every logical CPU device (one, unless they were configured before TF started)."""
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) == 1:
        short = devices[0].split("device:")[-1]
        warnings.warn(f"--strategy mirrored over 1 device ({short}): the same as default", TransferWarning,
                      stacklevel=3)
    return tf.distribute.MirroredStrategy(devices)


def _multiworker() -> tf.distribute.MultiWorkerMirroredStrategy:
    """TensorFlow's own strategy and cluster resolver, after a check of TF_CONFIG that says what
    is wrong with it (TensorFlow would silently train alone without it, or fail deep inside)."""
    config = check_tf_config(os.environ.get("TF_CONFIG"))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()  # waits for every worker of the cluster
    except RuntimeError as error:  # "Collective ops must be configured at program startup"
        raise TransferError(f"--strategy multiworker must be set up before TensorFlow runs anything ({error}): "
                            "in your own script, create tf.distribute.MultiWorkerMirroredStrategy() first "
                            "and pass it as strategy=") from None
    except tf.errors.UnknownError:  # TF says no more than "UnknownError()": its server could not start
        kind, index = config["task"]["type"], config["task"].get("index", 0)
        raise TransferError(f"cannot start {kind} {index}'s server at {config['cluster'][kind][index]} (TF_CONFIG "
                            "task): the address is taken, by another program or by a worker started with the "
                            "same task index") from None


def check_tf_config(text: str | None) -> dict:
    """TF_CONFIG as a dict, or one line on what is wrong: missing, not JSON, no cluster, or a task
    that names a worker the cluster does not have."""
    if not text:
        raise TransferError(f"--strategy multiworker reads the cluster from TF_CONFIG, which is not set; "
                            f"set it in every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise TransferError(f"TF_CONFIG is not JSON ({error}): {text[:80]!r}; e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(isinstance(v, list) for v in cluster.values()):
        raise TransferError(f"TF_CONFIG has no cluster (a map of task type to host:port lists): {text[:80]!r}; "
                            f"e.g. {TF_CONFIG_EXAMPLE}")
    if not isinstance(task, dict) or "type" not in task:
        raise TransferError(f"TF_CONFIG has no task (this worker's type and index): {text[:80]!r}; "
                            f"e.g. {TF_CONFIG_EXAMPLE}")
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise TransferError(f"TF_CONFIG task type {kind!r} is not in its cluster; valid: {', '.join(cluster)}")
    hosts = cluster[kind]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(hosts):
        raise TransferError(f"TF_CONFIG task index {index!r} names {kind} {index!r}, but the cluster has "
                            f"{len(hosts)} {kind}(s): valid indices 0 to {len(hosts) - 1}")
    return config


def strategy_config(strategy: tf.distribute.Strategy) -> dict:
    """What a run records of where it trained: the strategy's name here (its class for any other
    Strategy) and its replicas in sync (devices times workers)."""
    kinds = ((tf.distribute.MultiWorkerMirroredStrategy, "multiworker"), (tf.distribute.MirroredStrategy, "mirrored"))
    name = next((name for kind, name in kinds if isinstance(strategy, kind)), None)
    if name is None:
        name = "default" if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy() \
            else type(strategy).__name__
    return {"name": name, "replicas": strategy.num_replicas_in_sync}


def writes_files(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes run directories, checkpoints and exports: only the chief
    does (TensorFlow's `should_checkpoint`: the `chief` task, else worker 0; always true on one
    machine)."""
    return strategy.extended.should_checkpoint


@contextlib.contextmanager
def run_dir_of(strategy: tf.distribute.Strategy, out):
    """`out` for the chief; for another worker a temporary directory, removed at the end: every
    worker then runs the same steps (saving can read variables collectively), one writes."""
    if out is None or writes_files(strategy):
        yield out
        return
    scratch = Path(tempfile.mkdtemp(prefix="transfer-worker-"))
    try:
        yield scratch / Path(out).name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fit_model(model: keras.Model, train, *, validation=None, epochs: int, callbacks=(), class_weight=None,
              verbose=0) -> keras.callbacks.History:
    """`model.fit(train, validation_data=validation, ...)` under the strategy the model was made
    in; `train` is batched with the global batch size, which the strategy splits across replicas."""
    if not _multi_worker(model.distribute_strategy):
        return model.fit(train, validation_data=validation, epochs=epochs, callbacks=list(callbacks),
                         class_weight=class_weight, shuffle=False, verbose=verbose)  # tf.data shuffles
    return _StepLoop(model).fit(train, validation, epochs, list(callbacks), class_weight, verbose)


def _multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


class _StepLoop:
    """`model.fit` for `MultiWorkerMirroredStrategy`: Keras' own `train_step` (its loss, class
    weights, optimizer and metrics) under `strategy.run`, on the strategy's distributed dataset.

    Every worker reads the metrics through the strategy (a collective), so all see the same logs
    and their callbacks decide alike; they read them after every batch whatever their callbacks
    (which may differ between workers), so that their collectives always match. A stop requested
    on any worker stops all of them, at the end of the epoch (a worker leaving mid-epoch would
    leave the others waiting in a collective). Cost: a few small all-reduces per batch.
    """

    def __init__(self, model: keras.Model):
        self.model, self.strategy = model, model.distribute_strategy
        self._train_steps = {}  # trainable weights -> their traced step (callbacks may thaw layers)
        self._test_step = tf.function(self._replicated(model.test_step), reduce_retracing=True)

    def fit(self, train, validation, epochs: int, callbacks: list, class_weight, verbose) -> keras.callbacks.History:
        model, strategy = self.model, self.strategy
        if class_weight:
            train = train.map(_compat.class_weight_map_fn(class_weight))  # as model.fit does
        with strategy.scope():
            _compat.symbolic_build(model, next(iter(train)))  # metric and optimizer variables, as fit makes them
        batches = strategy.experimental_distribute_dataset(_sharded_by_data(train))
        checks = None if validation is None else strategy.experimental_distribute_dataset(_sharded_by_data(validation))
        callbacks = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=model,
                                                 verbose=verbose, epochs=epochs, steps=None)
        model.stop_training, logs = False, {}
        callbacks.on_train_begin()
        try:
            for epoch in range(epochs):
                callbacks.on_epoch_begin(epoch)
                logs = self._train_epoch(batches, callbacks)
                if checks is not None:
                    logs.update({f"val_{name}": value for name, value in self._evaluate(checks, callbacks).items()})
                callbacks.on_epoch_end(epoch, logs)
                if self._any_worker(model.stop_training):
                    break
        except tf.errors.UnavailableError as error:  # TensorFlow's health check aborts the collectives
            reason = error.message.strip().splitlines()[0].split("aborted by: ")[-1].rstrip(":")
            raise TransferError(f"a worker of the cluster is gone, so training stopped ({reason}); "
                                "start every worker again") from None
        callbacks.on_train_end(logs)
        return model.history

    def _train_epoch(self, batches, callbacks) -> dict:
        self.model.reset_metrics()
        step = self._train_step()
        for number, batch in enumerate(batches):
            callbacks.on_train_batch_begin(number)
            step(batch)
            callbacks.on_train_batch_end(number, self._metrics())
        return self._metrics()

    def _evaluate(self, batches, callbacks) -> dict:
        """The validation metrics, with the test hooks that `model.fit`'s `evaluate` calls."""
        self.model.reset_metrics()
        callbacks.on_test_begin()
        for number, batch in enumerate(batches):
            callbacks.on_test_batch_begin(number)
            self._test_step(batch)
            callbacks.on_test_batch_end(number, self._metrics())
        logs = self._metrics()
        callbacks.on_test_end(logs)
        return logs

    def _train_step(self):
        """The traced step for the weights trainable now: like `make_train_function(force=True)`."""
        key = tuple(id(weight) for weight in self.model.trainable_weights)
        if key not in self._train_steps:
            self._train_steps[key] = tf.function(self._replicated(self.model.train_step), reduce_retracing=True)
        return self._train_steps[key]

    def _replicated(self, step):
        strategy = self.strategy

        def one_step_on_data_distributed(batch):  # Keras' name: `forgetting_step_gradients` knows it
            strategy.run(step, args=(batch,))
        return one_step_on_data_distributed

    def _metrics(self) -> dict:
        """The metrics over every replica of every worker (they are sync-on-read variables)."""
        return _logs(self.model.get_metrics_result())

    def _any_worker(self, stop: bool) -> bool:
        flags = self.strategy.experimental_distribute_values_from_function(lambda _: tf.constant(float(stop)))
        return int(self.strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None)) > 0


def _logs(metrics: dict) -> dict:
    """Metrics as Keras' `fit` logs them: a metric of several values (a dict) flattened, each a
    float, or an array for a vector (`transfer.training.branches.BranchScores`)."""
    logs = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            logs.update(_logs(value))
        else:
            value = np.asarray(value)
            logs[name] = float(value) if value.ndim == 0 else value
    return logs


def _sharded_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Each worker takes its part of every global batch. Our datasets come from memory or
    generators, not files, which TensorFlow's default (AUTO) would find out with a warning."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
