"""Data sources, splits and preprocessing, on real TensorFlow with small files made here."""
import json
import sys

import numpy as np
import pytest

from transfer.errors import TransferError, TransferWarning

import tensorflow as tf
import tensorflow_datasets as tfds

from transfer.datasets import (Augmentation, DataSplits, Preprocessing, load, preprocess,
                               sidecar_path)
from transfer.datasets.split import stratified_split


def write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(np.asarray(pixels, np.uint8)).numpy())


def make_folder(root, counts, shape=(5, 6, 3)):
    """root/LABEL/NN.png; image i of the c-th name in sorted order has every pixel 10*c + i."""
    for label, name in enumerate(sorted(counts)):
        for i in range(counts[name]):
            write_png(root / name / f"{i:02d}.png", np.full(shape, 10 * label + i))
    return root


def pairs(dataset):
    return [(x, int(y)) for x, y in dataset.as_numpy_iterator()]


def labels(dataset):
    return [y for _, y in pairs(dataset)]


# --- image folders -------------------------------------------------------------------------

def test_folder_flat_layout_streams_decoded_images_with_their_labels(tmp_path):
    root = make_folder(tmp_path / "pets", {"dog": 4, "cat": 6})
    data = load(str(root), validation_split=0.2, seed=0)
    assert isinstance(data, DataSplits)
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert data.element_spec[0] == tf.TensorSpec((5, 6, 3), tf.uint8)
    assert data.sizes == {"train": 8, "validation": 2} and data.test is None
    everything = pairs(data.train) + pairs(data.validation)
    assert len(everything) == 10
    for image, label in everything:  # cat is label 0 (sorted names), its pixels are < 10
        assert image.shape == (5, 6, 3) and (image[0, 0, 0] // 10) == label
    assert sorted(labels(data.validation)) == [0, 1]  # stratified: one of each class
    assert data.identity["layout"] == "flat" and data.identity["files"]["count"] == 10
    assert load(f"folder:{root}").identity == data.identity


def test_folder_split_layout_uses_its_validation_and_test_folders(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", {"a": 3, "b": 2}, shape=(4, 4, 1))
    make_folder(root / "val", {"a": 1, "b": 1}, shape=(4, 4, 1))
    make_folder(root / "test", {"b": 2}, shape=(4, 4, 1))
    write_png(root / "test" / "b" / "big.png", np.zeros((7, 3, 1)))
    data = load(f"folder:{root}")
    assert data.class_names == ["a", "b"]
    assert data.sizes == {"train": 5, "validation": 2, "test": 3}
    assert data.example_shape == (None, None, 1)  # sizes differ: left to preprocessing
    assert labels(data.validation) == [0, 1] and labels(data.test) == [1, 1, 1]
    assert sorted(x.shape for x, _ in pairs(data.test)) == [(4, 4, 1), (4, 4, 1), (7, 3, 1)]
    assert data.identity["layout"] == "split"


def test_folder_identity_changes_when_a_file_changes(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    before = load(str(root)).identity
    json.dumps(before)  # a cache key must serialise
    write_png(root / "a" / "00.png", np.zeros((5, 6, 3)) + 99)
    assert load(str(root)).identity["files"] != before["files"]


def test_split_folder_with_unknown_class_is_an_error(tmp_path):
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_folder(tmp_path / "test", {"c": 1})
    with pytest.raises(TransferError, match=r"class folder\(s\) c in .*test.* classes: a, b"):
        load(str(tmp_path))


def test_split_layout_with_both_val_and_validation_is_an_error(tmp_path):
    for split in ("train", "val", "validation"):
        make_folder(tmp_path / split, {"a": 1})
    with pytest.raises(TransferError, match=r"has both val/ and validation/; keep one"):
        load(str(tmp_path))


def test_a_file_that_is_not_a_folder_or_npz(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TransferError, match=r"data directory '.*notes.txt' is not a directory"):
        load(str(tmp_path / "notes.txt"))


def test_corrupt_images_are_skipped_with_a_warning_naming_them(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 3, "b": 2})
    (root / "a" / "broken.png").write_bytes(b"not an image at all")
    (root / "b" / "empty.jpg").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("ignored: not an image suffix")
    with pytest.warns(TransferWarning, match=r"skipped 2 of 7 image files .*a/broken.png, b/empty.jpg"):
        data = load(str(root), validation_split=0)
    assert data.sizes == {"train": 5}
    assert len(pairs(data.train)) == 5
    assert data.identity["skipped"] == ["a/broken.png", "b/empty.jpg"]


def test_all_images_unreadable_is_an_error(tmp_path):
    for i in range(5):
        (tmp_path / "a" ).mkdir(exist_ok=True)
        (tmp_path / "a" / f"{i}.png").write_bytes(b"junk")
    message = r"none of the 5 image files .* a/0.png, a/1.png, a/2.png and 2 more"
    with pytest.raises(TransferError, match=message):
        load(str(tmp_path))


def test_class_with_only_unreadable_images_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2})
    (root / "a" / "junk.png").write_bytes(b"junk")  # not named: class a still has images
    (root / "b").mkdir()
    (root / "b" / "x.png").write_bytes(b"junk")
    message = r"class folder '.*/b' has no readable images: b/x.png$"
    with pytest.raises(TransferError, match=message):
        load(str(root))


def test_empty_folder_and_empty_class_folder_are_errors(tmp_path):
    with pytest.raises(TransferError, match=r"no class folders in .*; expected .*/LABEL/\*.png"):
        load(str(tmp_path))
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(TransferError, match=r"class folder '.*/b' has no images \(.bmp, .gif"):
        load(str(tmp_path))


# --- specs and bad input -------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("foo:bar", r"unknown data scheme 'foo' in 'foo:bar'; valid: folder:PATH, npz:FILE, tfds:NAME"),
    ("folder:/no/such/dir", r"data directory '/no/such/dir' does not exist"),
    ("mnist", r"data directory 'mnist' does not exist \(valid specs: folder:PATH"),
    ("folder:", r"'folder:' names nothing after the colon; valid: folder:PATH"),
    ("tfds:", r"'tfds:' names nothing after the colon"),
    ("tfds:not a name!", r"'not a name!' is not a TFDS dataset name; use NAME or NAME/CONFIG"),
    ("digits?size=3", r"unknown option 'size' in 'digits\?size=3'; valid: per_class"),
    ("digits?per_class=0", r"per_class='0' in .* must be a positive integer"),
    ("digits:5-12", r"digits classes '5-12' are not valid; use digits 0..9"),
    ("digits:7-3", r"digits classes '7-3' are not valid"),
    ("digits:0-1?per_class=500", r"per_class=500 but class '0' has only \d+ training example"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(TransferError, match=message) as caught:
        load(spec)
    assert "\n" not in str(caught.value)


def test_per_class_given_twice_must_agree():
    with pytest.raises(TransferError, match=r"per_class=3 contradicts 'digits\?per_class=2'"):
        load("digits?per_class=2", per_class=3)
    with pytest.raises(TransferError, match=r"validation_split=1.5 must be in \[0, 1\)"):
        load("digits", validation_split=1.5)


# --- split ---------------------------------------------------------------------------------

def test_stratified_split_is_seeded_and_keeps_class_shares():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    kept, held = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    assert np.bincount(y[held]).tolist() == [10, 6, 4]
    again_kept, again_held = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, stratified_split(y, 0.2, seed=4)[1])
    single = stratified_split(np.array([0, 1, 1]), 0.5, seed=0)[1]  # lone class 0 stays in train
    assert y[single].tolist() == [0] and np.array([0, 1, 1])[single].tolist() == [1]


def test_same_seed_same_validation_split_through_load():
    def validation(seed):
        return np.stack([x for x, _ in pairs(load("digits:0-2", seed=seed).validation)])

    assert np.array_equal(validation(0), validation(0))
    assert not np.array_equal(validation(0), validation(1))


# --- arrays: npz and digits ----------------------------------------------------------------

def test_npz_with_class_names_and_test_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(path, x=rng.integers(0, 255, (12, 4, 4), np.uint8), y=np.arange(12) % 3,
             class_names=np.array(["red", "green", "blue"]),
             x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([2, 0]))
    data = load(f"npz:{path}", validation_split=0.25)
    assert data.class_names == ["red", "green", "blue"]
    assert data.element_spec[0] == tf.TensorSpec((4, 4), tf.uint8)  # as stored: no channel axis invented
    assert data.sizes == {"train": 9, "validation": 3, "test": 2}
    assert sorted(labels(data.validation)) == [0, 1, 2] and labels(data.test) == [2, 0]
    assert load(str(path)).identity["sha256"] == data.identity["sha256"]


def test_npz_float_images_become_float32_and_names_default_to_numbers(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.ones((4, 3, 3, 2)), y=np.array([0, 1, 1, 0]))
    data = load(str(path), validation_split=0)
    assert data.class_names == ["0", "1"] and data.example_dtype == tf.float32
    assert data.example_shape == (3, 3, 2) and not data.images


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((3, 2, 2))}, r"has no array 'y'; it needs 'x' .* found: x"),
    ({"y": np.zeros(3, int)}, r"has no array 'x'"),
    ({"x": np.zeros((3, 2, 2)), "y": np.array([0, 1, 3]), "class_names": np.array(["a", "b"])},
     r"labels of train must be in 0..1 \(2 classes\); found 3"),
    ({"x": np.zeros((3, 2, 2)), "y": np.array([0, -1, 1])}, r"must be in 0..1 .*found -1"),
    ({"x": np.zeros((3, 2, 2)), "y": np.array([0.0, 1.0, 1.0])},
     r"must be a 1-D integer array, got float64"),
    ({"x": np.zeros((3, 2, 2)), "y": np.array([0, 1])}, r"train has 3 examples but 2 labels"),
    ({"x": np.zeros((0, 2, 2)), "y": np.zeros(0, int)}, r"train has no examples"),
    ({"x": np.zeros((3, 2, 2)), "y": np.array([0, 1, 1]), "x_test": np.zeros((1, 2, 2))},
     r"has 'x_test' but not its pair 'y_test'"),
    ({"x": np.zeros(3), "y": np.array([0, 1, 1])},
     r"examples of train have shape \(3,\); expected N×\.\.\. \(one row per example"),
    ({"x": np.array([["a"], ["b"], ["c"]]), "y": np.array([0, 1, 1])},
     r"examples of train have dtype <U1; expected numbers"),
    ({"x": np.array([[2**40], [0], [1]]), "y": np.array([0, 1, 1])},
     r"examples of train have values outside int32"),
    ({"x": np.zeros((3, 2, 2)), "y": np.array([0, 1, None], dtype=object)},
     r"cannot read npz file .* as plain arrays \(transfer never unpickles\)"),
])
def test_bad_npz_files_are_one_line_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(TransferError, match=message) as caught:
        load(str(path))
    assert "\n" not in str(caught.value)


def test_npz_that_is_not_a_zip_and_missing_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"\x80\x04junk")
    with pytest.raises(TransferError, match=r"cannot read npz file .*junk.npz"):
        load(str(tmp_path / "junk.npz"))
    with pytest.raises(TransferError, match=r"npz file '.*nothere.npz' does not exist"):
        load(f"npz:{tmp_path}/nothere.npz")


def test_digits_class_subset_relabels_and_keeps_range():
    from sklearn.datasets import load_digits

    data = load("digits:5-9")
    assert data.class_names == ["5", "6", "7", "8", "9"]
    assert data.element_spec[0] == tf.TensorSpec((8, 8, 1), tf.float32)
    train = pairs(data.train)
    assert {y for _, y in train} == {0, 1, 2, 3, 4}
    assert max(float(x.max()) for x, _ in train) == 16.0  # documented range 0..16
    assert data.sizes["train"] + data.sizes["validation"] == int((load_digits().target >= 5).sum())
    assert load("digits:0,2,4").class_names == ["0", "2", "4"]


def test_digits_per_class_keeps_n_per_class_and_the_rest_is_test():
    from sklearn.datasets import load_digits

    data = load("digits:5-9?per_class=10", seed=0)
    assert np.bincount(labels(data.train)).tolist() == [10] * 5
    assert data.sizes["train"] == 50 and data.sizes["test"] > 500
    assert sum(data.sizes.values()) == int((load_digits().target >= 5).sum())
    assert np.bincount(labels(data.validation), minlength=5).min() >= 35  # ~20% of each class
    assert data.identity["split"]["per_class"] == 10
    same = load("digits:5-9", per_class=10, seed=0)
    first = np.stack([x for x, _ in pairs(data.train)])
    assert np.array_equal(first, np.stack([x for x, _ in pairs(same.train)]))


# --- TensorFlow Datasets -------------------------------------------------------------------

def test_tfds_mocked_mnist_streams_and_splits(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        data = load("tfds:mnist", data_dir=str(tmp_path), seed=0)
        assert data.class_names == [str(i) for i in range(10)]
        assert data.element_spec[0] == tf.TensorSpec((28, 28, 1), tf.uint8)
        train, validation = pairs(data.train), pairs(data.validation)
        stored = [int(y) for _, y in tfds.builder("mnist", data_dir=str(tmp_path)).as_dataset(
            split="train", as_supervised=True)]
    assert len(train) + len(validation) == 40 and data.sizes["validation"] == len(validation)
    assert sorted(y for _, y in train + validation) == sorted(stored)
    assert data.identity["source"] == "tfds" and data.identity["splits"] == {"train": "train"}
    with tfds.testing.mock_data(num_examples=5):
        chosen = load("tfds:mnist:test", data_dir=str(tmp_path), validation_split=0)
        assert chosen.identity["splits"] == {"train": "test"} and len(pairs(chosen.train)) == 5


def test_tfds_data_without_tensorflow_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if the extra were not installed
    with pytest.raises(TransferError, match=r"^tfds: data needs tensorflow-datasets; install it: "
                                            r"pip install 'transfer\[tfds\]'$"):
        load("tfds:mnist", data_dir=str(tmp_path))


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(TransferError) as caught:
        load("tfds:mnist", data_dir=str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert f"'mnist' is not prepared in '{tmp_path}'" in message
    assert f"tfds build mnist --data_dir {tmp_path}" in message


def test_tfds_unknown_name_suggests_close_names(tmp_path):
    with pytest.raises(TransferError, match=r"unknown TFDS dataset 'mnistt'; closest: mnist"):
        load("tfds:mnistt", data_dir=str(tmp_path))
    with pytest.raises(TransferError, match=r"'glue/cola' is not a classification dataset"):
        load("tfds:glue/cola", data_dir=str(tmp_path))


# --- preprocessing -------------------------------------------------------------------------

def pixel(*values):
    return tf.constant(np.array(values, np.float32).reshape(1, 1, -1))


@pytest.mark.parametrize("scale, given, expected", [
    ("0..1", (0, 255, 51), (0.0, 1.0, 0.2)),
    ("-1..1", (0, 255, 127.5), (-1.0, 1.0, 0.0)),
    ("caffe", (10, 20, 30), (30 - 103.939, 20 - 116.779, 10 - 123.68)),
    ("none", (3, 16, 200), (3, 16, 200)),
])
def test_scales(scale, given, expected):
    out = Preprocessing(scale=scale)(pixel(*given))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().reshape(-1), expected, rtol=1e-6, atol=1e-5)


def test_gray_to_rgb_rgb_to_gray_resize_and_uint8():
    gray = tf.constant(np.arange(12, dtype=np.uint8).reshape(3, 4, 1))
    rgb = Preprocessing(channels=3)(gray)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    back = Preprocessing(channels=1, dtype="uint8")(tf.cast(rgb, tf.uint8))
    assert back.dtype == tf.uint8 and np.array_equal(back.numpy(), gray.numpy())
    resized = Preprocessing(size=(6, 8), dtype="uint8")(gray[None])  # a batch works too
    assert resized.shape == (1, 6, 8, 1) and resized.dtype == tf.uint8
    rgba = tf.ones((2, 2, 4), tf.uint8)
    assert Preprocessing(channels=3)(rgba).shape == (2, 2, 3)
    assert Preprocessing(size=(None, None))(gray).shape == (3, 4, 1)


@pytest.mark.parametrize("options, message", [
    ({"scale": "0-1"}, r"preprocessing scale='0-1' must be one of none, 0\.\.1, -1\.\.1, caffe$"),
    ({"dtype": "float16"}, r"preprocessing dtype='float16' must be one of float32, uint8$"),
    ({"channels": 2}, r"preprocessing channels=2 must be one of none, 1, 3$"),
    ({"size": (224,)}, r"size \(224,\) is not valid; give \(height, width\)"),
    ({"dtype": "uint8", "scale": "0..1"}, r"scale '0..1' makes floats but dtype is 'uint8'"),
    ({"channels": 1, "scale": "caffe"}, r"scale 'caffe' needs 3 channels"),
])
def test_invalid_preprocessing_is_a_one_line_error(options, message):
    with pytest.raises(TransferError, match=message):
        Preprocessing(**options)


def test_caffe_on_gray_images_says_to_set_channels():
    with pytest.raises(TransferError, match=r"needs 3-channel images, got 1 .* set channels to 3"):
        Preprocessing(scale="caffe")(tf.zeros((2, 2, 1)))


def test_preprocessing_json_beside_the_model(tmp_path):
    model = tmp_path / "model.pb"
    model.write_bytes(b"graph")
    assert sidecar_path(model) == tmp_path / "model.preprocessing.json"
    assert Preprocessing.beside(model) is None
    wanted = Preprocessing(size=(32, 32), channels=3, scale="-1..1")
    sidecar_path(model).write_text(json.dumps(wanted.to_dict()))
    assert Preprocessing.beside(model) == wanted
    saved_model = tmp_path / "net"
    saved_model.mkdir()
    assert sidecar_path(saved_model) == tmp_path / "net.preprocessing.json"
    sidecar_path(saved_model).write_text('{"scale": "caffe", "mean": 1}')
    message = r"unknown key\(s\) mean in .*net.preprocessing.json; valid: size, channels, dtype"
    with pytest.raises(TransferError, match=message):
        Preprocessing.beside(saved_model)
    with pytest.raises(TransferError, match=r"preprocessing file '.*other.json' does not exist"):
        Preprocessing.from_json(tmp_path / "other.json")
    sidecar_path(saved_model).write_text("{not json")
    with pytest.raises(TransferError, match=r"cannot read preprocessing file .*net.prepro"):
        Preprocessing.beside(saved_model)


def test_for_input_matches_a_backbone_input():
    config = Preprocessing.for_input((None, 224, 224, 3), tf.uint8)
    wanted = {"size": [224, 224], "channels": 3, "dtype": "uint8", "scale": "none"}
    assert config.to_dict() == wanted
    assert Preprocessing.for_input((None, None, None, 3)).size is None


def test_preprocess_maps_a_loaded_dataset():
    data = load("digits:0-1", validation_split=0)
    mapped = preprocess(data.train, Preprocessing(size=(16, 16), channels=3, scale="0..1"))
    assert mapped.element_spec[0] == tf.TensorSpec((16, 16, 3), tf.float32)
    image, label = next(iter(mapped))
    assert float(tf.reduce_max(image)) <= 16 / 255 + 1e-6 and int(label) in (0, 1)


def test_augmentation_is_seeded_and_changes_each_epoch():
    images = tf.data.Dataset.from_tensor_slices(
        (np.arange(8 * 6 * 6, dtype=np.float32).reshape(8, 6, 6, 1), np.zeros(8, np.int32)))

    def run(augmented):
        return np.stack([x for x, _ in augmented.as_numpy_iterator()])

    same = Preprocessing()
    a = preprocess(images, same, Augmentation(flip=True, crop_padding=2, seed=1))
    b = preprocess(images, same, Augmentation(flip=True, crop_padding=2, seed=1))
    first = run(a)
    assert first.shape == (8, 6, 6, 1)
    assert np.array_equal(first, run(b))
    assert not np.array_equal(first, run(a))  # a second epoch differs
    other = run(preprocess(images, same, Augmentation(flip=True, crop_padding=2, seed=2)))
    assert not np.array_equal(first, other)
    flipped = run(preprocess(images, same, Augmentation(flip=True, seed=5)))
    originals = run(images)
    for out, original in zip(flipped, originals):
        assert np.array_equal(out, original) or np.array_equal(out, original[:, ::-1])
    assert not np.array_equal(flipped, originals)
