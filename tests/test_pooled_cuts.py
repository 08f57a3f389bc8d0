"""Cuts averaged inside the backbone's function (`transfer.features.pooled_cuts`): averages of cuts that
are per-channel affine functions of other extracted cuts are derived from theirs, and equal the
averages computed from the full maps; anything else is computed."""
import numpy as np
import pytest
import tensorflow as tf

from transfer import Backbone, _compat
from transfer.features.extraction import _pooled_function
from transfer.features.pooled_cuts import derived_averages, pool_positions
from transfer.heads import pool_array


@pytest.fixture(scope="module")
def affine_graph(tmp_path_factory):
    """conv -> bias -> batch norm as Keras 3 freezes it (x * scale + offset, the scale itself
    computed from constants) -> 2 - x -> plus the conv's output again (a residual connection)
    -> relu; beside it a map plus a constant that varies over positions, a product of two maps,
    1x1 convolutions of the relu (stride 1 with a bias; stride 2; padded explicitly) and a 3x3
    one, and the sum of all, one number per example."""
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)), tf.float32)
    bias = tf.constant(rng.normal(size=4), tf.float32)
    variance, gamma = tf.constant(rng.uniform(0.5, 2, 4), tf.float32), tf.constant(rng.normal(size=4), tf.float32)
    offset = tf.constant(rng.normal(size=(1, 1, 1, 4)), tf.float32)
    ramp = tf.constant(rng.normal(size=(1, 8, 8, 4)), tf.float32)
    pointwise_kernel = tf.constant(rng.normal(size=(1, 1, 4, 5)), tf.float32)
    pointwise_bias = tf.constant(rng.normal(size=5), tf.float32)
    wide_kernel = tf.constant(rng.normal(size=(3, 3, 4, 5)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="image")])
    def net(image):
        conv = tf.nn.bias_add(tf.nn.conv2d(image, kernel, 1, "SAME"), bias, name="biased")
        normed = tf.add(conv * (tf.math.rsqrt(variance + 1e-3) * gamma), offset, name="normed")
        flipped = tf.subtract(2.0, normed, name="flipped")
        residual = tf.add(flipped, conv, name="residual")
        relu = tf.nn.relu(residual, name="relu")
        ramped = tf.add(relu, ramp, name="ramped")
        squared = tf.multiply(relu, relu, name="squared")
        pointwise = tf.nn.bias_add(tf.nn.conv2d(relu, pointwise_kernel, 1, "VALID"), pointwise_bias, name="pointwise")
        strided = tf.nn.conv2d(relu, pointwise_kernel, 2, "SAME", name="strided")
        padded = tf.nn.conv2d(relu, pointwise_kernel, 1, [[0, 0], [1, 1], [1, 1], [0, 0]], name="padded")
        wide = tf.nn.conv2d(relu, wide_kernel, 1, "SAME", name="wide")
        convolved = [tf.reduce_sum(c, axis=[1, 2, 3]) for c in (pointwise, strided, padded, wide)]
        return tf.add_n([tf.reduce_sum(ramped + squared, axis=[1, 2, 3]), *convolved], name="total")

    path = tmp_path_factory.mktemp("pooled") / "affine.pb"
    graph_def = _compat.freeze_variables(net.get_concrete_function()).graph.as_graph_def()
    path.write_bytes(graph_def.SerializeToString())
    return path


CUTS = "biased,normed,flipped,residual,relu,ramped,squared"


def derivations(plan) -> dict:
    return {spec: str(expression) for spec, expression in plan.derived.items()}


def test_affine_cuts_and_sums_are_derived_from_the_cuts_they_follow(affine_graph):
    plan = derived_averages(Backbone.load(affine_graph, cut=CUTS))
    assert derivations(plan) == {"normed": "AddV2(Mul(biased))", "flipped": "Sub(normed)",
                                 "residual": "(flipped + biased)"}  # derived cuts from derived cuts
    assert plan.computed == ["biased", "relu", "ramped", "squared"]  # relu, a varying constant, x * x: computed


def test_a_pointwise_convolution_is_derived_from_its_input(affine_graph):
    """A 1x1 convolution of stride 1 (and the bias after it) is the same matrix product at
    every position; strided, padded or wider ones are not, and are computed."""
    cuts = "relu,pointwise,strided,padded,wide"
    backbone = Backbone.load(affine_graph, cut=cuts)
    plan = derived_averages(backbone)
    assert derivations(plan) == {"pointwise": "BiasAdd(Conv2D(relu))"}
    images = tf.random.stateless_uniform([5, 8, 8, 3], seed=[7, 8])
    pooled, full = _pooled_function(backbone, "avg")(images), backbone(images)
    for spec in cuts.split(","):
        np.testing.assert_allclose(pooled[spec], pool_positions(full[spec], "avg"), rtol=1e-5, atol=1e-5)


def test_a_cut_is_derived_only_from_cuts_that_are_extracted(affine_graph):
    assert derivations(derived_averages(Backbone.load(affine_graph, cut="normed,flipped,relu"))) == {
        "flipped": "Sub(normed)"}
    assert derivations(derived_averages(Backbone.load(affine_graph, cut="flipped,relu,residual"))) == {}


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_pooled_cuts_equal_the_pooled_full_maps(affine_graph, pool):
    """Derived or computed, every average is the mean of the full map (max: nothing derived)."""
    backbone = Backbone.load(affine_graph, cut=CUTS)
    images = tf.random.stateless_uniform([5, 8, 8, 3], seed=[1, 2])
    pooled = _pooled_function(backbone, pool)(images)
    full = backbone(images)
    assert set(pooled) == set(CUTS.split(","))
    for spec in CUTS.split(","):
        np.testing.assert_allclose(pooled[spec], pool_positions(full[spec], pool), rtol=1e-5, atol=1e-5)


def test_a_keras_batch_norm_after_a_relu_is_derived_from_the_relu(tiny):
    """The tiny CNN: conv1 (relu) -> bn1: the batch norm's output is affine in the ReLU's."""
    backbone = Backbone.load(tiny.path, cut="candidates")
    plan = derived_averages(backbone)
    relu = next(c.spec for c in backbone.cuts if c.tensor.op.type == "Relu")
    assert any(f"({relu})" in str(expression) for expression in plan.derived.values())
    images = tf.random.stateless_uniform([3, 16, 16, 3], seed=[3, 4])
    pooled, full = _pooled_function(backbone, "avg")(images), backbone(images)
    for spec in plan.derived:
        np.testing.assert_allclose(pooled[spec], pool_positions(full[spec], "avg"), rtol=1e-5, atol=1e-6)


def test_outputs_that_are_not_vectors_leave_the_graph_one_by_one(affine_graph):
    """Float32 vectors leave the traced function concatenated (one conversion a batch) and are
    split again; a cut of one number per example cannot be concatenated, and is not."""
    backbone = Backbone.load(affine_graph, cut="normed,total")
    images = tf.random.stateless_uniform([4, 8, 8, 3], seed=[5, 6])
    pooled, full = _pooled_function(backbone, "avg")(images), backbone(images)
    assert pooled["total"].shape == (4,) and pooled["normed"].shape == (4, 4)
    np.testing.assert_allclose(pooled["total"], full["total"], rtol=1e-6)
    np.testing.assert_allclose(pooled["normed"], pool_positions(full["normed"], "avg"), rtol=1e-5, atol=1e-6)


def test_grid2_keeps_each_maps_cells_with_their_layout(affine_graph):
    """`--pool grid2` stores a (2, 2, channels) map of cells: a head's grid2 pooling reads the same
    cells from it as from the whole map, and (sides even) the mean of the cells is the average."""
    backbone = Backbone.load(affine_graph, cut="normed,padded,total")
    images = tf.random.stateless_uniform([4, 8, 8, 3], seed=[7, 8])
    pooled, full = _pooled_function(backbone, "grid2")(images), backbone(images)
    assert pooled["normed"].shape == (4, 2, 2, 4) and pooled["padded"].shape == (4, 2, 2, 5)
    assert pooled["total"].shape == (4,)  # one number per example: nothing to pool
    for spec in ("normed", "padded"):  # 8x8 and 10x10
        maps = np.asarray(full[spec])
        np.testing.assert_allclose(pool_array(pooled[spec], "grid2"), pool_array(maps, "grid2"), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pooled[spec].mean(axis=(1, 2)), maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pool_positions(full["normed"], "grid2"), pooled["normed"], rtol=1e-5, atol=1e-5)


def test_a_grid2_cache_serves_the_heads_that_read_the_same_from_it(graphs_dir):
    """What `fit` reads from a `grid2` cache: a head that pools to the grid always; a head that
    averages only when every side is even (the mean of odd sides' overlapping cells is not the
    average); else the whole maps."""
    import keras

    from transfer.heads.registry import kind_of
    from transfer.training.fitting import cache_pool
    from graphs import freeze_to_pb

    image = keras.Input((7, 7, 3), name="image")
    odd = keras.Model(image, keras.layers.Conv2D(4, 1, name="conv")(image))
    backbone = Backbone.load(freeze_to_pb(odd, graphs_dir / "odd_sides.pb"), cut="auto")
    logreg, multilayer = kind_of("logreg"), kind_of("multilayer")
    assert cache_pool(backbone, logreg, {"pooling": "grid2"}, "grid2") == "grid2"
    assert cache_pool(backbone, logreg, {}, "grid2") == "none"
    assert cache_pool(backbone, multilayer, {"grid": 2}, "grid2") == "grid2"
    even = Backbone.load("example:digits", cut="block1_out")
    assert cache_pool(even, logreg, {}, "grid2") == "grid2"
    assert cache_pool(even, kind_of("conv"), {}, "grid2") == "none"
