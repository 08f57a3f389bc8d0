"""`multilayer`: features of several cuts at once, each pooled, standardized, concatenated, then
one sparse linear classifier that keeps the cuts (or features) that carry the class.

Head2Toe (Evci et al., ICML 2022) showed it: the best features for a new task are spread over
many layers of a network, and a linear head on all of them, with the useless ones removed by a
sparse penalty, beats any single cut. Here each input (one cut: 2-D vectors, 3-D sequences or
4-D maps, any shapes) is average-pooled to a `grid` (`grid=1`: global average; `grid=2`: 2x2
cells of a map, 2 segments of a sequence), flattened, standardized per feature (adapted on the
training features, as every head), and concatenated. The classifier's kernel carries a penalty:
`group_lasso` (one group per input: whole cuts are dropped) or `l1` (single features are).

After training, `group_norms()` says how much weight each input carries and `kept` which inputs
are kept (norm above `tolerance` x the largest); `kept_features()` the same per feature. A
`mask` (a saved weight, all ones unless set) restricts the classifier to chosen features: the
refit that `choose_multilayer` makes on the kept fraction, as Head2Toe does (`refit=0.05`: the
head does it itself when `transfer.fit` or a sweep trains it); `subset()` is a head on the kept
inputs only, for an export that computes only those cuts.
`choose_multilayer` fits the head for several strengths, grids (and keep fractions) on training
features and returns the one with the best validation accuracy; strength 0, the no-sparsity end
of its path, is plain concatenation (a standardized logistic regression on every input's pooled
features), so that the choice is never worse than concatenation on validation.
"""
from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from transfer.errors import TransferError, check_number

from .base import HEAD_OPTIONS, Head, check_choice, check_flag, check_int
from .pooling import grid_cells
from .protocol import Option
from .registry import register
from .standardization import Moments, Standardization, feature_batches

PENALTIES = ("group_lasso", "l1", "none")


@keras.saving.register_keras_serializable(package="transfer")
class GridPooling(keras.layers.Layer):
    """(batch, ..., channels) -> (batch, cells x channels): positions average-pooled to `grid` cells
    per spatial axis (bins as adaptive average pooling draws them), then flattened; 2-D passes."""

    def __init__(self, grid=1, **kwargs):
        super().__init__(**kwargs)
        self.grid = check_int("GridPooling", "grid", grid)

    def call(self, inputs):
        if len(inputs.shape) == 2:
            return inputs
        if self.grid == 1:
            return ops.mean(inputs, axis=tuple(range(1, len(inputs.shape) - 1)))
        return grid_cells(inputs, self.grid, ops)

    def compute_output_shape(self, input_shape):
        spatial = len(input_shape) - 2
        return (input_shape[0], input_shape[-1] * (1 if spatial == 0 else self.grid**spatial))

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package="transfer")
class GroupPenalty(keras.regularizers.Regularizer):
    """strength x sum over groups of sqrt(group size) x ||rows of the group|| (group lasso), or
    strength x sum |w| (l1), on a (features, classes) kernel whose rows come in groups of `sizes`."""

    def __init__(self, penalty, strength, sizes):
        self.penalty, self.strength, self.sizes = penalty, float(strength), [int(size) for size in sizes]

    def __call__(self, kernel):
        if self.penalty == "none" or not self.strength:
            return ops.zeros(())
        if self.penalty == "l1":
            return self.strength * ops.sum(ops.abs(kernel))
        total, start = 0.0, 0
        for size in self.sizes:
            group = kernel[start:start + size]
            total = total + math.sqrt(size) * ops.sqrt(ops.sum(ops.square(group)) + 1e-12)
            start += size
        return self.strength * total

    def get_config(self):
        return {"penalty": self.penalty, "strength": self.strength, "sizes": self.sizes}


@register("multilayer")
@keras.saving.register_keras_serializable(package="transfer")
class MultiLayerHead(Head):
    """A list of feature tensors (one per cut) -> pooled, standardized, concatenated -> sparse Dense."""

    traits = dataclasses.replace(Head.traits, several_cuts=True, averages_positions=("grid", 1), refits=True,
                                 subsets=True, concatenates=True)
    options = (*HEAD_OPTIONS, Option("grid", 1, "cells per spatial axis, an integer >= 1 (1: global average)"),
               Option("penalty", "group_lasso", "group_lasso, l1 or none"),
               Option("strength", 1e-2, "the penalty's weight, a number >= 0"),
               Option("tolerance", 0.1, "a cut is kept with a norm >= tolerance x the largest, in [0, 1]"),
               Option("refit", 0.0, "the fraction of features refitted without penalty, in [0, 1] (0: none)"),
               Option("concatenation", True, "also fit every cut concatenated (no penalty) and keep that where "
                      "validation prefers it: true or false"))
    needs = "a list of 2-D, 3-D or 4-D feature tensors (one per cut)"

    def __init__(self, num_classes, grid=1, penalty="group_lasso", strength=1e-2, tolerance=0.1, logits=False,
                 standardize=True, refit=0.0, concatenation=True, **kwargs):
        super().__init__(num_classes, logits, standardize, **kwargs)
        self.concatenation = check_flag(self.owner, "concatenation", concatenation)
        check_number(f"{self.owner}: refit", refit, 0, maximum=1)
        self.refit = float(refit)  # 0: none; else the fraction of features the second fit keeps
        self.refitted = False  # begin_refit ran: the mask, not the penalty, selects the features
        self.grid = check_int(self.owner, "grid", grid)
        self.penalty = check_choice(self.owner, "penalty", penalty, PENALTIES)
        check_number(f"{self.owner}: strength", strength, 0)
        self.strength = float(strength)
        check_number(f"{self.owner}: tolerance", tolerance, 0, maximum=1)
        self.tolerance = float(tolerance)
        self.poolings, self.standardizations, self.sizes = [], [], []
        # A linear softmax classifier trains from zeros (a convex problem): an input only gains
        # weight where its gradient outweighs the penalty, so a dropped cut stays near 0.
        self.classifier.kernel_initializer = keras.initializers.Zeros()

    # --- building and running ------------------------------------------------------------------

    def build(self, input_shape):
        shapes = self._shapes(input_shape)
        self.input_shapes = [(None, *shape[1:]) for shape in shapes]
        for number, shape in enumerate(shapes):
            pooling = GridPooling(self.grid, name=f"pooling_{number}")
            if self.grid > 1 and None in tuple(shape)[1:-1]:
                raise TransferError(f"{self.owner}: grid={self.grid} needs a fixed spatial size, input {number} "
                                    f"has shape {tuple(shape)}; use grid=1 (global average)")
            size = pooling.compute_output_shape(shape)[-1]
            self.poolings.append(pooling)
            self.sizes.append(size)
            if self.standardize:
                self.standardizations.append(Standardization(name=f"standardization_{number}"))
                self.standardizations[-1].build((None, size))
        total = sum(self.sizes)
        self.mask = self.add_weight(name="mask", shape=(total,), initializer="ones", trainable=False)
        self.classifier.kernel_regularizer = GroupPenalty(self.penalty, self.strength, self.sizes)
        self.classifier.build((None, total))

    def _shapes(self, input_shape):
        """The input shapes as a list (one tensor is a list of one), each of a rank this head reads."""
        several = isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple))
        shapes = [tuple(shape) for shape in input_shape] if several else [tuple(input_shape)]
        for number, shape in enumerate(shapes):
            if len(shape) not in self.ranks or shape[-1] is None:
                raise TransferError(f"{self.owner} needs {self.needs}, got shape {shape} for input {number}")
        if self.built and len(shapes) != len(self.sizes):
            raise TransferError(f"{self.owner} was built for {len(self.sizes)} inputs, got {len(shapes)}")
        return shapes

    def pooled(self, inputs):
        """Each input pooled to its fixed length: a list of (batch, size) tensors."""
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if len(inputs) != len(self.poolings):
            raise TransferError(f"{self.owner} was built for {len(self.poolings)} inputs, got {len(inputs)}")
        return [pooling(x) for pooling, x in zip(self.poolings, inputs)]

    def call(self, inputs, training=None):
        joined = self.joined(inputs, training)
        return self.classifier(joined * ops.cast(self.mask, joined.dtype))

    def joined(self, inputs, training=None):
        """What the classifier reads (before the mask): each input pooled, standardized, concatenated."""
        pooled = self.pooled(inputs)
        if self.standardize:
            self.warn_if_not_adapted(training)
            pooled = [standardization(x) for standardization, x in zip(self.standardizations, pooled)]
        return pooled[0] if len(pooled) == 1 else ops.concatenate(pooled, axis=-1)

    def compute_output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        return (shapes[0][0], self.num_classes)

    # --- standardization -----------------------------------------------------------------------

    @property
    def adapted(self) -> bool:
        return not self.standardize or (bool(self.standardizations)
                                        and all(s.adapted for s in self.standardizations))

    def adapt(self, features, steps=None):
        """Per-feature mean and variance of each input's pooled features; returns the head.
        `features`: a list of arrays (one per cut), or batches of such lists (a tf.data.Dataset
        of tuples, or of (tuple, labels) pairs, or any iterable); `steps`: at most that many."""
        if not self.standardize:
            return self
        moments = None
        for batch in feature_batches(features, steps, several=True):
            if len(self.sizes) == 1 and len(batch) == 2 and np.ndim(batch[1]) == 1:
                batch = batch[:1]  # (features, labels) of a head built on one input
            if not self.built:
                self.build([(None, *np.shape(x)[1:]) for x in batch])
            pooled = [np.asarray(x) for x in self.pooled([ops.convert_to_tensor(x, "float32") for x in batch])]
            moments = moments or [Moments() for _ in pooled]
            for moment, values in zip(moments, pooled):
                moment.update(values)
        if moments is None or moments[0].mean is None:
            raise TransferError(f"{self.owner}: adapt was given no features")
        for standardization, moment in zip(self.standardizations, moments):
            standardization.set_statistics(moment)
        return self

    # --- what the penalty kept -----------------------------------------------------------------

    def feature_norms(self) -> list[np.ndarray]:
        """Per input, the L2 norm over classes of each pooled feature's (masked) classifier weights."""
        kernel = ops.convert_to_numpy(self.classifier.kernel) * ops.convert_to_numpy(self.mask)[:, None]
        norms = np.linalg.norm(kernel, axis=1)
        return np.split(norms, np.cumsum(self.sizes)[:-1])

    def group_norms(self) -> np.ndarray:
        """The norm of each input's (cut's) classifier weights: near 0 where the penalty dropped it."""
        return np.array([np.linalg.norm(norms) for norms in self.feature_norms()])

    @property
    def kept(self) -> tuple[int, ...]:
        """The inputs (cuts, in input order) with a feature kept by `kept_features`."""
        return tuple(number for number, features in enumerate(self.kept_features()) if len(features))

    def kept_features(self, tolerance=None) -> list[np.ndarray]:
        """Per input, the indices of its pooled features that carry weight: with group_lasso, all
        features of the inputs whose group norm is at least `tolerance` x the largest; with l1,
        each feature whose norm is at least `tolerance` x the largest feature norm; without a
        penalty, or after a refit (the mask selected them), every feature the mask lets through."""
        tolerance = self.tolerance if tolerance is None else tolerance
        norms = self.feature_norms()
        if self.penalty == "none" or not self.strength or self.refitted:
            return [np.flatnonzero(n > 0) for n in norms]
        if self.penalty == "group_lasso":
            groups = self.group_norms()
            return [np.flatnonzero(n > 0) if g > 0 and g >= tolerance * groups.max() else np.array([], int)
                    for n, g in zip(norms, groups)]
        largest = max(float(n.max(initial=0)) for n in norms)
        return [np.flatnonzero((n > 0) & (n >= tolerance * largest)) for n in norms]

    def subset(self, inputs=None) -> "MultiLayerHead":
        """A head on only some of the inputs (default: `kept`), with this head's statistics, mask and
        weights for them, so that an export computes only those cuts. Its predictions on those
        inputs are this head's minus the dropped inputs' contribution: exactly the same where the
        mask zeroed them (a `choose_multilayer` refit), else as near as their weights are to 0."""
        inputs = list(self.kept if inputs is None else inputs)
        if not inputs or any(not 0 <= number < len(self.sizes) for number in inputs):
            raise TransferError(f"{self.owner}: subset takes input numbers in 0..{len(self.sizes) - 1}, got {inputs}")
        head = MultiLayerHead.from_config({**self.get_config(), "name": f"{self.name}_subset"})
        head.build([self.input_shapes[number] for number in inputs])
        rows = np.split(np.arange(sum(self.sizes)), np.cumsum(self.sizes)[:-1])
        chosen = np.concatenate([rows[number] for number in inputs])
        kernel, bias = self.classifier.get_weights()
        head.classifier.set_weights([kernel[chosen], bias])
        head.mask.assign(ops.convert_to_numpy(self.mask)[chosen])
        for new, number in zip(head.standardizations, inputs):
            new.set_weights(self.standardizations[number].get_weights())
        return head

    def set_mask(self, kept_features) -> None:
        """Use only these pooled features of each input (a list of index arrays, one per input)."""
        mask = np.zeros(sum(self.sizes), "float32")
        for start, indices in zip(np.cumsum([0, *self.sizes[:-1]]), kept_features):
            mask[start + np.asarray(indices, int)] = 1.0
        self.mask.assign(mask)

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "penalty": self.penalty, "strength": self.strength,
                "tolerance": self.tolerance, "refit": self.refit, "concatenation": self.concatenation}

    def fit_concatenation(self, joined, labels) -> "MultiLayerHead":
        """The no-sparsity end of the path, in place: every pooled feature kept, no penalty, the
        classifier made scikit-learn's logistic regression (the `logreg` probe's: C=1) on `joined`,
        what the classifier reads (`joined(inputs)`: pooled, standardized, concatenated). Convex
        and solved to convergence, where Adam on the unpenalized head would stop early at a point
        that depends on the learning rate. Returns the head."""
        from sklearn.linear_model import LogisticRegression

        from .sklearn_probe import softmax_weights

        model = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(joined, "float32"), labels)
        self.classifier.set_weights(list(softmax_weights(model, np.arange(self.num_classes))))
        self.mask.assign(ops.ones_like(self.mask))
        self.strength, self.refitted = 0.0, False
        self.classifier.kernel.regularizer = None
        return self

    def begin_refit(self) -> None:
        """Head2Toe's second fit, for `refit` > 0 (`transfer.fit` and sweeps run it after the first):
        keep the `refit` fraction of pooled features with the largest weights (the mask), drop the
        penalty, and start the classifier again from zero, to be trained once more."""
        self.set_mask(_top_fraction(self, self.refit))
        self.classifier.kernel.regularizer = None
        self.refitted = True
        for weight in (self.classifier.kernel, self.classifier.bias):
            weight.assign(ops.zeros_like(weight))


# --- chosen on validation ----------------------------------------------------------------------------


@dataclasses.dataclass
class MultiLayerChoice:
    head: MultiLayerHead  # trained (and adapted), the best by validation accuracy
    strength: float
    keep_fraction: float | None  # None: no refit
    val_accuracy: float
    tried: list  # one dict per setting: strength, keep_fraction, val_accuracy, kept (input indices)


def choose_multilayer(train, validation, num_classes, *, strengths=(0.0, 1e-3, 3e-3, 1e-2, 3e-2),
                      keep_fractions=(None,), grids=None, epochs=50, lr=1e-2, batch_size=64, patience=5, seed=0,
                      **head_options) -> MultiLayerChoice:
    """Fit a `multilayer` head for each strength and grid (and, for each keep fraction, refit it on
    the fraction of pooled features with the largest weights, without penalty, as Head2Toe does);
    return the best by validation accuracy (ties: the sparser, i.e. larger strength, then smaller
    fraction, then the smaller grid). Strength 0 is the no-sparsity end of the path: every input
    kept, the head fitted as plain concatenation is, a standardized logistic regression on all the
    pooled features (`_concatenation`), so that the choice can always keep everything and is never
    worse than concatenation on validation. `grids`: the grids to choose from (default: the
    `grid` head option, else 1). `train`, `validation`: (list of feature arrays, labels) or
    tf.data.Datasets of unbatched ((features, ...), label) elements (`FeatureSplits.train`).
    `head_options`: grid, penalty, tolerance, logits, standardize. Early stopping on validation
    loss (`patience`)."""
    train, validation = _arrays(train, "train"), _arrays(validation, "validation")
    tried, best = [], None
    for grid in grids or (head_options.pop("grid", 1),):
        options = dict(head_options, grid=grid)
        for strength in strengths:
            head = (_concatenation(train, num_classes, options, seed) if not strength else
                    _fit(train, validation, num_classes, dict(options, strength=strength), epochs, lr, batch_size,
                         patience, seed))
            for fraction in keep_fractions:
                chosen = head if fraction is None else _fit(
                    train, validation, num_classes, dict(options, strength=0.0, penalty="none"), epochs, lr,
                    batch_size, patience, seed, mask=_top_fraction(head, fraction))
                accuracy = _accuracy(chosen, validation)
                tried.append({"grid": grid, "strength": strength, "keep_fraction": fraction,
                              "val_accuracy": accuracy, "kept": list(chosen.kept)})
                key = (accuracy, strength, -(fraction or 1.0), -grid)
                if best is None or key > best[0]:
                    best = (key, MultiLayerChoice(chosen, strength, fraction, accuracy, tried))
    return best[1]


def _arrays(data, role):
    """(list of float32 arrays, int labels) from arrays or an unbatched dataset of (features, label)."""
    if isinstance(data, (list, tuple)) and len(data) == 2 and not hasattr(data, "element_spec"):
        features, labels = data
        features = features if isinstance(features, (list, tuple)) else [features]
        return [np.asarray(x, "float32") for x in features], np.asarray(labels)
    if hasattr(data, "element_spec"):
        batches = list(data.batch(256).as_numpy_iterator())
        if not batches:
            raise TransferError(f"choose_multilayer: the {role} features are empty")
        firsts = [x if isinstance(x, (list, tuple)) else [x] for x, _ in batches]
        features = [np.concatenate([b[i] for b in firsts]).astype("float32") for i in range(len(firsts[0]))]
        return features, np.concatenate([y for _, y in batches])
    raise TransferError(f"choose_multilayer: {role} must be (feature arrays, labels) or a tf.data.Dataset of "
                        f"((features, ...), label), got {type(data).__name__}")


def _fit(train, validation, num_classes, options, epochs, lr, batch_size, patience, seed, mask=None):
    head, model = _built(train, num_classes, options, seed, mask)
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=head.logits),
                  metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    model.fit(train[0], train[1], validation_data=validation, epochs=epochs, batch_size=batch_size, verbose=0,
              callbacks=[stop])
    return head


def _built(train, num_classes, options, seed, mask=None):
    """(a head built and adapted on the training features, its Keras model), seeded."""
    keras.utils.set_random_seed(seed)
    head = MultiLayerHead(num_classes, **options)
    inputs = [keras.Input(x.shape[1:]) for x in train[0]]
    model = keras.Model(inputs, head(inputs))
    if mask is not None:
        head.set_mask(mask)
    head.adapt(train[0])
    return head, model


def _concatenation(train, num_classes, options, seed):
    """The head at strength 0: `MultiLayerHead.fit_concatenation` on the training features."""
    head, _ = _built(train, num_classes, dict(options, strength=0.0, penalty="none"), seed)
    joined = ops.convert_to_numpy(head.joined([ops.convert_to_tensor(x) for x in train[0]], training=False))
    return head.fit_concatenation(joined, train[1])


def _top_fraction(head, fraction):
    """Per input, the pooled features among the `fraction` of all with the largest weight norms."""
    check_number("choose_multilayer: keep_fraction", fraction, 0, above=True, maximum=1)
    norms = head.feature_norms()
    flat = np.concatenate(norms)
    count = max(1, int(round(fraction * len(flat))))
    chosen = np.zeros(len(flat), bool)
    chosen[np.argsort(-flat, kind="stable")[:count]] = True
    return [np.flatnonzero(part) for part in np.split(chosen, np.cumsum(head.sizes)[:-1])]


def _accuracy(head, data):
    features, labels = data
    probabilities = ops.convert_to_numpy(head([ops.convert_to_tensor(x) for x in features], training=False))
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
