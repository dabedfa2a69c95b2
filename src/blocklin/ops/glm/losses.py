"""Margins and the squared, logistic and multinomial losses with their residuals
(dLoss/dmargin) on one row panel: what the gradient, Newton and evaluation passes share."""

from __future__ import annotations

from typing import Literal

import numpy as np

from blocklin.ops._xp import (
    expit,
    log_expit,
    logsumexp_rows,
    sumsq,
)
from blocklin.plan.device import like, namespace

Family = Literal["squared", "binomial", "multinomial"]


def margins(x: np.ndarray, coef: np.ndarray, fit_intercept: bool) -> np.ndarray:
    """``x @ coef[:p] (+ coef[p])``; ``coef`` (a host parameter) follows ``x``'s device."""
    p = x.shape[1]
    coef = like(coef, x)
    m: np.ndarray = x @ coef[:p, ...]
    if fit_intercept:
        m += coef[p, ...]
    return m


def loss_and_residual(family: str, m: np.ndarray, y: np.ndarray,
                       w: np.ndarray | None) -> tuple[float, np.ndarray]:
    """Loss summed over rows and dLoss/dmargin per row (weighted)."""
    xp = namespace(m)
    wt = xp.ones(m.shape[0], dtype=xp.float64) if w is None else w
    if family == "squared":
        r = m - y
        loss = 0.5 * float(wt @ sumsq(r, 1))
    elif family == "binomial":
        mm = m[:, 0]
        yy = y[:, 0]
        # log(1 + e^m) - y m, written with log_expit to stay finite for large |m|.
        loss = float(wt @ (-log_expit(mm) + (1.0 - yy) * mm))
        r = (expit(mm) - yy)[:, None]
    else:
        labels = xp.astype(y[:, 0], xp.int64)[:, None]
        lse = logsumexp_rows(m)
        loss = float(wt @ (lse - xp.take_along_axis(m, labels, axis=1)[:, 0]))
        # Subtracting the one-hot labels changes exactly the entries r[i, yᵢ] -= 1.
        onehot = xp.astype(labels == xp.arange(m.shape[1])[None, :], xp.float64)
        r = xp.exp(m - lse[:, None]) - onehot
    return loss, r * wt[:, None]

