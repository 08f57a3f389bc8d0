"""`logreg`: a scikit-learn logistic-regression probe on (cached) features.

Not a Keras layer: it trains in one `fit` call, with no epochs or optimizer, which makes it the
quickest honest measure of how linearly separable a cut's features are. Its traits say
`keras=False` (`transfer.heads.protocol`): a training loop calls `fit(X, y)` / `predict_proba(X)`
instead of building a model.
Like the Keras heads it standardizes its (pooled) features first (a StandardScaler;
`standardize=False` turns it off), so C means the same at every feature scale.
It fits with BLAS on one thread: its products (examples x features x classes, a few hundred per
fit) are too small to gain from a second one, and on busy cores a second thread that waits for
the first made a fit ~25x slower (ResNet50's cuts, 1,438 examples, 512-2,048 features, 2 shared
cores: 5-16 s against 0.5-0.65 s, in about as many iterations).
"""
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from transfer.errors import TransferError

from .base import check_flag, check_int
from .pooling import POOLING, check_pooling, pool_array
from .protocol import HeadTraits, Option
from .registry import register


@register("logreg")
class LogRegProbe(ClassifierMixin, BaseEstimator):
    """LogisticRegression on pooled features; sklearn conventions (get_params, clone, ...).

    With `num_classes`, labels must be 0..num_classes-1 and `predict_proba` always has
    num_classes columns (zero for a class absent from training), like the Keras heads.
    """

    traits = HeadTraits(keras=False, averages_positions=("pooling", "avg"))
    options = (Option("num_classes", None, "an integer >= 2, or none: the classes seen in training"),
               Option("C", 1.0, "the inverse regularization strength, a number > 0"),
               Option("max_iter", 1000, "an integer >= 1"), POOLING,
               Option("standardize", True, "true or false: standardize the features first"))

    def __init__(self, num_classes=None, C=1.0, max_iter=1000, pooling="avg", standardize=True):
        self.num_classes = num_classes
        self.C = C
        self.max_iter = max_iter
        self.pooling = pooling
        self.standardize = standardize

    def fit(self, X, y):
        X, y = validate_data(self, self._pool(X), y)
        check_flag(self._owner, "standardize", self.standardize)
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        with threadpool_limits(limits=1, user_api="blas"):
            model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self._scaled(X), y)
        if self.num_classes is None:
            self.classes_ = model.classes_
        else:
            self.classes_ = np.arange(check_int(self._owner, "num_classes", self.num_classes, 2))
            unknown = np.setdiff1d(model.classes_, self.classes_)
            if unknown.size:
                raise TransferError(
                    f"{self._owner}: labels {unknown.tolist()} are outside "
                    f"0..{self.num_classes - 1} (num_classes={self.num_classes})"
                )
        self.model_, self.n_iter_ = model, model.n_iter_
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, self._pool(X), reset=False)
        proba = np.zeros((X.shape[0], len(self.classes_)))
        columns = np.searchsorted(self.classes_, self.model_.classes_)
        proba[:, columns] = self.model_.predict_proba(self._scaled(X))
        return proba

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    @property
    def _owner(self):
        return f"head {self.head_name!r}"

    def _scaled(self, X):
        return X if self.scaler_ is None else self.scaler_.transform(X)

    def _pool(self, X):
        check_pooling(self._owner, self.pooling)
        return pool_array(X, self.pooling) if getattr(X, "ndim", 2) > 2 else X


def probe_as_head(probe, feature_shape):
    """A fitted scikit-learn logistic regression as the equivalent Keras `linear` head.

    Multinomial logistic regression is softmax(x W + b): exactly a Dense layer, so the probe
    exports like any other head. The probe's scaler is folded into it (`softmax_weights`: the
    head has `standardize=False`, its Dense does all), as are the classes absent from training.
    """
    from .linear import LinearHead

    head = LinearHead(num_classes=len(probe.classes_), pooling=probe.pooling, standardize=False)
    head.build((None, *feature_shape[1:]))
    head.classifier.set_weights(list(softmax_weights(probe.model_, probe.classes_, probe.scaler_)))
    return head


def softmax_weights(model, classes, scaler=None) -> tuple:
    """A fitted scikit-learn LogisticRegression as the (kernel, bias) of a softmax Dense layer over
    `classes` (float32), its `scaler` (a fitted StandardScaler, or None) folded in: ((x - m) / s) W
    + b is x (W / s) + (b - (m / s) W), computed in float64. A binary model's single logit z
    becomes the pair (0, z); classes absent from training get a bias of -1e9 (probability 0)."""
    coef, intercept = model.coef_.astype("float64"), model.intercept_.astype("float64")
    if scaler is not None:
        intercept = intercept - coef @ (scaler.mean_ / scaler.scale_)
        coef = coef / scaler.scale_
    if coef.shape[0] == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    kernel = np.zeros((coef.shape[1], len(classes)), "float32")
    bias = np.full(len(classes), -1e9, "float32")
    columns = np.searchsorted(classes, model.classes_)
    kernel[:, columns] = coef.T
    bias[columns] = intercept
    return kernel, bias
