"""The Newton pass: logistic loss, gradient and Hessian ``ZᵀDZ`` of one row panel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from blocklin.ops._xp import (
    expit,
    logsumexp_rows,
)
from blocklin.ops.glm.losses import loss_and_residual, margins
from blocklin.ops.glm.panels import design, label_weight
from blocklin.ops.glm.passes import PassSpec
from blocklin.ops.glm.sparse import csr_panel, weighted_gram
from blocklin.plan.device import like, namespace
from blocklin.plan.graph import TaskContext
from blocklin.plan.reduce import SumParts

__all__ = ["NewtonLayout", "NewtonPartial", "NewtonTerms", "newton_spec"]


class NewtonTerms(NamedTuple):
    """Summed loss, total weight, gradient (Q,) and Hessian (Q, Q) of a Newton pass."""

    loss: float
    total_weight: float
    grad: np.ndarray
    hessian: np.ndarray


@dataclass(frozen=True)
class NewtonLayout:
    """``(Q + 2, max(Q, 2))`` for Q coefficients: row 0 (loss, Σw), row 1 the gradient,
    rows 2.. the Hessian."""

    q: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.q + 2, max(self.q, 2))

    def pack(self, loss: float, total: float, grad: Any, hessian: Any, xp: Any = np) -> Any:
        q = self.q
        out = xp.zeros(self.shape, dtype=xp.float64)
        out[0, :2] = xp.asarray([loss, total], dtype=xp.float64)
        out[1, :q] = grad
        out[2:, :q] = hessian
        return out

    def unpack(self, packed: np.ndarray) -> NewtonTerms:
        q = self.q
        return NewtonTerms(float(packed[0, 0]), float(packed[0, 1]), packed[1, :q],
                           packed[2:2 + q, :q])


@dataclass(frozen=True, eq=False)
class NewtonPartial:
    """Logistic loss, gradient and Hessian of one row panel, with ``Z = [X 1]``.

    Binomial (``coef`` of shape (P, 1)): the Hessian ``ZᵀDZ`` by one symmetric rank-k
    update of √D·Z. Multinomial (``coef`` (P, K)): the Hessian of the coefficients
    flattened row-major (index j·K + a), blocks ``Zᵀ diag(w(p_a δ_ab − p_a p_b)) Z``.
    Output ``(1, Q + 2, max(Q, 2))`` with Q = P·K (:class:`NewtonLayout`).
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    coef: np.ndarray  # (P, K)
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        y, w = label_weight(blocks, self.nx, self.has_w)
        xs = csr_panel(blocks, self.nx)
        if xs is not None:
            return self._sparse(xs, y, w)
        z = design(blocks, self.nx, self.fit_intercept)
        xp = namespace(z)
        rows = z.shape[0]
        size, k = self.coef.shape
        m = z @ like(self.coef, z)
        family = "binomial" if k == 1 else "multinomial"
        loss, r = loss_and_residual(family, m, y, w)
        q = size * k
        layout = NewtonLayout(q)
        total = rows if w is None else float(xp.sum(w))
        grad = xp.reshape(z.T @ r, (-1,))
        wt = 1.0 if w is None else w
        if k == 1:
            prob = expit(m[:, 0])
            z *= xp.sqrt(prob * (1.0 - prob) * wt)[:, None]
            hess = z.T @ z  # syrk, GIL released
            return layout.pack(loss, total, grad, hess, xp)[None, ...]
        prob = xp.exp(m - logsumexp_rows(m)[:, None])
        h4 = xp.zeros((size, k, size, k), dtype=xp.float64)
        for a in range(k):
            for b in range(a, k):
                d = wt * prob[:, a] * (float(a == b) - prob[:, b])
                hab = (z * d[:, None]).T @ z
                h4[:, a, :, b] = hab
                h4[:, b, :, a] = hab.T
        return layout.pack(loss, total, grad, xp.reshape(h4, (q, q)), xp)[None, ...]

    def _sparse(self, x: Any, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """The same partial from a CSR panel: margins and gradient by sparse products,
        each Hessian block ``Zᵀdiag(d)Z`` a sparse weighted Gram (:func:`weighted_gram`)."""
        rows = x.shape[0]
        size, k = self.coef.shape
        fi = self.fit_intercept
        m = margins(x, self.coef, fi)
        loss, r = loss_and_residual("binomial" if k == 1 else "multinomial", m, y, w)
        q = size * k
        layout = NewtonLayout(q)
        total = rows if w is None else float(w.sum())
        grad = np.empty((size, k))
        grad[:x.shape[1]] = x.T @ r
        if fi:
            grad[-1] = r.sum(axis=0)
        wt = np.ones(rows) if w is None else w
        if k == 1:
            prob = expit(m[:, 0])
            hess = weighted_gram(x, prob * (1.0 - prob) * wt, fi)
            out: np.ndarray = layout.pack(loss, total, grad.reshape(-1), hess)[None]
            return out
        prob = np.exp(m - logsumexp_rows(m)[:, None])
        h4 = np.zeros((size, k, size, k))
        for a in range(k):
            for b in range(a, k):
                hab = weighted_gram(x, wt * prob[:, a] * (float(a == b) - prob[:, b]), fi)
                h4[:, a, :, b] = hab
                h4[:, b, :, a] = hab.T
        out = layout.pack(loss, total, grad.reshape(-1), h4.reshape(q, q))[None]
        return out



def newton_spec(coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int) -> PassSpec:
    q = coef.size
    return PassSpec("glm/newton", NewtonPartial(nx, has_w, fit_intercept, coef),
                    SumParts(), NewtonLayout(q).shape,
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=coef.shape[0] + 3 * coef.shape[1] + 4)

