"""The refinement pass: loss and gradient in extended precision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from blocklin.ops.glm.panels import read_panel
from blocklin.ops.glm.passes import PassSpec
from blocklin.plan.graph import TaskContext

__all__ = ["DoubleDoubleSum", "RefineLayout", "RefinePartial", "Refinement", "refine_spec"]


class Refinement(NamedTuple):
    """Σw r² and the gradient ``Zᵀw r`` (r = y − Zβ) of a refinement pass, in double."""

    sse: float
    grad: np.ndarray


@dataclass(frozen=True)
class RefineLayout:
    """``(2, c + 1)`` for c coefficients: row 0 the high parts of (Σw r², Zᵀw r), row 1
    the low parts (a double-double number per column)."""

    c: int

    @property
    def shape(self) -> tuple[int, int]:
        return (2, self.c + 1)

    def pack(self, sse: tuple[Any, Any], grad: tuple[Any, Any]) -> np.ndarray:
        out = np.empty(self.shape)
        out[0, :1], out[1, :1] = sse[0], sse[1]
        out[0, 1:], out[1, 1:] = grad[0], grad[1]
        return out

    def unpack(self, packed: np.ndarray) -> Refinement:
        """Each double-double value rounded to double."""
        v = packed[0].astype(np.longdouble) + packed[1].astype(np.longdouble)
        return Refinement(float(v[0]), v[1:].astype(np.float64))


@dataclass(frozen=True, eq=False)
class RefinePartial:
    """Loss and gradient ``Zᵀw(y − Zβ)`` (Z = [X 1]) in extended precision, for refinement.

    The residual and products are formed in ``np.longdouble`` and each partial is
    stored as a double-double (hi, lo) pair, so the tree sum keeps the cancellation
    between blocks exact to far below double rounding (:class:`RefineLayout`).
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    coef: np.ndarray  # (c,)

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        x, y, w = read_panel(blocks, self.nx, self.has_w)
        p = x.shape[1]
        beta = self.coef.astype(np.longdouble)
        xl = x.astype(np.longdouble)  # CSR stays CSR (scipy multiplies in long double)
        r = y[:, 0].astype(np.longdouble) - xl @ beta[:p]
        if self.fit_intercept:
            r -= beta[p]
        wr = r if w is None else r * w.astype(np.longdouble)
        vals = np.empty(self.coef.shape[0] + 1, dtype=np.longdouble)
        vals[0] = wr @ r
        vals[1:p + 1] = np.asarray(xl.T @ wr).reshape(-1)
        if self.fit_intercept:
            vals[p + 1] = wr.sum()
        dd = _double_double(vals)
        return RefineLayout(self.coef.shape[0]).pack((dd[0, :1], dd[1, :1]),
                                                     (dd[0, 1:], dd[1, 1:]))[None]


def _double_double(v: np.ndarray) -> np.ndarray:
    hi = v.astype(np.float64)
    lo = (v - hi.astype(np.longdouble)).astype(np.float64)
    return np.stack([hi, lo])


class DoubleDoubleSum:
    """Combine kernel: sum double-double parts in extended precision, in index order."""

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        acc = np.zeros(blocks[0].shape[-1], dtype=np.longdouble)
        for b in blocks:
            acc += b[0, 0].astype(np.longdouble) + b[0, 1].astype(np.longdouble)
        return _double_double(acc)[None]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DoubleDoubleSum)

    def __hash__(self) -> int:
        return hash(DoubleDoubleSum)


def refine_spec(coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int) -> PassSpec:
    c = coef.shape[0]
    return PassSpec("glm/refine", RefinePartial(nx, has_w, fit_intercept, coef),
                    DoubleDoubleSum(), RefineLayout(c).shape,
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=2 * (c + 2))
