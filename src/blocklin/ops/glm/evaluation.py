"""The evaluation pass: the sums behind a fitted model's training summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.ops._xp import (
    expit,
)
from blocklin.ops.glm.losses import loss_and_residual, margins
from blocklin.ops.glm.panels import read_panel
from blocklin.ops.glm.passes import PassSpec
from blocklin.plan.graph import TaskContext
from blocklin.plan.reduce import SumParts

#: Bins of the predicted-probability histograms that give the binary AUC.
AUC_BINS = 2048


@dataclass(frozen=True, eq=False)
class EvalPartial:
    """Sums for the training summary of a fitted model on one row panel.

    squared: (Σw, rows, Σw r², Σw |r|, Σw r, Σw (y - c)², Σw (ŷ - c)², Σw (y - c),
    Σw (ŷ - c)), c a label-mean estimate (``y_mean``) that keeps the sums well scaled.
    binomial/multinomial: (Σw, rows, loss, Σw·correct) then, for binomial, weighted
    histograms of the predicted probability for positives and negatives.
    """

    nx: int
    has_w: bool
    family: str
    fit_intercept: bool
    coef: np.ndarray
    y_mean: float = 0.0

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        x, y, w = read_panel(blocks, self.nx, self.has_w)
        wt = np.ones(x.shape[0]) if w is None else w
        m = margins(x, self.coef, self.fit_intercept)
        head = [float(wt.sum()), float(x.shape[0])]
        if self.family == "squared":
            r = m[:, 0] - y[:, 0]
            yc, mc = y[:, 0] - self.y_mean, m[:, 0] - self.y_mean
            vals = [wt @ r**2, wt @ np.abs(r), wt @ r, wt @ yc**2, wt @ mc**2, wt @ yc, wt @ mc]
            return np.array(head + [float(v) for v in vals])[None, None]
        loss, _ = loss_and_residual(self.family, m, y, w)
        if self.family == "binomial":
            pred = (m[:, 0] > 0).astype(np.float64)
            correct = float(wt @ (pred == y[:, 0]))
            prob = expit(m[:, 0])
            bins = np.minimum((prob * AUC_BINS).astype(np.int64), AUC_BINS - 1)
            pos = np.bincount(bins, weights=wt * (y[:, 0] > 0.5), minlength=AUC_BINS)
            neg = np.bincount(bins, weights=wt * (y[:, 0] <= 0.5), minlength=AUC_BINS)
            return np.concatenate([head, [loss, correct], pos, neg])[None, None]
        correct = float(wt @ (m.argmax(axis=1) == y[:, 0].astype(np.int64)))
        return np.array([*head, loss, correct])[None, None]


def eval_width(family: str) -> int:
    return 9 if family == "squared" else (4 + 2 * AUC_BINS if family == "binomial" else 4)



def eval_spec(family: str, coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int,
              y_mean: float = 0.0) -> PassSpec:
    return PassSpec(f"glm/eval_{family}",
                    EvalPartial(nx, has_w, family, fit_intercept, coef, y_mean), SumParts(),
                    (1, eval_width(family)),
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w, "y_mean": y_mean},
                    row_floats=2 * coef.shape[1] + 4)

