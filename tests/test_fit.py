"""`transfer fit` / `evaluate` / `predict` end to end, exports, and the fit issue's bad inputs."""
import csv
import gc
import json
import re
import warnings
import weakref

import numpy as np
import pytest
import tensorflow as tf

import keras
import transfer
from transfer import Backbone, FeatureLayer, heads
from transfer.cli.main import main
from cli_checks import fit_error
from transfer.heads.sklearn_probe import probe_as_head
from transfer.training.reporting import run_directory
from transfer.data.input_kind import resolve_preprocessing

DIGITS = "digits:5-9?per_class=10"
FLATTEN = {"pooling": "flatten"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The README's main job, shortened: the shipped backbone transferred to digits 5-9."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs))

    result = transfer.fit("example:digits", DIGITS, cut="block2_out", head="linear", head_options=FLATTEN,
                          epochs=25, lr=0.01, out=out, callbacks=[Recorder()], verbose=0)
    return result, seen


def test_fit_returns_model_history_metrics_and_learns(digits_run):
    result, _ = digits_run
    assert isinstance(result.model, keras.Model)
    assert len(result.history["loss"]) == len(result.history["val_accuracy"]) >= 5
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.metrics["test"]["accuracy"] > 0.8  # chance is 0.2
    assert result.class_names == ["5", "6", "7", "8", "9"]
    assert result.metrics["test"]["report"]["5"]["support"] > 100


def test_user_callbacks_see_the_usual_logs(digits_run):
    result, seen = digits_run
    assert len(seen) == len(result.history["loss"])
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(seen[0])


def test_the_run_says_which_epoch_early_stopping_kept(digits_run):
    result, _ = digits_run
    training, val_loss = result.metrics["training"], result.history["val_loss"]
    assert training["epochs_run"] == len(val_loss)
    assert training["kept_epoch"] == int(np.argmin(val_loss)) + 1  # restore_best_weights on val_loss
    assert training["stopped_early"] == (len(val_loss) < 25)
    assert f"kept the weights of epoch {training['kept_epoch']}" in training["summary"]
    saved = json.loads((result.run_dir / "metrics.json").read_text())["training"]
    assert saved == training


def test_early_stopping_is_reported_when_it_ends_the_run(tmp_path, capsys):
    # lr 3 with SGD overshoots after the first epochs: val_loss cannot improve for 40 epochs
    code = main(["fit", "--backbone", "example:digits", "--data", DIGITS, "--cut", "block2_out",
                 "--head-opt", "pooling=flatten", "--epochs", "40", "--patience", "2", "--optimizer", "sgd",
                 "--lr", "3", "--out", str(tmp_path / "run")])
    assert code == 0
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert training["stopped_early"] and training["epochs_run"] < 40
    assert f"early stopping after epoch {training['epochs_run']}; kept the weights of epoch " \
           f"{training['kept_epoch']}" in capsys.readouterr().out


def test_a_run_a_user_callback_stops_says_so_and_records_its_data(tmp_path):
    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch >= 1

    result = transfer.fit("example:digits", DIGITS, cut="block2_out", epochs=30, patience=None, verbose=0,
                          callbacks=[StopAfterTwo()], export=(), out=tmp_path / "run")
    training = result.metrics["training"]
    assert training["stopped_early"] and training["epochs_run"] == 2
    assert training["summary"] == "trained 2 epochs (stopped by a callback)"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["per_class"] == 10  # from the spec's ?per_class=10


def test_run_directory_holds_everything_to_repeat_and_read_the_run(digits_run):
    result, _ = digits_run
    run = result.run_dir
    for name in ("config.json", "metrics.json", "history.csv", "learning_curves.png", "confusion_matrix.png",
                 "model.keras", "export/model.pb", "export/saved_model/saved_model.pb"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "example:digits" and config["cut"] == "block2_out"
    assert config["head"] == "linear" and config["head_options"] == FLATTEN and config["data"] == DIGITS
    assert config["class_names"] == ["5", "6", "7", "8", "9"] and config["exports"]["pb"] == "export/model.pb"
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == len(result.history["loss"])
    assert float(rows[0]["loss"]) == pytest.approx(result.history["loss"][0], rel=1e-4)
    assert (run / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not run.with_name(run.name + ".partial").exists()


def test_exports_carry_the_class_names(digits_run):
    """A deployed model says what class 2 is without config.json (issue 25, item 13)."""
    result, _ = digits_run
    export = result.run_dir / "export"
    assert (export / "labels.txt").read_text() == "5\n6\n7\n8\n9\n"
    assert json.loads((result.run_dir / "config.json").read_text())["exports"]["labels"] == "export/labels.txt"
    serve = tf.saved_model.load(str(export / "saved_model")).signatures["serving_default"]
    from sklearn.datasets import load_digits

    images = load_digits().images[:6, :, :, None].astype("float32")
    served = serve(tf.constant(images))
    assert set(served) == {"probabilities", "classes", "predicted_class"}
    names = served["classes"].numpy().astype(str)
    assert names.shape == (6, 5) and (names == ["5", "6", "7", "8", "9"]).all()
    best = served["probabilities"].numpy().argmax(axis=1)
    assert list(served["predicted_class"].numpy().astype(str)) == [str(5 + i) for i in best]
    frozen = tf.compat.v1.GraphDef.FromString((export / "model.pb").read_bytes())
    constant = next(node for node in frozen.node if node.name == "class_names")
    assert [v.decode() for v in constant.attr["value"].tensor.string_val] == ["5", "6", "7", "8", "9"]
    assert {"probabilities", "predicted_class", "classes"} <= {node.name for node in frozen.node}


def test_exports_reproduce_in_process_predictions(digits_run):
    result, _ = digits_run
    from transfer.layers.model import model_parts

    assert model_parts(result.model)[2].adapted  # the exports must carry the head's standardization
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(16)])
    expected = result.model.predict(images, verbose=0)
    served = tf.saved_model.load(str(result.run_dir / "export/saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(images))["probabilities"], expected, rtol=1e-5, atol=1e-6)
    frozen = Backbone.load(result.run_dir / "export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), expected, rtol=1e-5, atol=1e-6)
    assert Backbone.load(result.run_dir / "export/model.pb", cut="features").feature_specs["features"].shape[-1] == 32
    restored = keras.models.load_model(result.run_dir / "model.keras")
    np.testing.assert_allclose(restored.predict(images, verbose=0), expected, rtol=1e-6)


def test_evaluate_and_predict_a_run(digits_run, tmp_path, capsys):
    result, _ = digits_run
    metrics = transfer.evaluate(result.run_dir, "digits:5-9")  # the test split, as fit scored it
    assert metrics["split"] == "test" and metrics["examples"] == result.metrics["test"]["examples"]
    assert metrics["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    every = transfer.evaluate(result.run_dir, "digits:5-9", split="all")
    assert every["split"] == "all" and every["examples"] > metrics["examples"]
    from sklearn.datasets import load_digits

    digits = load_digits()
    sevens = digits.images[digits.target == 7][:4].astype("float32")
    np.save(tmp_path / "sevens.npy", sevens)
    predictions = transfer.predict(result.run_dir, [tmp_path / "sevens.npy"], top_k=2)
    assert len(predictions) == 4 and all(len(p["top"]) == 2 for p in predictions)
    assert sum(p["top"][0]["class"] == "7" for p in predictions) >= 3
    assert main(["predict", str(result.run_dir), str(tmp_path / "sevens.npy"), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sevens\.npy\[0\]: \d [01]\.\d{3}", out)
    assert main(["evaluate", str(result.run_dir), "--data", "digits:5-9"]) == 0
    assert re.search(r"accuracy 0\.\d{3} on \d+ examples: the test split", capsys.readouterr().out)


def test_logreg_probe_exports_as_the_equivalent_dense_head(tmp_path):
    result = transfer.fit("example:digits", DIGITS, cut="resnet_features", head="logreg", out=tmp_path / "run",
                          export=("pb",))
    assert result.history == {} and result.metrics["test"]["accuracy"] > 0.5
    assert (tmp_path / "run/export/model.pb").is_file() and not (tmp_path / "run/export/saved_model").exists()


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("classes,shape,pooling", [(2, (6,), "avg"), (4, (6,), "avg"), (3, (3, 3, 4), "avg"),
                                                   (3, (3, 3, 4), "flatten")])
def test_probe_as_head_matches_predict_proba(classes, shape, pooling, standardize):
    """The probe's scaler is folded into the Dense weights: the same probabilities, also on features
    far from unit scale (a cut with small activations: mean ~0.05, spread ~0.02)."""
    rng = np.random.default_rng(classes)
    features = (0.02 * rng.normal(size=(60, *shape)) + 0.05).astype("float32")
    labels = rng.integers(0, classes, 60)
    labels[:classes] = np.arange(classes)
    probe = heads.get("logreg", num_classes=classes + 1, pooling=pooling, standardize=standardize)
    probe.fit(features, labels)  # the last class never seen
    assert (probe.scaler_ is not None) is standardize
    head = probe_as_head(probe, features.shape)
    assert head.standardize is False  # the scaler lives in the Dense weights
    np.testing.assert_allclose(head(features), probe.predict_proba(features), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_every_training_path_adapts_the_head_on_the_features_it_sees(tmp_path):
    """Raw examples through the backbone, cached features, and with a thaw (from raw examples or
    from the cached prefix outputs): the head's standardization holds the mean and variance of the
    training split's features at the start of training (a thaw's are the pretrained ones)."""
    from transfer.layers.model import model_parts

    common = dict(cut="block2_out", head="conv", head_options={"filters": 4}, epochs=1, patience=None,
                  export=(), verbose=0)
    runs = {"raw": transfer.fit("example:digits", DIGITS, **common),
            "cached": transfer.fit("example:digits", DIGITS, cache_dir=tmp_path / "cache", **common),
            "thawed": transfer.fit("example:digits", DIGITS, thaw=2, **common),
            "thawed, cached": transfer.fit("example:digits", DIGITS, thaw=2, cache_dir=tmp_path / "cache", **common)}
    images = np.stack([x for x, _ in transfer.datasets.load(DIGITS, validation_split=0.2, seed=0).train])
    preprocessing, feature_layer, _ = model_parts(runs["raw"].model)
    features = np.asarray(feature_layer(preprocessing(images)))
    for name, run in runs.items():
        _, _, head = model_parts(run.model)
        assert head.adapted, name
        assert head.standardization.count.numpy() == features[..., 0].size, name
        np.testing.assert_allclose(head.standardization.mean.numpy(), features.mean(axis=(0, 1, 2)), rtol=1e-4,
                                   atol=1e-6, err_msg=name)
        np.testing.assert_allclose(head.standardization.variance.numpy(), features.var(axis=(0, 1, 2)), rtol=1e-3,
                                   err_msg=name)


def test_hand_built_model_with_a_registered_head(tiny, images16):
    features = FeatureLayer(tiny.path, cut="conv2")
    head = heads.get("mlp", num_classes=3, hidden=(8,)).adapt(features(images16))  # as README "Python API" says
    model = keras.Sequential([keras.Input((16, 16, 3)), features, head])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images16, np.arange(6) % 3, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and model.predict(images16, verbose=0).shape == (6, 3)


# -- an image folder through the CLI, on the tiny 16x16 RGB backbone -----------------------------


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    """Red-ish and blue-ish images of assorted sizes: they must be resized to 16x16 to batch."""
    root = tmp_path_factory.mktemp("colors")
    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir()
        for i in range(12):
            size = (18 + i % 3, 20 + i % 4, 3)
            image = rng.integers(0, 80, size, dtype=np.uint8)
            image[..., channel] = rng.integers(170, 255, size[:2], dtype=np.uint8)
            (root / label / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


@pytest.mark.slow
def test_cli_fit_folder_then_predict_and_evaluate(tiny, color_folder, tmp_path, capsys):
    """... also once the backbone file is gone: the run directory is self-contained."""
    out, backbone = tmp_path / "run", tmp_path / "backbone.pb"
    backbone.write_bytes(tiny.path.read_bytes())
    code = main(["fit", "--backbone", str(backbone), "--cut", "conv2", "--head", "conv", "--head-opt", "filters=8",
                 "--data", str(color_folder), "--epochs", "15", "--lr", "0.01", "--scale", "0..1",
                 "--out", str(out), "--class-weight", "balanced", "--augment", "--export", "savedmodel,pb,tflite"])
    printed = capsys.readouterr().out
    assert code == 0
    assert re.search(r"validation accuracy \d\.\d{3} \(\d+ examples\)", printed) and f"run directory: {out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["input_shape"] == [None, None, 3] and config["preprocessing"]["scale"] == "0..1"
    interpreter = tf.lite.Interpreter(model_path=str(out / "export/model.tflite"))
    assert interpreter.get_signature_list()["serving_default"]["outputs"] == ["probabilities"]
    backbone.unlink()
    image_path = color_folder / "red" / "0.png"
    assert main(["predict", str(out), str(image_path), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["image"] == str(image_path) and {t["class"] for t in prediction["top"]} == {"red", "blue"}
    image = tf.io.decode_png(image_path.read_bytes())[None].numpy().astype("float32")
    run = interpreter.get_signature_runner("serving_default")
    expected = keras.models.load_model(out / "model.keras").predict(image, verbose=0)
    served = tf.saved_model.load(str(out / "export/saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(image))["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(images=image)["probabilities"], expected, rtol=1e-4, atol=1e-5)
    assert main(["evaluate", str(out), "--data", str(color_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 24


def test_preprocessing_json_beside_the_backbone_is_used(tiny, tmp_path):
    backbone_path = tmp_path / "net.pb"
    backbone_path.write_bytes(tiny.path.read_bytes())
    (tmp_path / "net.preprocessing.json").write_text(json.dumps({"size": [16, 16], "channels": 3, "scale": "-1..1"}))
    prep = resolve_preprocessing(Backbone.load(backbone_path))
    assert prep.scale == "-1..1" and prep.size == (16, 16)
    assert resolve_preprocessing(Backbone.load(backbone_path), scale="0..1").scale == "0..1"
    assert resolve_preprocessing(Backbone.load(tiny.path)).scale == "none"


# -- bad input: one line, exit 2, no run directory -------------------------------------------------


def test_unknown_head_lists_the_registered_ones(capsys, tmp_path):
    err = fit_error(capsys, tmp_path, "--head", "lineer")
    assert "unknown head 'lineer'; did you mean 'linear'; registered heads: attention, conv, linear, logreg, mlp" in err


def test_head_that_cannot_take_the_feature_rank(capsys, tmp_path):
    err = fit_error(capsys, tmp_path, "--cut", "resnet_features", "--head", "conv")
    assert "head 'conv' needs 4-D spatial features (batch, height, width, channels), got shape (None, 32)" in err


def test_bad_head_option(capsys, tmp_path):
    assert "head 'mlp' has no option 'hiden'" in fit_error(capsys, tmp_path, "--head", "mlp", "--head-opt", "hiden=3")


def test_missing_data_directory(capsys, tmp_path):
    assert "does not exist" in fit_error(capsys, tmp_path, data=tmp_path / "no_such_folder")


def test_class_with_no_images_and_empty_dataset(capsys, tmp_path, color_folder):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    (data / "dogs" / "a.png").write_bytes((color_folder / "red" / "0.png").read_bytes())
    assert "cats" in fit_error(capsys, tmp_path, backbone="example:digits", data=data)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in fit_error(capsys, tmp_path, data=empty)


def test_unreadable_images_are_named(capsys, tmp_path):
    data = tmp_path / "broken"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        (data / label / "x.png").write_bytes(b"not a png")
    err = fit_error(capsys, tmp_path, data=data)
    assert "none of the 2 image files" in err and "a/x.png, b/x.png" in err


def test_labels_out_of_range(capsys, tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, x=np.zeros((4, 8, 8, 1), "float32"), y=np.array([0, 1, 2, 7]), class_names=np.array(["a", "b", "c"]))
    err = fit_error(capsys, tmp_path, data=f"npz:{path}")
    assert "7" in err and "label" in err


def test_unprepared_tfds_dataset(capsys, tmp_path):
    err = fit_error(capsys, tmp_path, "--data-dir", str(tmp_path / "tfds"), data="tfds:mnist")
    assert "mnist" in err and "not prepared" in err


def test_existing_run_directory_and_bad_choices(capsys, tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "keep.txt").write_text("an earlier run")
    code = main(["fit", "--backbone", "example:digits", "--data", DIGITS, "--out", str(tmp_path / "done")])
    assert code == 2 and "already exists; choose another --out" in capsys.readouterr().err
    assert (tmp_path / "done" / "keep.txt").read_text() == "an earlier run"
    assert "optimizer='adamm' (--optimizer) must be one of adam, adamw, sgd, rmsprop, nadam" in fit_error(
        capsys, tmp_path, "--optimizer", "adamm")
    assert "export format='onnx' (--export) must be one of" in fit_error(capsys, tmp_path, "--export", "onnx")
    assert "trains on one cut; got 2 cuts" in fit_error(capsys, tmp_path, "--cut", "block1_out,block2_out")
    assert "epochs=0 (--epochs) must be an integer >= 1" in fit_error(capsys, tmp_path, "--epochs", "0")
    assert "lr=0.0 (--lr) must be a number > 0" in fit_error(capsys, tmp_path, "--lr", "0")
    assert "batch_size=0 (--batch-size) must be an integer >= 1" in fit_error(capsys, tmp_path, "--batch-size", "0")


def test_run_directory_is_removed_when_writing_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_directory(out) as partial:
            (partial / "config.json").write_text("{}")
            raise RuntimeError("disk full")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_predict_errors(capsys, digits_run, tmp_path):
    result, _ = digits_run
    assert main(["predict", str(tmp_path), "x.png"]) == 2
    assert "is not a transfer run directory" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["predict", str(result.run_dir), str(bad)]) == 2
    assert "bad.png is not a readable image" in capsys.readouterr().err
    assert main(["evaluate", str(result.run_dir), "--data", "digits:0-4"]) == 2
    assert "has classes the run was not trained on: 0, 1, 2, 3, 4; the run was trained on 5, 6, 7, 8, 9" in \
        capsys.readouterr().err
    assert main(["predict", str(result.run_dir), str(tmp_path / "nothing")]) == 2
    assert "input '" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(result.run_dir), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(r"folder '.*empty' holds no images \(\.bmp, .*\) or \.npy arrays$", err)


def test_evaluate_scores_the_classes_the_data_hold_and_names_the_absent_ones(digits_run, capsys):
    result, _ = digits_run
    some = transfer.evaluate(result.run_dir, "digits:6,8", split="all")
    every = transfer.evaluate(result.run_dir, "digits:5-9", split="all")
    assert some["absent_classes"] == ["5", "7", "9"] and every["absent_classes"] == []
    assert some["report"]["6"]["support"] == every["report"]["6"]["support"] and some["report"]["5"]["support"] == 0
    assert some["report"]["8"]["recall"] == pytest.approx(every["report"]["8"]["recall"])  # same examples, same labels
    assert main(["evaluate", str(result.run_dir), "--data", "digits:6,8", "--split", "all"]) == 0
    assert "classes absent from the data: 5, 7, 9" in capsys.readouterr().out


def test_predict_takes_folders_of_images(tiny, color_folder, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    assert main(["fit", "--backbone", str(tiny.path), "--cut", "gap", "--data", str(color_folder), "--epochs", "1",
                 "--export", "none", "--out", str(out)]) == 0
    folder = tmp_path / "photos"
    shutil.copytree(color_folder, folder)
    (folder / "notes.txt").write_text("not an image")
    capsys.readouterr()
    assert main(["predict", str(out), str(folder), "--json"]) == 0
    printed = capsys.readouterr()
    predicted = json.loads(printed.out)
    assert [p["image"] for p in predicted] == [str(p) for p in sorted(folder.rglob("*.png"))] and len(predicted) == 24
    assert "skipped 1 file(s) that are not images" in printed.err and "notes.txt" in printed.err


@pytest.mark.slow
def test_saved_model_file_loads_in_a_fresh_process_after_import_transfer(digits_run):
    """Keras finds FeatureLayer, the preprocessing layer and the heads once `transfer` is imported."""
    import subprocess
    import sys

    result, _ = digits_run
    script = ("import transfer, keras, numpy as np; "
              f"m = keras.models.load_model({str(result.run_dir / 'model.keras')!r}); "
              "print(m.predict(np.zeros((2, 8, 8, 1), 'float32'), verbose=0).shape)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(2, 5)")


def test_some_unreadable_images_are_skipped_with_a_one_line_warning(capsys, tiny, color_folder, tmp_path):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(color_folder, data)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    code = main(["fit", "--backbone", str(tiny.path), "--cut", "gap", "--data", str(data), "--epochs", "1",
                 "--crop-padding", "2", "--augment", "--export", "none", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0
    warning_lines = [line for line in err.splitlines() if line.startswith("transfer fit: warning:")]
    assert len(warning_lines) == 1 and "skipped 1 of 25 image files" in warning_lines[0]
    assert "red/broken.png" in warning_lines[0]
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["crop_padding"] == 2 and config["augment"] is True and not (tmp_path / "run/export").exists()


@pytest.mark.slow
def test_fit_from_the_feature_cache_trains_the_same_head_without_the_backbone(tmp_path):
    from transfer.features.cache import FeatureCache

    cached = transfer.fit("example:digits", DIGITS, cut="block2_out", head="linear", head_options=FLATTEN,
                          epochs=25, lr=0.01, cache_dir=tmp_path / "cache", out=tmp_path / "run", verbose=0)
    entries = FeatureCache(tmp_path / "cache").entries()
    assert sorted(e.manifest["role"] for e in entries) == ["test", "train", "validation"]
    assert cached.metrics["test"]["accuracy"] > 0.8
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npy")}
    again = transfer.fit("example:digits", DIGITS, cut="block2_out", head="logreg", head_options=FLATTEN,
                         cache_dir=tmp_path / "cache", verbose=0)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.npy")} == stamps  # reused
    assert again.metrics["test"]["accuracy"] > 0.8
    images = np.stack([x for x, _ in transfer.datasets.load("digits:5-9", validation_split=0).train.take(8)])
    frozen = Backbone.load(tmp_path / "run/export/model.pb", cut="probabilities")
    np.testing.assert_allclose(frozen(images), cached.model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "run/config.json").read_text())["cache_dir"] == str(tmp_path / "cache")


def test_fit_leaves_nothing_holding_the_backbone_graph():
    """TF's gradient registry pins every Keras train step traced (tensorflow/tensorflow#97697) and,
    through it, the backbone's pruned function: fit drops those entries, so the graph dies."""
    backbone = Backbone.load("example:digits", cut="block2_out")
    graph = weakref.ref(backbone.pruned_function.graph)
    result = transfer.fit(backbone, DIGITS, head_options=FLATTEN, epochs=1, patience=None, export=(), verbose=0)
    del backbone, result
    gc.collect()
    assert graph() is None


def test_release_traced_steps_frees_the_backbone_after_a_users_own_fit():
    """The same TF bug in a user's own script: the callback drops what the trace registered."""
    images = np.zeros((8, 8, 8, 1), "float32")
    backbone = Backbone.load("example:digits", cut="block2_out")
    graph = weakref.ref(backbone.pruned_function.graph)
    inputs = keras.Input((8, 8, 1))
    head = heads.get("linear", num_classes=2, pooling="flatten", standardize=False)
    model = keras.Model(inputs, head(FeatureLayer(backbone)(inputs)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(8) % 2, epochs=1, verbose=0, callbacks=[transfer.ReleaseTracedSteps()])
    del backbone, model, inputs, head
    keras.backend.clear_session()
    gc.collect()
    assert graph() is None


def test_cache_and_augmentation_do_not_mix(capsys, tmp_path):
    err = fit_error(capsys, tmp_path, "--augment", "--cache-dir", str(tmp_path / "cache"))
    assert "augmentation changes the images every epoch, cached features cannot" in err


def test_inputs_on_another_scale_than_the_training_data_are_warned_about(digits_run, tmp_path):
    """Digits are 0..16: the same images saved as 0..255 would be classified with confidence, wrongly."""
    from sklearn.datasets import load_digits

    from transfer.errors import TransferWarning

    result, _ = digits_run
    low, high = json.loads((result.run_dir / "config.json").read_text())["input_range"]
    assert low == 0.0 and high == 16.0
    sevens = load_digits().images[load_digits().target == 7][:2].astype("float32")
    np.save(tmp_path / "as_trained.npy", sevens)
    np.save(tmp_path / "as_png.npy", sevens * 255 / 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TransferWarning)
        transfer.predict(result.run_dir, [tmp_path / "as_trained.npy"])
    with pytest.warns(TransferWarning, match=r"as_png\.npy: inputs range 0\.\.255, but the run was trained on "
                                             r"inputs in 0\.\.16"):
        transfer.predict(result.run_dir, [tmp_path / "as_png.npy"])


def test_a_head_adapts_on_examples_spread_over_a_split_stored_class_by_class():
    from transfer.training.sources import spread_sample

    labels = np.repeat(np.arange(5), 1000)  # sorted by class, as an image folder is
    stream = tf.data.Dataset.from_tensor_slices(labels)
    sample = np.array(list(spread_sample(stream, 1024).as_numpy_iterator()))
    assert len(sample) == 1000 and np.array_equal(np.bincount(sample), [200] * 5)  # every 5th
    unknown = stream.filter(lambda x: True)  # cardinality unknown: the first examples
    assert len(list(spread_sample(unknown, 1024).as_numpy_iterator())) == 1024
    assert len(list(spread_sample(stream.take(300), 1024).as_numpy_iterator())) == 300


def test_a_diverging_run_stops_with_one_line_and_writes_nothing(capsys, tmp_path):
    """Issue 25, item 3: a loss that explodes (here SGD at lr 1000) ends the run with one line,
    and nothing is exported."""
    err = fit_error(capsys, tmp_path, "--cut", "block2_out", "--head-opt", "pooling=flatten", "--optimizer", "sgd",
                    "--lr", "1000", "--epochs", "5")
    assert re.search(r"error: training diverged: the training loss went from \d\S* to \S+ \(epoch 1\); nothing is "
                     r"written\. Try a lower --lr", err), err
