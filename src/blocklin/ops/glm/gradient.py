"""The loss/gradient pass: loss, total weight and gradient at given coefficients (one
pass per evaluation of L-BFGS and OWL-QN)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from blocklin.ops.glm.losses import loss_and_residual, margins
from blocklin.ops.glm.panels import read_panel
from blocklin.ops.glm.passes import PassSpec
from blocklin.plan.device import namespace
from blocklin.plan.graph import TaskContext
from blocklin.plan.reduce import SumParts


@dataclass(frozen=True, eq=False)
class LossGradPartial:
    """Loss, gradient and total weight of one row panel, packed as one row."""

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
        out = xp.empty((1, 1, 2 + self.coef.size), dtype=xp.float64)
        out[0, 0, :2] = xp.asarray([loss, total], dtype=xp.float64)
        # The gradient row-major, as coef.ravel(): X's rows, then the intercept's.
        p, k = x.shape[1], self.coef.shape[1]
        out[0, 0, 2:2 + p * k] = xp.reshape(x.T @ r, (-1,))
        if self.fit_intercept:
            out[0, 0, 2 + p * k:] = xp.sum(r, axis=0)
        return out


def unpack_grad(packed: np.ndarray, shape: tuple[int, int]) -> tuple[float, float, np.ndarray]:
    """(loss, total weight, gradient of ``shape``) from a reduced loss/grad array."""
    v = packed.reshape(-1)
    return float(v[0]), float(v[1]), v[2:].reshape(shape)



def loss_grad_spec(family: str, coef: np.ndarray, fit_intercept: bool, has_w: bool,
                   nx: int) -> PassSpec:
    width = 2 + coef.size
    return PassSpec(f"glm/loss_grad_{family}",
                    LossGradPartial(nx, has_w, family, fit_intercept, coef), SumParts(),
                    (1, width), {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=3 * coef.shape[1] + 2)

