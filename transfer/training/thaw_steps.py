"""How far each thawed layer may step, measured on training examples before training starts.

An optimizer's step is absolute: Adam's first step moves every weight by about the learning
rate, whatever the weight's scale. The head sees the cut features standardized by their spread
at the start (`heads/standardization.py`), so where the features are tiny (std 3e-7 on a
backbone with small weights, or after many layers that shrink their input) one step of a bias by
1e-3 moves them by thousands of standard deviations, and the loss goes from 1.4 to millions in
an epoch. So before training, each thawed layer takes that first step once, along the sign of
the gradient of a random projection of the standardized features: a layer whose step moves the
features by more than `MAX_SHIFT` standard deviations (root mean square over the examples)
trains at its learning rate times `MAX_SHIFT / shift`; the others as before (on the shipped
digits backbone every layer stays at scale 1). The weights are set back afterwards.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from transfer.detail import detail

MAX_SHIFT = 1.0  # standard deviations of the cut features that one thawed layer's first step may move them
REFINEMENTS = 3  # re-measurements at the reduced step (a ReLU network is not linear in a large step)


def thaw_step_scales(features, batch, feature_layer, lr: float) -> dict[int, float]:
    """Thawed layer index (1 = nearest the cut, as `weight_layer_indices`) -> learning-rate scale
    (<= 1) for `features` (a Keras model: examples -> the cut features, through `feature_layer`,
    a ThawedFeatureLayer) on `batch`, at learning rate `lr`."""
    before = _flat(features(batch, training=False))
    spread = [_spread(x) for x in before]
    directions = _directions(features, batch, feature_layer.thawed_weights, before, spread)
    scales, indices = {}, feature_layer.weight_layer_indices
    for index in sorted(set(indices)):
        members = [(w, d) for w, d, i in zip(feature_layer.thawed_weights, directions, indices)
                   if i == index and d is not None]
        scale, first = 1.0, None
        for _ in range(REFINEMENTS):
            shift = _shift(features, batch, members, lr * scale, before, spread)
            first = shift if first is None else first
            if shift <= MAX_SHIFT * 1.01:
                break
            scale *= MAX_SHIFT / shift if np.isfinite(shift) else 1e-6
        scales[index] = scale
        scope = next((layer.scope for layer in feature_layer.plan.layers if layer.index == index), index)
        detail(f"thaw step of {scope}: at lr {lr:g} it moves the cut features by {first:.3g} standard deviations; "
               f"learning-rate scale {scale:.3g}")
    return scales


def _flat(features) -> list[np.ndarray]:
    return [np.asarray(x, dtype="float64") for x in tf.nest.flatten(features)]


def _spread(features: np.ndarray) -> np.ndarray:
    """Per-channel standard deviation, as the head's standardization takes it (a constant channel: 1)."""
    values = features.reshape(-1, features.shape[-1])
    std, mean = values.std(axis=0), values.mean(axis=0)
    constant = (std <= np.sqrt(np.finfo("float32").tiny)) | (std <= 1e-6 * np.abs(mean))
    return np.where(constant, 1.0, std)


def _directions(features, batch, weights, before, spread) -> list:
    """Each weight's first Adam step, without its size: the sign of the gradient of a random
    projection (fixed seed) of the standardized features (`before`: the features, `spread`: their
    per-channel standard deviations)."""
    rng = np.random.default_rng(0)
    projections = [tf.constant(rng.standard_normal(x.shape).astype("float32") / s.astype("float32"))
                   for x, s in zip(before, spread)]

    def gradients():
        with tf.GradientTape() as tape:
            outputs = tf.nest.flatten(features(batch, training=False))
            projection = tf.add_n([tf.reduce_sum(tf.cast(x, tf.float32) * r) for x, r in zip(outputs, projections)])
        return tape.gradient(projection, list(weights))

    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        strategy = tf.distribute.get_strategy()  # distributed weights: their gradient only in a replica's context
        found = [strategy.experimental_local_results(g)[0] if g is not None else None
                 for g in strategy.run(gradients)]
    else:
        found = gradients()
    return [None if g is None else np.sign(np.asarray(g)) for g in found]


def _shift(features, batch, members, step: float, before, spread) -> float:
    """RMS movement, in standard deviations, of the features when `members` (weight, direction)
    step by `step` along their directions; the weights are restored."""
    saved = [np.asarray(w.numpy()) for w, _ in members]
    try:
        for (weight, direction), value in zip(members, saved):
            weight.assign((value + step * direction).astype(value.dtype))
        after = _flat(features(batch, training=False))
    finally:
        for (weight, _), value in zip(members, saved):
            weight.assign(value)
    moved = np.concatenate([((a - b) / s).ravel() for a, b, s in zip(after, before, spread)])
    return float(np.sqrt(np.mean(moved ** 2))) if np.all(np.isfinite(moved)) else float("inf")
