"""A closed-form probe: ridge regression to one-hot labels on standardized features, with its
whole regularization path from one eigendecomposition.

Why: ranking every candidate cut of a network with the `logreg` probe costs one iterative
logistic regression per cut (~2 s on 2,048 features); a sweep over 177 cuts then spends minutes
on probes. Ridge to one-hot targets (a least-squares classifier, LDA's close cousin) has a closed
form: with the eigendecomposition of the features' covariance X'X = V S V' (or, with more
features than examples, of their Gram matrix XX' = U S U'), the weights for every strength
lambda are V diag(1 / (s + lambda)) V'X'Y, so validation scores for a whole path cost one
factorization and a few matrix products. Its argmax accuracy tracks logistic regression's
closely (tests/test_ridge_probe.py checks it against scikit-learn's), which is all a ranking
needs; the cuts it ranks best then get the full probe.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from transfer.errors import TransferError

# Strengths as multiples of the number of training examples: on standardized features the
# penalty then means the same at every split size (lambda = n * alpha: mean squared error + alpha |w|^2).
ALPHAS = tuple(10.0 ** k for k in np.arange(-3.0, 3.5, 0.5))


@dataclasses.dataclass
class RidgePath:
    """A ridge path fitted on training features and scored on validation ones."""

    alphas: np.ndarray  # the strengths tried (multiples of the training size)
    val_accuracies: np.ndarray  # one per strength
    best: int  # the index of the chosen strength (best validation accuracy; ties: the stronger)
    mean: np.ndarray  # the standardization, (features,)
    scale: np.ndarray
    weights: np.ndarray  # (features, classes) at the chosen strength, on standardized features
    intercept: np.ndarray  # (classes,)
    classes: np.ndarray

    @property
    def val_accuracy(self) -> float:
        return float(self.val_accuracies[self.best])

    @property
    def score(self) -> tuple:
        """What a ranking sorts by: the best validation accuracy, then the path's mean (smoother
        on small validation splits, where many cuts tie on the best)."""
        return (self.val_accuracy, float(np.mean(self.val_accuracies)))

    def decision_function(self, X) -> np.ndarray:
        return ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.weights + self.intercept

    def predict(self, X) -> np.ndarray:
        return self.classes[np.argmax(self.decision_function(X), axis=1)]


def ridge_path(train_x, train_y, val_x, val_y, alphas=ALPHAS) -> RidgePath:
    """Fit ridge to one-hot labels for every strength in `alphas` from one eigendecomposition,
    choose the strength by validation accuracy. Features: (examples, features) arrays."""
    X, Xv = _matrix(train_x, "training"), _matrix(val_x, "validation")
    if X.shape[1] != Xv.shape[1]:
        raise TransferError(f"ridge probe: training features have {X.shape[1]} columns, validation {Xv.shape[1]}")
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    classes, codes = np.unique(train_y, return_inverse=True)
    if len(classes) < 2:
        raise TransferError(f"ridge probe: the training labels have {len(classes)} class, it needs 2 or more")
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature stays 0, as StandardScaler leaves it
    X, Xv = (X - mean) / scale, (Xv - mean) / scale
    Y = np.eye(len(classes))[codes]
    offset = Y.mean(axis=0)
    Y -= offset
    n, lambdas = len(X), np.asarray(alphas, np.float64) * len(X)
    project, factor, values = _factorization(X, Xv, Y)
    hits = np.searchsorted(classes, val_y)
    known = (hits < len(classes)) & (classes[np.minimum(hits, len(classes) - 1)] == val_y)
    accuracies = np.array([np.mean(known & (np.argmax(project @ (factor / (values + lam)[:, None]), axis=1) == hits))
                           for lam in lambdas])
    best = int(len(accuracies) - 1 - np.argmax(accuracies[::-1]))  # ties: the stronger penalty
    weights = _weights(X, Y, lambdas[best], n)
    return RidgePath(np.asarray(alphas, np.float64), accuracies, best, mean, scale, weights, offset, classes)


def _matrix(x, role: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or not len(x):
        raise TransferError(f"ridge probe: the {role} features must be a non-empty (examples, features) array, "
                            f"got shape {x.shape}")
    return x


def _factorization(X, Xv, Y) -> tuple:
    """(P, F, s) such that the validation scores at strength lambda are P @ (F / (s + lambda)):
    from the covariance's eigenvectors when features are fewer than examples, else the Gram's."""
    if X.shape[1] <= X.shape[0]:
        values, vectors = scipy.linalg.eigh(X.T @ X, driver="evd", check_finite=False)
        return Xv @ vectors, vectors.T @ (X.T @ Y), np.maximum(values, 0.0)
    values, vectors = scipy.linalg.eigh(X @ X.T, driver="evd", check_finite=False)
    return (Xv @ X.T) @ vectors, vectors.T @ Y, np.maximum(values, 0.0)


def _weights(X, Y, lam: float, n: int) -> np.ndarray:
    """The ridge weights at one strength (a Cholesky solve on the smaller side)."""
    if X.shape[1] <= n:
        return scipy.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ Y, assume_a="pos", check_finite=False)
    return X.T @ scipy.linalg.solve(X @ X.T + lam * np.eye(n), Y, assume_a="pos", check_finite=False)
