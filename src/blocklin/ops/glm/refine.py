"""The refinement pass: loss and gradient of least squares in double-double.

The residual ``y − Zβ`` and the products ``Zᵀw r`` and ``Σw r²`` are formed from exact
products (TwoProduct) summed by error-free extraction (:mod:`blocklin.ops.extended`),
never in ``np.longdouble`` (plain float64 on Windows and arm64 macOS): the pass gives
the same bits on every platform, to about 2⁻¹⁰⁶ relative to the terms it sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from blocklin.ops.extended import (
    Pair,
    dd_add,
    dd_mul_exact,
    dd_sum,
    dd_sum_parts,
    dd_sum_segments,
)
from blocklin.ops.glm.panels import read_panel
from blocklin.ops.glm.passes import PassSpec
from blocklin.plan.graph import TaskContext

__all__ = ["DoubleDoubleSum", "RefineLayout", "RefinePartial", "Refinement", "refine_spec"]

#: Panels are refined this many (stored) entries at a time, so the exact products and
#: their extraction temporaries (about ten arrays of this size) stay a few MiB whatever
#: the panel's size; they are projected as the pass's fixed working memory.
_CHUNK_ENTRIES = 2**19
_CHUNK_BYTES = 10 * 8 * _CHUNK_ENTRIES


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

    def pack(self, sse: Pair, grad: Pair) -> np.ndarray:
        out = np.empty(self.shape)
        out[0, :1], out[1, :1] = sse[0], sse[1]
        out[0, 1:], out[1, 1:] = grad[0], grad[1]
        return out

    def unpack(self, packed: np.ndarray) -> Refinement:
        """Each double-double value rounded to double (hi + lo, one rounding)."""
        v = packed[0] + packed[1]
        return Refinement(float(v[0]), v[1:].copy())


@dataclass(frozen=True, eq=False)
class RefinePartial:
    """Loss and gradient ``Zᵀw(y − Zβ)`` (Z = [X 1]) of one row panel in double-double,
    for iterative refinement (:class:`RefineLayout`): the tree sum keeps the cancellation
    between blocks exact to far below double rounding. CSR panels stay sparse."""

    nx: int
    has_w: bool
    fit_intercept: bool
    coef: np.ndarray  # (c,)

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        x, y, w = read_panel(blocks, self.nx, self.has_w)
        layout = RefineLayout(self.coef.shape[0])
        sparse = sp.issparse(x)
        rows = x.shape[0]
        entries = x.nnz if sparse else rows * x.shape[1]
        step = max(1, _CHUNK_ENTRIES * rows // max(1, entries))
        sse: Pair = (np.zeros(1), np.zeros(1))
        grad: Pair = (np.zeros(layout.c), np.zeros(layout.c))
        for start in range(0, rows, step):
            sl = slice(start, start + step)
            s, g = self._panel(x[sl], y[sl, 0], None if w is None else w[sl], sparse)
            sse, grad = dd_add(sse, s), dd_add(grad, g)
        return layout.pack(sse, grad)[None]

    def _panel(self, x: Any, y: np.ndarray, w: np.ndarray | None,
               sparse: bool) -> tuple[Pair, Pair]:
        p = x.shape[1]
        beta = self.coef
        r = _residual(x, y, beta[:p], beta[p] if self.fit_intercept else 0.0, sparse)
        wr = r if w is None else _scale(w, r)
        grad_x = _transposed_product(x, wr, sparse)
        hi, lo = np.empty(beta.shape[0]), np.empty(beta.shape[0])
        hi[:p], lo[:p] = grad_x
        if self.fit_intercept:
            ih, il = dd_sum([wr[0][None], wr[1][None]], axis=1)
            hi[p], lo[p] = ih[0], il[0]
        return _dot(wr, r), (hi, lo)


def _residual(x: Any, y: np.ndarray, beta: np.ndarray, intercept: float, sparse: bool) -> Pair:
    """``y − Xβ − b`` per row in double-double (exact products, extracted sums)."""
    if sparse:
        ph, pl = dd_mul_exact(x.data, beta[x.indices])
        xb = dd_sum_segments(np.stack([ph, pl], axis=1), x.indptr)
        r = dd_add((y, np.zeros_like(y)), (-xb[0], -xb[1]))
        return dd_add(r, (np.full_like(y, -intercept), np.zeros_like(y)))
    ph, pl = dd_mul_exact(x, -beta[None, :])
    return dd_sum([y[:, None], np.full((y.shape[0], 1), -intercept), ph, pl], axis=1)


def _scale(w: np.ndarray, r: Pair) -> Pair:
    """``w∘r`` in double-double."""
    ph, pl = dd_mul_exact(w, r[0])
    return dd_add((ph, np.zeros_like(ph)), (pl, w * r[1]))


def _transposed_product(x: Any, v: Pair, sparse: bool) -> Pair:
    """``Xᵀv`` in double-double (X's columns as segments of its CSC form when sparse)."""
    if sparse:
        xc = sp.csc_matrix(x)
        rows = xc.indices
        ph, pl = dd_mul_exact(xc.data, v[0][rows])
        return dd_sum_segments(np.stack([ph, pl, xc.data * v[1][rows]], axis=1), xc.indptr)
    ph, pl = dd_mul_exact(x, v[0][:, None])
    return dd_sum([ph, pl, x * v[1][:, None]], axis=0)


def _dot(a: Pair, b: Pair) -> Pair:
    """``Σ aᵢbᵢ`` of double-double vectors, as a (1,)-shaped double-double."""
    ph, pl = dd_mul_exact(a[0], b[0])
    return dd_sum([ph[None], pl[None], (a[0] * b[1])[None], (a[1] * b[0])[None]], axis=1)


class DoubleDoubleSum:
    """Combine kernel: sum double-double parts in index order (:func:`dd_sum_parts`)."""

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        return dd_sum_parts([b[0] for b in blocks])[None]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DoubleDoubleSum)

    def __hash__(self) -> int:
        return hash(DoubleDoubleSum)


def refine_spec(coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int) -> PassSpec:
    c = coef.shape[0]
    return PassSpec("glm/refine", RefinePartial(nx, has_w, fit_intercept, coef),
                    DoubleDoubleSum(), RefineLayout(c).shape,
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=2 * (c + 2), fixed_bytes=_CHUNK_BYTES)
