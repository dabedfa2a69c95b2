"""What the linear and logistic estimators share around a fit: parameter and input
validation, the run options of their passes, and prediction."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from blocklin.errors import ConfigError, InputDtypeError, InputValueError, ShapeMismatchError
from blocklin.executors.options import ComputeOptions
from blocklin.ml._validation import (
    _is_dask,
    is_stored,
    open_stored,
    stored_matrix,
    validate_features,
)

if TYPE_CHECKING:
    from blocklin.ml._solvers import TrainData

__all__ = ["check_common_params", "estimator_options", "features", "labels_1d", "predict_margin",
           "training_summary"]

S = TypeVar("S")


def _number(name: str, value: Any, lo: float, hi: float = np.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputDtypeError(f"{name} must be a real number; got {value!r}")
    if not (lo <= float(value) <= hi):
        raise InputValueError(f"{name} must be in [{lo}, {hi}]; got {value!r}")


def check_common_params(est: Any) -> None:
    """Validate the parameters both estimators share (before any pass)."""
    _number("reg_param", est.reg_param, 0.0)
    _number("elastic_net_param", est.elastic_net_param, 0.0, 1.0)
    _number("tol", est.tol, 0.0)
    if isinstance(est.max_iter, bool) or not isinstance(est.max_iter, numbers.Integral):
        raise InputDtypeError(f"max_iter must be an integer; got {est.max_iter!r}")
    if est.max_iter < 0:
        raise InputValueError(f"max_iter must be >= 0; got {est.max_iter}")
    for name in ("fit_intercept", "standardization"):
        if not isinstance(getattr(est, name), bool | np.bool_):
            raise InputDtypeError(f"{name} must be a bool; got {getattr(est, name)!r}")
    estimator_options(est)  # a bad option is refused before any pass


def estimator_options(est: Any) -> ComputeOptions:
    """The options an estimator's passes run with: its ``compute_options`` (a
    :class:`ComputeOptions` or a dict of its fields), where ``executor``, ``work_dir``
    and ``storage_options`` (the estimator's own parameters) fill what it leaves unset;
    a dict's fields take precedence over them.

    Raises
    ------
    ConfigError
        For a ``compute_options`` of another type or with an unknown field.
    """
    from blocklin.storage.stores import StorageOptions

    given = est.compute_options
    stored = getattr(est, "storage_options", None)
    own = {"executor": est.executor, "work_dir": est.work_dir,
           # The work dir's (and out= targets') options, unless compute_options names some.
           "storage_options": StorageOptions(stored).as_dict() if stored else None}
    if isinstance(given, ComputeOptions):
        return given.updated(**own)
    if given is not None and not isinstance(given, Mapping):
        raise ConfigError(f"compute_options must be a ComputeOptions or a dict of its fields; "
                          f"got {type(given).__name__}")
    return ComputeOptions.of({**own, **(given or {})})


def features(est: Any, X: Any, *, reset: bool) -> Any:
    """Validate X (see :func:`blocklin.ml._validation.validate_features`); scipy sparse
    matrices are accepted in memory as CSR (the kernels keep each chunk sparse)."""
    if hasattr(X, "tocsr") and hasattr(X, "nnz"):
        from sklearn.utils.validation import validate_data

        return validate_data(est, X, reset=reset, accept_sparse=["csr", "csc"],
                             dtype=[np.float64, np.float32]).tocsr()
    return validate_features(est, X, reset=reset)


def labels_1d(y: Any, X: Any) -> Any:
    """Validate labels: a finite numeric n-vector (or a stored column when X is stored)."""
    n = int(X.shape[0])
    if is_stored(y):
        Y = open_stored(y)
        if Y.shape != (n, 1):
            raise ShapeMismatchError(f"y must be an {n} x 1 column; got {Y.shape}")
        if is_stored(X):
            return Y
        y = Y.to_numpy()
    from sklearn.utils import check_array

    if y is None:
        raise InputValueError("requires y to be passed, but the target y is None")
    arr = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
    if arr.ndim == 2 and arr.shape[1] == 1:
        from sklearn.utils import column_or_1d

        arr = column_or_1d(arr, warn=True)  # scikit-learn's DataConversionWarning
    if arr.ndim != 1:
        raise InputValueError(f"y must be one column; got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ShapeMismatchError(f"X has {n} rows but y has {arr.shape[0]}")
    return arr



def predict_margin(X: Any, coef: np.ndarray, intercept: np.ndarray | float, est: Any) -> np.ndarray:
    """X @ coef + intercept for in-memory or stored X (one pass over stored X)."""
    if not (is_stored(X) or _is_dask(X)):
        out: np.ndarray = np.asarray(X @ coef, dtype=np.float64) + intercept
        return out
    from blocklin.executors.api import compute
    from blocklin.executors.intermediates import intermediates_scope
    from blocklin.ops.products import matmul

    opts = estimator_options(est)
    # The margins' BlockMatrix lives in the work dir: read, then removed with the scope.
    with stored_matrix(X, work_dir=opts.work_dir, name="X") as A, intermediates_scope():
        M = compute(matmul(A, np.ascontiguousarray(coef, dtype=np.float64)),
                    compute_options=opts)[0]
        return np.asarray(M.to_numpy(), dtype=np.float64) + intercept



def training_summary(est: Any, missing: str, labels: Callable[[Any, Any], Any],
                     build: Callable[[TrainData], S]) -> S:
    """The training summary of a fitted estimator, built on first access from one more
    pass over its training data (kept as ``est._train``) and cached on ``est``.

    ``labels(y, Xv)`` encodes the stored labels as the fit did; ``build(data)`` makes
    the summary. Raises InputValueError(``missing``) when the training data are gone.
    """
    from sklearn.utils.validation import check_is_fitted

    from blocklin.ml._solvers import training_data

    check_is_fitted(est, "coef_")
    if getattr(est, "_summary", None) is None:
        train = getattr(est, "_train", None)
        if train is None:
            raise InputValueError(missing)
        X, y, w = train
        Xv = features(est, X, reset=False)
        with training_data(Xv, labels(y, Xv), w, estimator_options(est)) as data:
            est._summary = build(data)
    summary: S = est._summary
    return summary
