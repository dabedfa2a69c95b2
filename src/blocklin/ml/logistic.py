"""``LogisticRegression``: MLlib's binomial and multinomial logistic regression over blocks."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from blocklin.errors import InputValueError
from blocklin.executors.options import OptionsLike
from blocklin.executors.progress import step as progress_step
from blocklin.ml._estimator import (
    check_common_params,
    estimator_options,
    features,
    predict_margin,
    training_summary,
)
from blocklin.ml._iterative import iterative_fit
from blocklin.ml._params import FitParams, penalties
from blocklin.ml._progress import reports
from blocklin.ml._solvers import (
    TrainData,
    coordinate_descent,
    range_basis,
    solve_quadratic,
    training_data,
)
from blocklin.ml._summary import LogisticRegressionSummary, logistic_summary
from blocklin.ml._validation import is_stored, open_stored
from blocklin.ml.persist import SaveMixin
from blocklin.ops.glm.gradient import LossGradLayout, loss_grad_spec
from blocklin.ops.glm.moments import Moments, moments_spec
from blocklin.ops.glm.newton import NewtonLayout, newton_spec
from blocklin.types import (
    LOGISTIC_FAMILIES,
    LOGISTIC_SOLVERS,
    LogisticFamily,
    LogisticSolver,
    parse_option,
)

__all__ = ["LogisticRegression"]

#: Newton's Hessian is Q × Q (Q = (features + intercept)·(classes or 1)); above this many
#: coefficients ``auto`` uses L-BFGS.
MAX_NEWTON_COEFFICIENTS = 4096
#: Once a Newton step's predicted decrease is below this (relative), the Hessian is
#: kept and later iterations make gradient-only passes.
CHORD_SWITCH = 1e-3


class LogisticRegression(SaveMixin, ClassifierMixin, BaseEstimator):
    """Logistic regression with elastic-net penalty, as Spark MLlib's ``LogisticRegression``.

    Minimizes MLlib's objective

        1/W·Σᵢ wᵢ·ℓ(yᵢ, xᵢᵀβ + b) + λ·(α‖β‖₁ + (1−α)/2·‖β‖²)

    with ℓ the binomial or multinomial (softmax) log-loss; the intercepts are not
    penalized. With ``standardization`` the penalty applies to the coefficients of
    standardized features, as in MLlib (whose default is ``True``; here ``False``, the
    objective above).

    Parameters
    ----------
    fit_intercept, reg_param, elastic_net_param, standardization, max_iter
        As :class:`blocklin.ml.LinearRegression`.
    tol : float
        ``lbfgs``/``owlqn``: as :class:`blocklin.ml.LinearRegression` (stop when the
        gradient, OWL-QN's pseudo-gradient, in standardized coordinates with a centred
        intercept has ‖·‖_∞ ≤ tol·‖g₀‖_∞, g₀ at the intercept-only start, or at the
        rounding floor; relative coefficient error about tol·κ). ``newton``: stop when
        the decrease the quadratic model predicts for the step is at most
        (tol·max(|F|, 1))², or when F changed by at most 1e-3·tol·max(|F|, 1).
    solver : {"auto", "newton", "lbfgs", "owlqn"}
        ``newton``: each iteration is one pass computing loss, gradient and the Hessian
        ``[X 1]ᵀD[X 1]`` (binomial: a symmetric rank-k update per block; multinomial:
        K(K+1)/2 weighted products per block);
        with an L1 term each step minimizes the penalized quadratic model by coordinate
        descent on the driver (proximal Newton, as glmnet). Typically 5–10 passes.
        A singular Hessian (no penalty with more features than weighted rows, or the
        multinomial's shift over classes) gets the least-norm step within its range,
        the range fixed at the first iteration, so rounding cannot change the rank
        from one step to the next.
        ``lbfgs``: L-BFGS (OWL-QN with L1, as MLlib), one pass per evaluation.
        ``owlqn``: OWL-QN. ``auto``: ``newton`` with at most 4096 coefficients
        ((features + 1)·classes for multinomial), else ``lbfgs``/``owlqn``.
    family : {"auto", "binomial", "multinomial"}
        As MLlib: ``auto`` is binomial for two classes.
    executor, work_dir, compute_options
        As :class:`blocklin.ml.LinearRegression`; every solver here keeps the decoded
        blocks in worker memory between its passes (``cache_bytes``, default ``"auto"``).
    progress : bool, callable or ProgressSink
        Report every pass over the data, as scikit-learn's ``verbose`` (off by default):
        ``True`` prints each pass on stderr (a bar on a terminal, plain lines otherwise),
        labelled by method and step (``LogisticRegression.fit · newton iteration 3 · pass 3``); a callable
        ``progress(stage, done, total)`` or a sink receives them instead (see
        :mod:`blocklin.executors.progress`). With False an enclosing
        ``progress_to`` block (the CLI's) still hears them.

    Attributes
    ----------
    classes_ : ndarray
    coef_ : ndarray (1, n_features) binomial or (n_classes, n_features) multinomial
    intercept_ : ndarray (1,) or (n_classes,)
    n_iter_, n_passes_, objective_history_, solver_
    grad_scale_ : float
        ``lbfgs``/``owlqn``: ‖∇‖_∞ at the cold start, which ``tol`` is relative to;
        ``partial_fit`` keeps it, so a warm start stops by the same rule.

    Notes
    -----
    Passes: ``newton`` one per iteration (plus one for column moments when the penalty
    is standardized); ``lbfgs``/``owlqn`` one for column moments plus one per function
    evaluation. Multinomial intercepts (and, without a penalty, coefficients) are
    centered over classes as MLlib does, the softmax being invariant to a common shift.
    """

    classes_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray

    def __init__(self, fit_intercept: bool = True, reg_param: float = 0.0,
                 elastic_net_param: float = 0.0, standardization: bool = False,
                 solver: LogisticSolver = "auto", max_iter: int = 100, tol: float = 1e-6,
                 family: LogisticFamily = "auto", executor: Any = "dask",
                 work_dir: str | None = None,
                 compute_options: OptionsLike = None, progress: Any = False) -> None:
        self.fit_intercept = fit_intercept
        self.reg_param = reg_param
        self.elastic_net_param = elastic_net_param
        self.standardization = standardization
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.family = family
        self.executor = executor
        self.work_dir = work_dir
        self.compute_options = compute_options
        self.progress = progress

    @reports("fit")
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticRegression:
        """Fit on X (numpy, scipy sparse, dask, BlockMatrix or zarr path) and class labels y."""
        return self._fit(X, y, sample_weight, None)

    @reports("partial_fit")
    def partial_fit(self, X: Any, y: Any, classes: Any = None,
                    sample_weight: Any = None) -> LogisticRegression:
        """Refit on X and y starting from the current coefficients (a warm start).

        X and y are the whole training set as it stands now (say, a stored matrix after
        rows were appended): the objective is the documented one over all of them, and
        the result is that of :meth:`fit` on them to the solver's tolerance. Starting
        from the last solution saves iterations, so passes, when the data changed
        little: each Newton iteration or L-BFGS/OWL-QN evaluation is one pass over X
        (plus the moments pass of ``lbfgs``/``owlqn``, or of a standardized penalty),
        and a start that is already optimal stops after the first. The classes are
        those of the first fit (or ``classes``, when given before any fit); a label
        outside them is refused, as is a change of features or family.
        """
        if not hasattr(self, "coef_"):
            if classes is not None:
                self._given_classes = np.unique(np.asarray(classes))
            return self._fit(X, y, sample_weight, None)
        coef = self.coef_.T
        start = np.vstack([coef, self.intercept_[None, :]]) if self.fit_intercept else coef
        return self._fit(X, y, sample_weight, start)

    def _fit(self, X: Any, y: Any, sample_weight: Any,
             start: np.ndarray | None) -> LogisticRegression:
        check_common_params(self)
        solver = parse_option("solver", self.solver, LOGISTIC_SOLVERS)
        family = parse_option("family", self.family, LOGISTIC_FAMILIES)
        Xv = features(self, X, reset=start is None)
        codes = self._encode(y, Xv, keep=start is not None)
        k = len(self.classes_)
        if family == "auto":
            family = "binomial" if k <= 2 else "multinomial"
        if family == "binomial" and k > 2:
            raise InputValueError(f"family='binomial' needs two classes; y has {k}")
        fitted = "binomial" if start is not None and start.shape[1] == 1 else "multinomial"
        if start is not None and family != fitted:
            raise InputValueError(f"partial_fit continues a {fitted} fit; family "
                                  f"{family!r} differs")
        with training_data(Xv, codes, sample_weight, estimator_options(self)) as data:
            coef, hist, iters, used = self._fit_data(data, family, solver, start)
            self.n_passes_ = data.passes
        p = data.n_features
        self._family = family
        self._coef_full = coef
        self.coef_ = coef[:p].T.copy()
        self.intercept_ = coef[p].copy() if self.fit_intercept else np.zeros(coef.shape[1])
        self.objective_history_ = hist
        self.n_iter_ = iters
        self.solver_ = used
        self._train: tuple[Any, Any, Any] | None = (X, y, sample_weight)
        self._summary: LogisticRegressionSummary | None = None
        return self

    def _encode(self, y: Any, X: Any, keep: bool = False) -> np.ndarray:
        if is_stored(y):
            y = open_stored(y).to_numpy()[:, 0]
        if y is None:
            raise InputValueError("requires y to be passed, but the target y is None")
        from sklearn.utils import column_or_1d

        y = column_or_1d(y, warn=True)
        if y.dtype.kind in "fc":
            from sklearn.utils import assert_all_finite

            assert_all_finite(y, input_name="y")
        if y.shape[0] != X.shape[0]:
            raise InputValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        try:
            check_classification_targets(y)
        except ValueError as exc:  # scikit-learn's message and rule, under a named error
            raise InputValueError(f"{exc} LogisticRegression needs class labels; for a "
                                  "continuous target use LinearRegression") from None
        known: np.ndarray | None = self.classes_ if keep else getattr(self, "_given_classes",
                                                                      None)
        if known is not None:
            # partial_fit: the classes stay those of the first fit (or of ``classes``).
            extra = np.setdiff1d(np.unique(y), known)
            if extra.size:
                raise InputValueError(f"y holds labels {extra.tolist()!r} outside the classes "
                                      f"{known.tolist()!r} of this estimator")
            self.classes_ = known
            out: np.ndarray = np.searchsorted(known, y).astype(np.float64)
            return out
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InputValueError(f"needs samples of at least 2 classes; y holds 1 class "
                                  f"({self.classes_[0]!r})")
        return codes.astype(np.float64)

    def _fit_data(self, data: TrainData, family: str, solver: str,
                  start: np.ndarray | None = None) -> tuple[np.ndarray, list[float], int, str]:
        l1 = self.reg_param * self.elastic_net_param > 0
        p = data.n_features
        k = 1 if family == "binomial" else len(self.classes_)
        if solver == "auto":
            solver = "newton" if (p + 1) * k <= MAX_NEWTON_COEFFICIENTS else "lbfgs"
        # Every solver here makes several passes: keep the blocks in worker memory.
        with data.cached():
            if solver == "newton":
                coef, hist, iters = self._newton(data, k, start)
                used = "newton"
            else:
                used = "owlqn" if (solver == "owlqn" or l1) else "lbfgs"
                warm = None if start is None else getattr(self, "grad_scale_", None)
                res = iterative_fit(FitParams.of(self), data, family, used, k, start, warm)
                self.grad_scale_ = res.grad_scale
                coef, hist, iters = res.coef, res.history, len(res.history) - 1
        if family == "multinomial":
            if self.fit_intercept:
                coef[p] -= coef[p].mean()
            if self.reg_param == 0:
                coef[:p] -= coef[:p].mean(axis=1, keepdims=True)
        return coef, hist, iters, used

    def _newton(self, data: TrainData, k: int,
                start: np.ndarray | None = None) -> tuple[np.ndarray, list[float], int]:
        """Damped (proximal) Newton: one pass per iteration for loss, gradient and Hessian."""
        p = data.n_features
        fi = bool(self.fit_intercept)
        size = p + int(fi)
        sx = np.ones(p)
        if self.reg_param > 0 and self.standardization:
            mom = Moments.from_packed(data.run(moments_spec(p, 1, data.has_weights,
                                                            data.x_col_blocks, False)), p + 1)
            sx = mom.std()[:p]
        l1p, l2p = penalties(FitParams.of(self), sx, 1.0, 1.0)
        l1m = np.zeros((size, k))
        l2m = np.zeros((size, k))
        l1m[:p], l2m[:p] = l1p[:, None], l2p[:, None]
        l1, l2 = l1m.ravel(), l2m.ravel()
        beta = np.zeros(size * k) if start is None else np.array(start, dtype=float).ravel()
        q = size * k
        prev: tuple[np.ndarray, float] | None = None
        history: list[float] = []
        iters = 0
        H_keep: np.ndarray | None = None  # a Hessian reused by gradient-only passes
        basis: np.ndarray | None = None  # the range of a singular Hessian, fixed at the start
        family = "binomial" if k == 1 else "multinomial"
        for _ in range(max(int(self.max_iter), 1)):
            with progress_step(f"newton iteration {iters + 1}"):
                if H_keep is None:
                    terms = NewtonLayout(q).unpack(data.run(newton_spec(
                        beta.reshape(size, k), fi, data.has_weights, data.x_col_blocks)))
                    loss, W, grad = terms.loss, terms.total_weight, terms.grad
                else:
                    loss, W, gm = LossGradLayout((size, k)).unpack(data.run(loss_grad_spec(
                        family, beta.reshape(size, k), fi, data.has_weights,
                        data.x_col_blocks)))
                    grad = gm.ravel()
            F = loss / W + 0.5 * float(l2 @ beta**2) + float(l1 @ np.abs(beta))
            if prev is not None and prev[1] + 1e-12 * max(abs(prev[1]), 1.0) < F:
                # Step too long: back off (a fresh Hessian if the reused one misled).
                beta = prev[0] if H_keep is not None else 0.5 * (beta + prev[0])
                H_keep = None
                continue
            history.append(F)
            g = grad / W + l2 * beta
            H = terms.hessian / W + np.diag(l2) if H_keep is None else H_keep
            if l1.any():
                new = coordinate_descent(H, H @ beta - g, l1, np.zeros(q), x0=beta).x
            else:
                if len(history) == 1:
                    basis = range_basis(H)
                new = beta - _newton_step(H, g, basis)
            d = new - beta
            decrease = -(g @ d + 0.5 * d @ H @ d + float(l1 @ (np.abs(new) - np.abs(beta))))
            small = len(history) > 1 and \
                abs(history[-2] - F) <= 1e-3 * self.tol * max(abs(F), 1.0)
            # Near the optimum the Hessian barely changes: later iterations reuse it and
            # pay only a gradient pass (a mat-vec per block instead of a rank-k update).
            if decrease <= CHORD_SWITCH * max(abs(F), 1.0):
                H_keep = H
            prev = (beta, F)
            beta = new
            iters += 1
            if decrease <= (self.tol * max(abs(F), 1.0)) ** 2 or small:
                break
        return beta.reshape(size, k), history, iters

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------------ prediction
    @reports("predict")
    def decision_function(self, X: Any) -> np.ndarray:
        """Margins Xβ + b: shape (n,) for binomial, (n, n_classes) for multinomial."""
        check_is_fitted(self, "coef_")
        Xv = features(self, X, reset=False)
        m = predict_margin(Xv, self.coef_.T, self.intercept_, self)
        return m[:, 0] if m.shape[1] == 1 else m

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        m = self.decision_function(X)
        if m.ndim == 1:
            p1 = expit(m)
            return np.column_stack([1.0 - p1, p1])
        out: np.ndarray = softmax(m, axis=1)
        return out

    def predict_log_proba(self, X: Any) -> np.ndarray:
        out: np.ndarray = np.log(self.predict_proba(X))
        return out

    def predict(self, X: Any) -> np.ndarray:
        m = self.decision_function(X)
        idx = (m > 0).astype(np.int64) if m.ndim == 1 else m.argmax(axis=1)
        out: np.ndarray = self.classes_[idx]
        return out

    @property
    @reports("summary")
    def summary(self) -> LogisticRegressionSummary:
        """Objective history, accuracy, log-loss and (binomial) AUC; one pass on first access."""
        return training_summary(
            self, "the training data of this model are not available",
            lambda y, _: np.searchsorted(self.classes_, _as_1d(y)).astype(np.float64),
            lambda data: logistic_summary(self, data, self._family, self._coef_full))


def _newton_step(H: np.ndarray, g: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """H⁻¹g; for a singular H (no penalty) the least-norm step within its range, the
    range fixed at the first iteration (see :func:`blocklin.ml._solvers.range_basis`)."""
    if basis is None:
        return solve_quadratic(H, g, np.zeros(g.shape[0])).x
    inner = solve_quadratic(basis.T @ H @ basis, basis.T @ g, np.zeros(basis.shape[1])).x
    step: np.ndarray = basis @ inner
    return step


def _as_1d(y: Any) -> np.ndarray:
    if is_stored(y):
        return np.asarray(open_stored(y).to_numpy())[:, 0]
    return np.asarray(y).reshape(-1)
