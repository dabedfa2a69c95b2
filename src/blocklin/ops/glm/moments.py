"""The moments pass: weighted means and centred co-moments of ``[X y]`` per row panel,
merged by Chan, Golub and LeVeque's pairwise update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.linalg

from blocklin.ops._xp import col_sumsq
from blocklin.ops.glm.panels import design, label_weight
from blocklin.ops.glm.passes import PassSpec
from blocklin.ops.glm.sparse import csr_panel, sparse_moments
from blocklin.plan.device import namespace
from blocklin.plan.graph import TaskContext

__all__ = ["Moments", "MomentsLayout", "MomentsMerge", "MomentsPartial", "merge_moments",
           "moments_spec"]


@dataclass
class Moments:
    """Weighted moments of ``[X y]`` (see :func:`blocklin.ops.glm.normal_stats`)."""

    W: float  # Σw
    W2: float  # Σw²
    n: int  # rows
    mean: np.ndarray  # (d,) weighted means
    #: (d, d) centered co-moments; a diagonal-only summary holds none (shape (0, 0)):
    #: a d × d matrix of its diagonal would be 20 GB at 50,000 features.
    C: np.ndarray
    full: bool
    diag: np.ndarray  # (d,) the co-moments' diagonal, Σw(z − μ)²

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_packed(cls, packed: np.ndarray, d: int) -> Moments:
        """The moments of a packed summary of ``d`` columns, full or diagonal as packed."""
        return MomentsLayout(d, packed.shape[0] == d + 2 and d > 1).unpack(packed)

    def std(self) -> np.ndarray:
        """Unbiased weighted standard deviations (MLlib's Summarizer)."""
        denom = self.W - self.W2 / self.W
        if denom <= 0:
            denom = self.W
        out: np.ndarray = np.sqrt(np.maximum(self.diag, 0.0) / denom)
        return out

    def inverse_design(self, fit_intercept: bool) -> np.ndarray:
        """(ZᵀWZ)⁻¹ for Z = [X 1] (or X), from the centered statistics (pseudo-inverse)."""
        p = self.d - 1
        Cxx, mx = self.C[:p, :p], self.mean[:p]
        if not fit_intercept:
            return _pinvh(Cxx + self.W * np.outer(mx, mx))
        inv = _pinvh(Cxx)
        out = np.empty((p + 1, p + 1))
        out[:p, :p] = inv
        out[:p, p] = out[p, :p] = -inv @ mx
        out[p, p] = 1.0 / self.W + mx @ inv @ mx
        return out


def _pinvh(M: np.ndarray) -> np.ndarray:
    dg = np.diag(M)
    s = np.where(dg > 0, 1.0 / np.sqrt(np.where(dg > 0, dg, 1.0)), 0.0)
    scaled = M * s[:, None] * s[None, :]
    inv = _cholesky_inverse(scaled)
    if inv is None:
        inv = scipy.linalg.pinvh(scaled)
    return inv * s[:, None] * s[None, :]


#: Below this ratio of the Cholesky factor's smallest to largest diagonal entry the
#: design is treated as numerically singular and inverted through pinvh's cut-off.
_CHOL_RCOND = 1e-7


def _cholesky_inverse(M: np.ndarray) -> np.ndarray | None:
    """Inverse of a well-conditioned SPD matrix through Cholesky (an eigh costs 5×)."""
    if M.size == 0:
        return None
    try:
        c = scipy.linalg.cholesky(M, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    dg = np.abs(np.diag(c))
    if dg.min() <= _CHOL_RCOND * dg.max():
        return None
    inv, info = scipy.linalg.lapack.dpotri(c, lower=0)
    if info != 0:
        return None
    out: np.ndarray = np.triu(inv) + np.triu(inv, 1).T
    return out


@dataclass(frozen=True)
class MomentsLayout:
    """Where a moments partial keeps each field of :class:`Moments` (``d`` columns).

    Shape ``(d + 2, D)`` (``full``) or ``(3, D)``, ``D = max(d, 3)``: row 0 holds
    (Σw, Σw², rows), row 1 the weighted means, rows 2.. the centered co-moment matrix
    (``full``) or only its diagonal (one row). The row count travels as a float (exact
    below 2⁵³) and is read back as an integer.
    """

    d: int
    full: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d + 2 if self.full else 3, max(self.d, 3))

    def empty(self, total: float, w2: float, rows: int, xp: Any = np) -> Any:
        """A partial holding only the weight sums and row count (zero means and moments)."""
        out = xp.zeros(self.shape, dtype=xp.float64)
        out[0, :3] = xp.asarray([total, w2, rows], dtype=xp.float64)
        return out

    def pack(self, total: float, w2: float, rows: int, mean: Any, comoments: Any,
             xp: Any = np) -> Any:
        """The packed partial; ``comoments`` is (d, d) when ``full``, else the (d,) diagonal."""
        d = self.d
        out = self.empty(total, w2, rows, xp)
        out[1, :d] = mean
        if self.full:
            out[2:, :d] = comoments
        else:
            out[2, :d] = comoments
        return out

    def unpack(self, packed: np.ndarray) -> Moments:
        d = self.d
        if self.full:
            C = np.array(packed[2:2 + d, :d])
            diag = np.diag(C).copy()
        else:
            C, diag = np.zeros((0, 0)), packed[2, :d].copy()
        return Moments(float(packed[0, 0]), float(packed[0, 1]), int(packed[0, 2]),
                       packed[1, :d].copy(), C, self.full, diag)


@dataclass(frozen=True)
class MomentsPartial:
    """Weighted means and centered co-moments of ``[X y]`` for one row panel: a
    :class:`MomentsLayout` partial of ``d = p + q`` columns, shape ``(1, *layout.shape)``."""

    nx: int
    has_w: bool
    full: bool
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        y, w = label_weight(blocks, self.nx, self.has_w)
        xs = csr_panel(blocks, self.nx)
        if xs is not None:
            return self._sparse(xs, y, w)[None]
        if self.full and w is None:
            fast = _moments_in_place(blocks, self.nx, y)
            if fast is not None:
                return fast[None]
        z = design(blocks, self.nx, False, y)
        xp = namespace(z)
        rows, d = z.shape
        layout = MomentsLayout(d, self.full)
        total = float(rows) if w is None else float(xp.sum(w))
        w2 = rows if w is None else float(w @ w)
        if total <= 0:
            return layout.empty(total, w2, rows, xp)[None, ...]
        mu = xp.mean(z, axis=0) if w is None else (w @ z) / total
        z -= mu
        if w is not None:
            z *= xp.sqrt(w)[:, None]
        # numpy's zᵀz of one buffer is BLAS syrk with the GIL released (scipy's
        # blas.dsyrk holds the GIL and serialises concurrent tasks).
        comoments = z.T @ z if self.full else col_sumsq(z)
        return layout.pack(total, w2, rows, mu, comoments, xp)[None, ...]

    def _sparse(self, x: Any, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        rows, d = x.shape[0], x.shape[1] + y.shape[1]
        layout = MomentsLayout(d, self.full)
        total = float(rows) if w is None else float(w.sum())
        w2 = rows if w is None else float(w @ w)
        if total <= 0:
            out: np.ndarray = layout.empty(total, w2, rows)
            return out
        mean, comoments = sparse_moments(x, y, w, self.full)
        packed: np.ndarray = layout.pack(total, w2, rows, mean, comoments)
        return packed


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
    C = np.empty((d, d))
    C[:p, :p] = G - rows * np.outer(mu_x, mu_x)
    # Σ x (y − ȳ) equals Σ (x − x̄)(y − ȳ): the centred label carries the centring.
    xy = x.T @ yc
    C[:p, p:], C[p:, :p], C[p:, p:] = xy, xy.T, yc.T @ yc
    out: np.ndarray = MomentsLayout(d, True).pack(rows, rows, rows,
                                                  np.concatenate([mu_x, mu_y]), C)
    return out


def merge_moments(a: np.ndarray, b: np.ndarray, d: int, full: bool = True) -> np.ndarray:
    """Merge two packed moment summaries (Chan, Golub and LeVeque's pairwise update)."""
    layout = MomentsLayout(d, full)
    ma, mb = layout.unpack(a), layout.unpack(b)
    w2, rows = ma.W2 + mb.W2, ma.n + mb.n
    out: np.ndarray
    if mb.W <= 0:
        out = layout.pack(ma.W, w2, rows, ma.mean, ma.C if full else ma.diag)
    elif ma.W <= 0:
        out = layout.pack(mb.W, w2, rows, mb.mean, mb.C if full else mb.diag)
    else:
        total = ma.W + mb.W
        delta = mb.mean - ma.mean
        mean = ma.mean + delta * (mb.W / total)
        f = ma.W * mb.W / total
        comoments = ma.C + mb.C + f * np.outer(delta, delta) if full \
            else ma.diag + mb.diag + f * delta**2
        out = layout.pack(total, w2, rows, mean, comoments)
    return out


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
                    MomentsLayout(d, full).shape, {"full": full, "has_w": has_w},
                    row_floats=2 * d, sparse_row_floats=3 * q + 4)
