"""The loss/gradient pass: loss, total weight and gradient at given coefficients (one
pass per evaluation of L-BFGS and OWL-QN)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from blocklin.ops.glm.losses import loss_and_residual, margins
from blocklin.ops.glm.panels import read_panel
from blocklin.ops.glm.passes import PassSpec
from blocklin.plan.device import namespace
from blocklin.plan.graph import TaskContext
from blocklin.plan.reduce import SumParts

__all__ = ["LossGrad", "LossGradLayout", "LossGradPartial", "loss_grad_spec"]


class LossGrad(NamedTuple):
    """Summed loss, total weight and gradient (the shape of the coefficients)."""

    loss: float
    total_weight: float
    grad: np.ndarray


@dataclass(frozen=True)
class LossGradLayout:
    """One row ``(loss, Σw, gradient...)``; the gradient row-major as ``coef.ravel()``
    (X's rows, then the intercept's), ``shape`` that of the coefficients."""

    shape: tuple[int, int]

    @property
    def width(self) -> int:
        return 2 + self.shape[0] * self.shape[1]

    def pack(self, loss: float, total: float, grad_x: Any, grad_intercept: Any | None,
             xp: Any = np) -> Any:
        """``grad_x`` (p, k) for X's columns; ``grad_intercept`` (k,) or None."""
        out = xp.empty((1, self.width), dtype=xp.float64)
        out[0, :2] = xp.asarray([loss, total], dtype=xp.float64)
        n = grad_x.shape[0] * grad_x.shape[1]
        out[0, 2:2 + n] = xp.reshape(grad_x, (-1,))
        if grad_intercept is not None:
            out[0, 2 + n:] = grad_intercept
        return out

    def unpack(self, packed: np.ndarray) -> LossGrad:
        v = packed.reshape(-1)
        return LossGrad(float(v[0]), float(v[1]), v[2:].reshape(self.shape))


@dataclass(frozen=True, eq=False)
class LossGradPartial:
    """Loss, gradient and total weight of one row panel (:class:`LossGradLayout`)."""

    nx: int
    has_w: bool
    family: str
    fit_intercept: bool
    coef: np.ndarray  # (p + intercept, k)
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        x, y, w = read_panel(blocks, self.nx, self.has_w)
        xp = namespace(x)
        loss, r = loss_and_residual(self.family, margins(x, self.coef, self.fit_intercept), y, w)
        total = x.shape[0] if w is None else float(xp.sum(w))
        intercept = xp.sum(r, axis=0) if self.fit_intercept else None
        layout = LossGradLayout(self.coef.shape)
        return layout.pack(loss, total, x.T @ r, intercept, xp)[None, ...]


def loss_grad_spec(family: str, coef: np.ndarray, fit_intercept: bool, has_w: bool,
                   nx: int) -> PassSpec:
    return PassSpec(f"glm/loss_grad_{family}",
                    LossGradPartial(nx, has_w, family, fit_intercept, coef), SumParts(),
                    (1, LossGradLayout(coef.shape).width),
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=3 * coef.shape[1] + 2)
