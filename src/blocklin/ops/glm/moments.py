"""The moments pass: weighted means and centred co-moments of ``[X y]`` per row panel,
merged by Chan, Golub and LeVeque's pairwise update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from blocklin.ops._xp import (
    col_sumsq,
)
from blocklin.ops.glm.panels import design, label_weight
from blocklin.ops.glm.passes import PassSpec
from blocklin.ops.glm.sparse import csr_panel, sparse_moments
from blocklin.plan.device import namespace
from blocklin.plan.graph import TaskContext


@dataclass(frozen=True)
class MomentsPartial:
    """Weighted means and centered co-moments of ``[X y]`` for one row panel.

    Output ``(1, d + 2, D)`` with ``d = p + q`` and ``D = max(d, 3)``: row 0 holds
    (Σw, Σw², rows), row 1 the weighted means, rows 2.. the centered co-moment
    matrix (``full``) or only its diagonal (one row).
    """

    nx: int
    has_w: bool
    full: bool
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        y, w = label_weight(blocks, self.nx, self.has_w)
        xs = csr_panel(blocks, self.nx)
        if xs is not None:
            return self._sparse(xs, y, w)
        if self.full and w is None:
            fast = _moments_in_place(blocks, self.nx, y)
            if fast is not None:
                return fast
        z = design(blocks, self.nx, False, y)
        xp = namespace(z)
        rows, d = z.shape
        out = xp.zeros((1, _moment_rows(d, self.full), max(d, 3)), dtype=xp.float64)
        total = float(rows) if w is None else float(xp.sum(w))
        out[0, 0, :3] = xp.asarray([total, (rows if w is None else float(w @ w)), rows],
                                   dtype=xp.float64)
        if total <= 0:
            return out
        mu = xp.mean(z, axis=0) if w is None else (w @ z) / total
        z -= mu
        if w is not None:
            z *= xp.sqrt(w)[:, None]
        out[0, 1, :d] = mu
        if self.full:
            # numpy's zᵀz of one buffer is BLAS syrk with the GIL released (scipy's
            # blas.dsyrk holds the GIL and serialises concurrent tasks).
            out[0, 2:, :d] = z.T @ z
        else:
            out[0, 2, :d] = col_sumsq(z)
        return out

    def _sparse(self, x: Any, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        rows, d = x.shape[0], x.shape[1] + y.shape[1]
        out = np.zeros((1, _moment_rows(d, self.full), max(d, 3)))
        total = float(rows) if w is None else float(w.sum())
        out[0, 0, :3] = total, (rows if w is None else float(w @ w)), rows
        return out if total <= 0 else sparse_moments(x, y, w, self.full, out)


#: Largest mean²/variance of a column for which the co-moments are taken from the
#: uncentered XᵀX: the subtraction n·μμᵀ then costs at most a factor 1 + this in
#: relative rounding error (one bit at 1). Columns further off centre take the copy.
_SHIFT_RATIO = 1.0


def _moments_in_place(blocks: Sequence[Any], nx: int, y: np.ndarray) -> np.ndarray | None:
    """Unweighted moments straight from the read buffer of one dense float64 block.

    The centred copy of ``[X y]`` costs two sweeps over memory and a fresh
    allocation (page faults) per block — a third of the pass. When every column's
    mean is small against its spread, ``XᵀX − n·μμᵀ`` is as accurate (within a
    factor ``1 + _SHIFT_RATIO``), so XᵀX is taken on the buffer itself; otherwise
    None and the caller centres a copy.
    """
    if nx != 1:
        return None
    x = blocks[0]
    if not isinstance(x, np.ndarray) or x.dtype != np.float64 or x.ndim != 2 \
            or not x.flags.c_contiguous:
        return None
    rows, p = x.shape
    if rows == 0:
        return None
    mu_x = np.ones(rows) @ x / rows
    G = x.T @ x
    var = np.diag(G) / rows - mu_x**2
    if not np.all(mu_x**2 <= _SHIFT_RATIO * var):
        return None
    q = y.shape[1]
    d = p + q
    mu_y = y.mean(axis=0)
    yc = y - mu_y
    out = np.zeros((1, d + 2, max(d, 3)))
    out[0, 0, :3] = rows, rows, rows
    out[0, 1, :p], out[0, 1, p:d] = mu_x, mu_y
    out[0, 2:2 + p, :p] = G - rows * np.outer(mu_x, mu_x)
    # Σ x (y − ȳ) equals Σ (x − x̄)(y − ȳ): the centred label carries the centring.
    xy = x.T @ yc
    out[0, 2:2 + p, p:d] = xy
    out[0, 2 + p:, :p] = xy.T
    out[0, 2 + p:, p:d] = yc.T @ yc
    return out


def _moment_rows(d: int, full: bool) -> int:
    return d + 2 if full else 3


def merge_moments(a: np.ndarray, b: np.ndarray, d: int, full: bool = True) -> np.ndarray:
    """Merge two packed moment summaries (Chan, Golub and LeVeque's pairwise update)."""
    acc = np.array(a, copy=True)
    wa, wb = a[0, 0], b[0, 0]
    acc[0, 1:3] += b[0, 1:3]
    if wb <= 0:
        return acc
    if wa <= 0:
        acc[1:] = b[1:]
        acc[0, 0] = wb
        return acc
    total = wa + wb
    delta = b[1, :d] - a[1, :d]
    acc[1, :d] = a[1, :d] + delta * (wb / total)
    f = wa * wb / total
    if full:
        acc[2:2 + d, :d] = a[2:2 + d, :d] + b[2:2 + d, :d] + f * np.outer(delta, delta)
    else:
        acc[2, :d] = a[2, :d] + b[2, :d] + f * delta**2
    acc[0, 0] = total
    return acc


@dataclass(frozen=True)
class MomentsMerge:
    """Combine kernel: merge packed moment summaries in index order."""

    d: int
    full: bool

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        acc = blocks[0][0]
        for b in blocks[1:]:
            acc = merge_moments(acc, b[0], self.d, self.full)
        return acc[None]



def moments_spec(p: int, q: int, has_w: bool, nx: int, full: bool) -> PassSpec:
    d = p + q
    return PassSpec("glm/moments", MomentsPartial(nx, has_w, full), MomentsMerge(d, full),
                    (_moment_rows(d, full), max(d, 3)), {"full": full, "has_w": has_w},
                    row_floats=2 * d, sparse_row_floats=3 * q + 4)

