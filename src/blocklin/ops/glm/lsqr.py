"""The LSQR pass: ``(Σw m², Zᵀ(w∘m))`` for ``m = Z·coef − c·y``, one LSQR iteration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from blocklin.ops.glm.losses import margins
from blocklin.ops.glm.panels import dense, label_weight
from blocklin.ops.glm.passes import PassSpec
from blocklin.ops.inputs import (
    hstack_panel,
)
from blocklin.plan.device import is_sparse, namespace
from blocklin.plan.graph import TaskContext
from blocklin.plan.reduce import SumParts

__all__ = ["LsqrLayout", "LsqrPartial", "LsqrProducts", "lsqr_spec"]


class LsqrProducts(NamedTuple):
    """``Σw m²`` and ``Zᵀ(w∘m)`` (X's columns, then the intercept's) of one LSQR pass."""

    sq_norm: float
    product: np.ndarray


@dataclass(frozen=True)
class LsqrLayout:
    """One row ``(Σw m², Zᵀ(w∘m)...)`` for ``size`` coefficients (``p + intercept``)."""

    size: int

    @property
    def width(self) -> int:
        return 1 + self.size

    def pack(self, sq_norm: Any, product_x: Any, product_intercept: Any | None,
             xp: Any = np) -> Any:
        out = xp.empty((1, self.width), dtype=xp.float64)
        out[0, 0] = sq_norm
        p = product_x.shape[0]
        out[0, 1:p + 1] = product_x
        if product_intercept is not None:
            out[0, p + 1] = product_intercept
        return out

    def unpack(self, packed: np.ndarray) -> LsqrProducts:
        v = packed.reshape(-1)
        return LsqrProducts(float(v[0]), v[1:])


@dataclass(frozen=True, eq=False)
class LsqrPartial:
    """One LSQR product over one row panel: ``m = Z·coef − c·y`` (Z = [X 1], or X without
    intercept), packed as the row ``(Σw m², Zᵀ(w∘m))`` (:class:`LsqrLayout`).

    With t = √w∘m these are tᵀt and Zᵀ(√w∘t): the squared norm of the (unnormalized)
    data part of LSQR's next u and its product with the transposed weighted design, so
    one pass makes one LSQR step without any n-vector kept between passes (see
    :func:`blocklin.ml._lsqr.sketch_solve`). ``c`` may be arbitrarily small or large; the
    kernel never divides by it. Sparse panels stay sparse (two sparse products).
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    coef: np.ndarray  # (p + intercept,)
    c: float
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        x = hstack_panel(blocks[:self.nx])
        x = x.astype(np.float64) if is_sparse(x) else dense(x)
        y, w = label_weight(blocks, self.nx, self.has_w)
        xp = namespace(y)
        m = xp.reshape(dense(margins(x, self.coef, self.fit_intercept)), (-1,))
        m -= self.c * y[:, 0]
        wm = m if w is None else w * m
        intercept = xp.sum(wm) if self.fit_intercept else None
        layout = LsqrLayout(self.coef.shape[0])
        out = layout.pack(m @ wm, xp.reshape(dense(x.T @ wm), (-1,)), intercept, xp)
        return out[None, ...]



def lsqr_spec(coef: np.ndarray, c: float, fit_intercept: bool, has_w: bool, nx: int) -> PassSpec:
    """The pass of :class:`LsqrPartial` at ``(coef, c)``: reduces to ``(1, 1 + coef.size)``."""
    return PassSpec("glm/lsqr", LsqrPartial(nx, has_w, fit_intercept, coef, float(c)), SumParts(),
                    (1, LsqrLayout(coef.size).width),
                    {"coef": coef, "c": float(c), "intercept": fit_intercept, "has_w": has_w},
                    row_floats=4)

