"""A closed-form probe: ridge regression to one-hot labels on standardized features, over a short
regularization path, each strength scored on validation.

Why: ranking every candidate cut of a network with the `logreg` probe costs one iterative
logistic regression per cut (~2 s on 2,048 features); a sweep over 177 cuts then spends minutes
on probes. Ridge to one-hot targets (a least-squares classifier, LDA's close cousin) has a closed
form, (X'X + lambda I)^-1 X'Y, or X'(XX' + lambda I)^-1 Y with more features than examples: one
product for the covariance (or Gram) matrix, shared by every strength, and one Cholesky solve
per strength. (One eigendecomposition would give every strength at once, but on 2 CPU cores it
costs ~10-15 Cholesky factorizations of the same matrix: 0.3-0.6 s against 0.02-0.04 s at 1,024
features; five strengths are enough for a ranking.) Its argmax accuracy tracks logistic
regression's (tests/test_ridge_probe.py checks it against scikit-learn's on a small problem),
which is all a ranking needs; the cuts it ranks best then get the full probe.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

from transfer.errors import TransferError

# Strengths as multiples of the number of training examples: on standardized features the
# penalty then means the same at every split size (lambda = n * alpha: mean squared error + alpha |w|^2).
ALPHAS = (1e-2, 1e-1, 1.0, 1e1, 1e2)


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


def ridge_path(train_x, train_y, val_x, val_y, alphas=ALPHAS, limit_blas: bool = True) -> RidgePath:
    """Fit ridge to one-hot labels for every strength in `alphas` (one Gram or covariance matrix,
    one Cholesky solve each), choose the strength by validation accuracy. Features: (examples,
    features) arrays; computed in float32, as they are cached. BLAS runs on one thread: these
    small factorizations gain little from a second, and on busy cores a second thread that waits
    for the first made them 3-10x slower (2 shared cores: 0.1 s against 0.25 s at 1,024 features).
    `limit_blas=False`: the caller holds that limit (threads fitting several paths at once must
    not each set and restore the process-wide setting)."""
    if not limit_blas:
        return _ridge_path(train_x, train_y, val_x, val_y, alphas)
    with threadpool_limits(limits=1, user_api="blas"):
        return _ridge_path(train_x, train_y, val_x, val_y, alphas)


def _ridge_path(train_x, train_y, val_x, val_y, alphas) -> RidgePath:
    X, Xv = _matrix(train_x, "training"), _matrix(val_x, "validation")
    if X.shape[1] != Xv.shape[1]:
        raise TransferError(f"ridge probe: training features have {X.shape[1]} columns, validation {Xv.shape[1]}")
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    classes, codes = np.unique(train_y, return_inverse=True)
    if len(classes) < 2:
        raise TransferError(f"ridge probe: the training labels have {len(classes)} class, it needs 2 or more")
    # Statistics accumulated in float64, applied in float32: 2.5x faster than float64 throughout.
    mean = X.mean(axis=0, dtype=np.float64)
    X = X - mean.astype(np.float32)
    scale = np.sqrt(np.mean(np.square(X), axis=0, dtype=np.float64))
    scale[scale < 1e-12] = 1.0  # a constant feature stays 0, as StandardScaler leaves it
    X /= scale.astype(np.float32)
    Xv = (Xv - mean.astype(np.float32)) / scale.astype(np.float32)
    Y = np.eye(len(classes), dtype=np.float32)[codes]
    offset = Y.mean(axis=0)
    Y -= offset
    primal = X.shape[1] <= X.shape[0]
    gram = X.T @ X if primal else X @ X.T
    right = X.T @ Y if primal else Y
    hits = np.searchsorted(classes, val_y)
    known = (hits < len(classes)) & (classes[np.minimum(hits, len(classes) - 1)] == val_y)
    accuracies, fitted = [], []
    for alpha in alphas:
        solved = _solve(gram, right, alpha * len(X))
        weights = solved if primal else X.T @ solved
        accuracies.append(float(np.mean(known & (np.argmax(Xv @ weights, axis=1) == hits))))
        fitted.append(weights)
    accuracies = np.asarray(accuracies)
    best = int(len(accuracies) - 1 - np.argmax(accuracies[::-1]))  # ties: the stronger penalty
    return RidgePath(np.asarray(alphas, np.float64), accuracies, best, mean, scale,
                     fitted[best].astype(np.float64), offset.astype(np.float64), classes)


def _matrix(x, role: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or not len(x):
        raise TransferError(f"ridge probe: the {role} features must be a non-empty (examples, features) array, "
                            f"got shape {x.shape}")
    return x


def _solve(gram, right, lam: float) -> np.ndarray:
    """(gram + lam I)^-1 right, by Cholesky (the matrix is symmetric positive definite for lam > 0)."""
    shifted = gram + np.asarray(lam, gram.dtype) * np.eye(len(gram), dtype=gram.dtype)
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(shifted, check_finite=False), right, check_finite=False)
