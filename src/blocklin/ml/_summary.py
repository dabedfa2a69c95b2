"""Training summaries like MLlib's ``LinearRegressionTrainingSummary`` and
``BinaryLogisticRegressionTrainingSummary``, from one evaluation pass."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, cast

import numpy as np
import scipy.stats

from blocklin.errors import InputValueError
from blocklin.ml._solvers import TrainData
from blocklin.ops.glm.evaluation import EvalLayout, eval_spec

__all__ = ["LinearRegressionSummary", "LogisticRegressionSummary", "linear_summary",
           "logistic_summary"]


class _MllibNames:
    """MLlib's camelCase names (``rootMeanSquaredError``, ``pValues``, ...) as aliases.

    Each field answers to its camelCase spelling too; ``_MLLIB`` lists the few whose
    MLlib name is not plain camelCase.
    """

    _MLLIB: ClassVar[dict[str, str]] = {}

    def __getattr__(self, name: str) -> Any:
        for f in fields(cast(Any, self)):  # a mixin of dataclasses
            if name in (self._MLLIB.get(f.name), _camel(f.name)) and name != f.name:
                return getattr(self, f.name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Every available statistic as a named array (what pipeline outputs store)."""
        return {f.name: np.asarray(getattr(self, f.name), dtype=np.float64)
                for f in fields(cast(Any, self))
                if getattr(self, f.name) is not None}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


@dataclass(frozen=True)
class LinearRegressionSummary(_MllibNames):
    """Fit statistics of a linear model on its training data (weighted as in MLlib).

    Coefficient arrays list the features' coefficients, then the intercept (as MLlib).
    Standard errors, t- and p-values come from the unpenalized design
    ``(ZᵀWZ)⁻¹σ̂²`` and are only available for the ``normal`` and ``qr`` solvers.
    MLlib's names (``rootMeanSquaredError``, ``r2adj``, ``pValues``, ``tValues``,
    ``coefficientStandardErrors``, ...) are aliases of the fields.
    """

    num_instances: int
    degrees_of_freedom: int
    mean_squared_error: float
    root_mean_squared_error: float
    mean_absolute_error: float
    r2: float
    r2adj: float
    explained_variance: float
    objective_history: list[float]
    total_iterations: int
    coefficient_standard_errors: np.ndarray | None
    t_values: np.ndarray | None
    p_values: np.ndarray | None


def linear_summary(est: Any, data: TrainData) -> LinearRegressionSummary:
    """One pass of residual sums, combined with the fit's design inverse."""
    coef = np.concatenate([est.coef_, [est.intercept_]])[:, None] if est.fit_intercept \
        else est.coef_[:, None]
    c = float(getattr(est, "_y_center", 0.0))
    W, n, sse, sae, _, syy, smm, sy, sm = EvalLayout("squared").unpack_residuals(data.run(
        eval_spec("squared", coef, est.fit_intercept, data.has_weights, data.x_col_blocks, c)))
    ybar = c + sy / W
    sstot = syy - sy ** 2 / W if est.fit_intercept else syy + 2 * c * sy + W * c ** 2
    ssreg = smm - 2 * (ybar - c) * sm + W * (ybar - c) ** 2
    k = int(est.fit_intercept)
    p = est.coef_.shape[0]
    dof = n - p - k
    r2 = 1.0 - sse / sstot if sstot > 0 else np.nan
    r2adj = 1.0 - (1.0 - r2) * (n - k) / dof if dof > 0 else np.nan
    se = tv = pv = None
    cov = getattr(est, "_cov_unscaled", None)
    if cov is not None and dof > 0:
        sigma2 = sse / dof
        se = np.sqrt(np.maximum(np.diag(cov), 0.0) * sigma2)
        with np.errstate(divide="ignore", invalid="ignore"):
            tv = np.concatenate([est.coef_, [est.intercept_]] if k else [est.coef_]) / se
        pv = 2.0 * scipy.stats.t.sf(np.abs(tv), dof)
    return LinearRegressionSummary(
        num_instances=n, degrees_of_freedom=dof, mean_squared_error=sse / W,
        root_mean_squared_error=float(np.sqrt(sse / W)), mean_absolute_error=sae / W, r2=r2,
        r2adj=r2adj, explained_variance=ssreg / W,
        objective_history=list(est.objective_history_), total_iterations=int(est.n_iter_),
        coefficient_standard_errors=se, t_values=tv, p_values=pv)


@dataclass(frozen=True)
class LogisticRegressionSummary(_MllibNames):
    """Training summary of a logistic model: objective history, accuracy, binary AUC.

    MLlib's names (``areaUnderROC``, ``objectiveHistory``, ``totalIterations``, ...)
    are aliases of the fields.

    ``area_under_roc`` comes from weighted histograms of the predicted probability in
    2048 bins (ties within a bin count one half), so it is exact to about 1e-3.
    """

    _MLLIB: ClassVar[dict[str, str]] = {"area_under_roc": "areaUnderROC"}

    num_instances: int
    objective_history: list[float]
    total_iterations: int
    accuracy: float
    log_loss: float
    area_under_roc: float | None


def logistic_summary(est: Any, data: TrainData, family: str, coef: np.ndarray) -> \
        LogisticRegressionSummary:
    W, n, loss, correct, pos, neg = EvalLayout(family).unpack_classifier(data.run(
        eval_spec(family, coef, est.fit_intercept, data.has_weights, data.x_col_blocks)))
    auc = None if pos is None or neg is None else _auc(pos, neg)
    return LogisticRegressionSummary(n, list(est.objective_history_), int(est.n_iter_),
                                     correct / W, loss / W, auc)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    P, N = float(pos.sum()), float(neg.sum())
    if P <= 0 or N <= 0:
        raise InputValueError("AUC needs both classes in the training data")
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (P * N))
