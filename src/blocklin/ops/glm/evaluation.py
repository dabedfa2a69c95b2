"""The evaluation pass: the sums behind a fitted model's training summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from blocklin.ops._xp import (
    expit,
)
from blocklin.ops.glm.losses import loss_and_residual, margins
from blocklin.ops.glm.panels import read_panel
from blocklin.ops.glm.passes import PassSpec
from blocklin.plan.graph import TaskContext
from blocklin.plan.reduce import SumParts

__all__ = ["AUC_BINS", "ClassifierSums", "EvalLayout", "EvalPartial", "ResidualSums",
           "eval_spec"]

#: Bins of the predicted-probability histograms that give the binary AUC.
AUC_BINS = 2048


class ResidualSums(NamedTuple):
    """The squared family's sums, c a label-mean estimate that keeps them well scaled."""

    total_weight: float  # Σw
    rows: int
    sse: float  # Σw r²
    sae: float  # Σw |r|
    sr: float  # Σw r
    syy: float  # Σw (y − c)²
    smm: float  # Σw (ŷ − c)²
    sy: float  # Σw (y − c)
    sm: float  # Σw (ŷ − c)


class ClassifierSums(NamedTuple):
    """The logistic families' sums; the binomial one adds the AUC histograms."""

    total_weight: float  # Σw
    rows: int
    loss: float
    correct: float  # Σw·correct
    positives: np.ndarray | None  # (AUC_BINS,) weighted predicted-probability histogram
    negatives: np.ndarray | None


@dataclass(frozen=True)
class EvalLayout:
    """One row per family: squared (Σw, rows, then the seven sums of
    :class:`ResidualSums`); binomial and multinomial (Σw, rows, loss, Σw·correct), then
    for binomial the positives' and the negatives' histograms of AUC_BINS bins each."""

    family: str

    @property
    def width(self) -> int:
        if self.family == "squared":
            return 9
        return 4 + 2 * AUC_BINS if self.family == "binomial" else 4

    def pack(self, total: float, rows: int, sums: Sequence[float],
             histograms: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``sums``: the seven residual sums (squared) or (loss, Σw·correct)."""
        head = np.array([total, float(rows), *sums])
        if histograms is None:
            return head[None]
        return np.concatenate([head, histograms[0], histograms[1]])[None]

    def unpack_residuals(self, packed: np.ndarray) -> ResidualSums:
        v = packed.reshape(-1)
        return ResidualSums(float(v[0]), int(v[1]), *(float(t) for t in v[2:9]))

    def unpack_classifier(self, packed: np.ndarray) -> ClassifierSums:
        v = packed.reshape(-1)
        pos = neg = None
        if self.family == "binomial":
            pos, neg = v[4:4 + AUC_BINS], v[4 + AUC_BINS:4 + 2 * AUC_BINS]
        return ClassifierSums(float(v[0]), int(v[1]), float(v[2]), float(v[3]), pos, neg)


@dataclass(frozen=True, eq=False)
class EvalPartial:
    """Sums for the training summary of a fitted model on one row panel
    (:class:`EvalLayout`; c of the squared family's sums is ``y_mean``)."""

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
        layout = EvalLayout(self.family)
        total, rows = float(wt.sum()), x.shape[0]
        if self.family == "squared":
            r = m[:, 0] - y[:, 0]
            yc, mc = y[:, 0] - self.y_mean, m[:, 0] - self.y_mean
            vals = [wt @ r**2, wt @ np.abs(r), wt @ r, wt @ yc**2, wt @ mc**2, wt @ yc, wt @ mc]
            return layout.pack(total, rows, [float(v) for v in vals])[None]
        loss, _ = loss_and_residual(self.family, m, y, w)
        if self.family == "binomial":
            pred = (m[:, 0] > 0).astype(np.float64)
            correct = float(wt @ (pred == y[:, 0]))
            prob = expit(m[:, 0])
            bins = np.minimum((prob * AUC_BINS).astype(np.int64), AUC_BINS - 1)
            pos = np.bincount(bins, weights=wt * (y[:, 0] > 0.5), minlength=AUC_BINS)
            neg = np.bincount(bins, weights=wt * (y[:, 0] <= 0.5), minlength=AUC_BINS)
            return layout.pack(total, rows, [loss, correct], (pos, neg))[None]
        correct = float(wt @ (m.argmax(axis=1) == y[:, 0].astype(np.int64)))
        return layout.pack(total, rows, [loss, correct])[None]


def eval_spec(family: str, coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int,
              y_mean: float = 0.0) -> PassSpec:
    return PassSpec(f"glm/eval_{family}",
                    EvalPartial(nx, has_w, family, fit_intercept, coef, y_mean), SumParts(),
                    (1, EvalLayout(family).width),
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w, "y_mean": y_mean},
                    row_floats=2 * coef.shape[1] + 4)

