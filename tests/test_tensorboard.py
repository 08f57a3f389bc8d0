"""`--tensorboard` on fit and sweep, read back with TensorBoard's own event reader."""
import json
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import transfer
from transfer.cli.main import main
from transfer.errors import TransferError
from transfer.sweep.sweeping import sweep

DIGITS = "digits:5-9?per_class=10"


def events(directory) -> EventAccumulator:
    reader = EventAccumulator(str(directory), size_guidance={TENSORS: 0})
    reader.Reload()
    return reader


def scalars(reader: EventAccumulator, tag: str) -> list[float]:
    return [float(np.asarray(tf_tensor_value(event))) for event in reader.Tensors(tag)]


def tf_tensor_value(event):
    import tensorflow as tf

    return tf.make_ndarray(event.tensor_proto)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    code = main(["fit", "--backbone", "example:digits", "--data", DIGITS, "--cut", "block2_out",
                 "--head-opt", "pooling=flatten", "--epochs", "6", "--lr", "0.01", "--tensorboard",
                 "--export", "none", "--out", str(out)])
    assert code == 0
    return out


def test_fit_logs_the_epochs_scalars_tensorboard_reads(logged_run):
    history = {row.split(",")[0]: row for row in (logged_run / "history.csv").read_text().splitlines()[1:]}
    train, validation = events(logged_run / "tensorboard/train"), events(logged_run / "tensorboard/validation")
    assert len(scalars(train, "epoch_loss")) == len(history)
    columns = (logged_run / "history.csv").read_text().splitlines()[0].split(",")
    first = dict(zip(columns, history["1"].split(",")))
    assert scalars(train, "epoch_loss")[0] == pytest.approx(float(first["loss"]), rel=1e-4)
    assert scalars(validation, "epoch_accuracy")[0] == pytest.approx(float(first["val_accuracy"]), rel=1e-4)


def test_fit_logs_each_scored_splits_confusion_matrix_as_an_image(logged_run):
    for role in ("validation", "test"):
        reader = events(logged_run / "tensorboard" / role)
        assert "confusion_matrix" in reader.Tags()["tensors"]
        (event,) = reader.Tensors("confusion_matrix")
        width, height, png = tf_tensor_value(event)
        assert png[:4] == b"\x89PNG" and int(width) > 100 and int(height) > 100


def test_without_the_flag_no_logs_are_written(tmp_path):
    result = transfer.fit("example:digits", DIGITS, cut="block2_out", head="logreg", out=tmp_path / "run",
                          export=(), verbose=0)
    assert not (result.run_dir / "tensorboard").exists()


def test_logs_need_a_run_directory():
    with pytest.raises(TransferError, match="TensorBoard logs are written in the run directory"):
        transfer.fit("example:digits", DIGITS, tensorboard=True)
    with pytest.raises(TransferError, match="TensorBoard logs are written in the sweep directory"):
        sweep("example:digits", DIGITS, tensorboard=True)


def test_sweep_writes_hparams_that_tensorboard_compares(tmp_path):
    out = tmp_path / "sweep"
    result = sweep("example:digits", DIGITS, cut="block2_out", heads=["linear", "logreg"],
                            head_options={"pooling": ["flatten"]}, lr=[0.01, 0.03], epochs=[4],
                            cache_dir=tmp_path / "cache", out=out, export=(), tensorboard=True, progress=False)
    root = events(out / "tensorboard")
    experiment = hparams_metadata.parse_experiment_plugin_data(
        root.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content)
    assert {"head", "lr", "epochs", "seed", "head_opt.pooling"} <= {h.name for h in experiment.hparam_infos}
    assert {m.name.tag for m in experiment.metric_infos} == {"val_accuracy", "test_accuracy"}
    trials = sorted(path for path in (out / "tensorboard").iterdir() if path.is_dir())
    assert len(trials) == len(result.rows) == 3  # linear at two lrs, logreg once (it has no lr)
    seen = {}
    for trial in trials:
        reader = events(trial)
        start = hparams_metadata.parse_session_start_info_plugin_data(
            reader.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
        values = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
                  for name, value in start.hparams.items()}
        (val,) = scalars(reader, "val_accuracy")
        seen[(values["head"], values.get("lr"))] = val
    for row in result.rows:
        lr = row["lr"] if row["head"] == "linear" else "none"
        assert seen[(row["head"], lr)] == pytest.approx(row["val_accuracy_mean"])
    best = json.loads((out / "best/config.json").read_text())
    assert best["head"] == result.rows[0]["head"] and (out / "best/tensorboard").is_dir()


@pytest.mark.slow
def test_sweep_without_the_tensorboard_package_says_what_to_install(tmp_path):
    script = ("import sys; sys.modules['tensorboard'] = None\n"
              "from transfer.cli.main import main\n"
              f"sys.exit(main(['sweep', '--backbone', 'example:digits', '--data', '{DIGITS}', '--tensorboard',"
              f" '--out', '{tmp_path / 'sweep'}']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "pip install 'transfer[tensorboard]'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "sweep").exists()
