"""The fit parameters the regression helpers read, frozen once per fit, and the
penalties they imply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.executors.progress import step as progress_step
from blocklin.ml._solvers import TrainData
from blocklin.ops.glm.moments import Moments, moments_spec
from blocklin.types import LabelScaling

__all__ = ["FitParams", "column_moments", "penalties"]


@dataclass(frozen=True)
class FitParams:
    """An estimator's fit parameters, read once after validation, so that the helpers
    take them as values instead of reading the estimator."""

    fit_intercept: bool
    reg_param: float
    elastic_net_param: float
    standardization: bool
    max_iter: int
    tol: float
    #: ``LinearRegression``'s option; ``LogisticRegression`` has none.
    label_scaling: LabelScaling = "none"

    @classmethod
    def of(cls, est: Any) -> FitParams:
        """The parameters of a linear or logistic estimator (validated beforehand)."""
        scaling: LabelScaling = est.label_scaling if hasattr(est, "label_scaling") else "none"
        return cls(bool(est.fit_intercept), float(est.reg_param),
                   float(est.elastic_net_param), bool(est.standardization),
                   int(est.max_iter), float(est.tol), scaling)

    @property
    def l1(self) -> bool:
        """Whether the penalty has an L1 part (λα > 0)."""
        return self.reg_param * self.elastic_net_param > 0


def penalties(params: FitParams, sx: np.ndarray, sy: float,
              y_mean_abs: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient L1 and L2 weights (per unit weight) for MLlib's options."""
    lam, alpha = params.reg_param, params.elastic_net_param
    l1 = np.full(sx.shape[0], lam * alpha)
    l2 = np.full(sx.shape[0], lam * (1.0 - alpha))
    if params.standardization:
        l1 = l1 * sx
        l2 = l2 * sx**2
    if params.label_scaling == "mllib":
        # MLlib fits on y/σ_y with effective λ/σ_y; on the original scale only the L2
        # term changes (divided by σ_y). A constant label uses |ȳ| as MLlib does.
        ystd = sy if sy > 0 else y_mean_abs
        if ystd > 0:
            l2 = l2 / ystd
    return l1, l2


def column_moments(params: FitParams, data: TrainData) -> tuple[Moments, np.ndarray,
                                                                np.ndarray, np.ndarray]:
    """One pass for the weighted means and standard deviations of ``[X y]``; returns the
    moments, the standard deviations and the per-feature L1 and L2 penalties."""
    p = data.n_features
    with progress_step("column moments"):
        mom = Moments.from_packed(data.run(moments_spec(p, 1, data.has_weights,
                                                        data.x_col_blocks, False)), p + 1)
    sd = mom.std()
    l1, l2 = penalties(params, sd[:p], float(sd[p]), abs(float(mom.mean[p])))
    return mom, sd, l1, l2
