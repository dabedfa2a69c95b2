"""Block kernels for generalized linear models.

The passes behind every solver of :mod:`blocklin.ml`:

* :func:`normal_stats` / ``moments_spec`` -- the weighted sufficient statistics of
  least squares: total weight, Σw², row count, weighted column means of ``[X y]`` and
  the centered co-moment matrix ``(Z - μ)ᵀ W (Z - μ)`` (a symmetric rank-k update per
  block). Blocks are merged with Chan's pairwise update, so the statistics are as
  accurate as a two-pass computation; ``XᵀWX``, ``XᵀWy``, ``yᵀWy`` and column sums
  follow from them without cancellation-prone subtractions.
* ``qr_spec`` -- TSQR of ``√w·[X 1 y]`` (R from the Gram where the panel's centred
  design is well conditioned, Householder otherwise), with the exact (double-double)
  Gram of the panels whose conditioning needs it (:mod:`blocklin.ops._extended`).
* ``refine_spec`` -- loss and gradient in extended precision, for iterative refinement.
* :func:`loss_grad` -- loss and gradient of squared, logistic or multinomial loss at
  given coefficients (one pass per evaluation, for L-BFGS and OWL-QN).
* ``lsqr_spec`` -- ``(tᵀt, Zᵀt)`` for ``t = Z·coef − c·y``: one LSQR iteration.
* :func:`newton_pass` -- binomial logistic loss, gradient and Hessian ``[X 1]ᵀD[X 1]``
  in the same pass (a symmetric rank-k update per block), for Newton/IRLS.
* :func:`eval_pass` -- the sums of the training summaries.

CSR row panels stay sparse in every pass: margins and gradients are sparse products,
the moments and the Newton Hessian sparse weighted Grams with the centring done
implicitly (:mod:`blocklin.ops._glm_sparse`), so a pass over a CSR X costs O(nnz) per
panel and never the dense m_b × p panel. The TSQR pass too takes a well-conditioned
panel's R from its sparse Gram; only its Householder fallback (ill-conditioned, short
or weighted panels) densifies a panel, as a Householder QR must.

Every pass is a fixed-order tree over row-block index, so results are bitwise
identical on every executor. Each kernel is a pure function of its blocks, so the
estimators also run them on in-memory arrays chunk by chunk (:func:`run_local`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, cast

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from blocklin.errors import ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops._extended import dd_sum_parts, exact_gram, kappa_limit, slices_for
from blocklin.ops._glm_sparse import csr_panel, sparse_moments, weighted_gram
from blocklin.ops._inputs import (
    MatrixInput,
    as_matrix,
    hstack_panel,
    reads_csr,
    row_aligned,
    row_panel_tasks,
)
from blocklin.ops._xp import (
    as_dtype,
    col_sumsq,
    empty,
    expit,
    log_expit,
    logsumexp_rows,
    sumsq,
    to_dense,
)
from blocklin.ops.tsqr import householder_r
from blocklin.plan.device import is_sparse, like, namespace
from blocklin.plan.graph import Kernel, TaskContext, make_stage
from blocklin.plan.reduce import DEFAULT_FAN_IN, SumParts, tree_reduce

__all__ = [
    "Family",
    "PassSpec",
    "eval_pass",
    "loss_grad",
    "merge_moments",
    "newton_pass",
    "normal_stats",
    "run_local",
    "unpack_grad",
]

Family = Literal["squared", "binomial", "multinomial"]

#: Bins of the predicted-probability histograms that give the binary AUC.
AUC_BINS = 2048


def _dense(block: Any) -> np.ndarray:
    """A block as dense float64 on its device (numpy, CuPy or another namespace)."""
    out: np.ndarray = as_dtype(to_dense(block), "float64")
    return out


def _split(blocks: Sequence[Any], nx: int, has_w: bool) -> tuple[Any, np.ndarray,
                                                                 np.ndarray | None]:
    """X's row panel (scipy CSR stays CSR, float64; anything else dense float64), y, w."""
    x = csr_panel(blocks, nx)
    if x is None:
        x = _dense(hstack_panel(blocks[:nx]))
    y, w = _label_weight(blocks, nx, has_w)
    return x, y, w


def _label_weight(blocks: Sequence[Any], nx: int,
                  has_w: bool) -> tuple[np.ndarray, np.ndarray | None]:
    y = _dense(blocks[nx])
    w = None
    if has_w:
        wb = _dense(blocks[nx + 1])
        w = namespace(wb).reshape(wb, (-1,))
    return y, w


def _design(blocks: Sequence[Any], nx: int, intercept: bool,
            y: np.ndarray | None = None, order: Literal["C", "F"] = "C") -> np.ndarray:
    """``[X 1 y]`` (ones column if ``intercept``, y if given) as one float64 buffer.

    X's column blocks are written straight into the buffer (sparse ones densified),
    so no joined or converted copy of the panel is made on the way; ``order="F"`` gives
    the column-major buffer LAPACK factors in place.
    """
    p = sum(b.shape[1] for b in blocks[:nx])
    c = p + int(intercept) + (0 if y is None else y.shape[1])
    xp = namespace(*blocks[:nx])
    z: np.ndarray = empty(xp, (blocks[0].shape[0], c), order)
    col = 0
    for b in blocks[:nx]:
        z[:, col:col + b.shape[1]] = as_dtype(to_dense(b), "float64")
        col += b.shape[1]
    if intercept:
        z[:, p] = 1.0
    if y is not None:
        z[:, p + int(intercept):] = y
    return z


# --------------------------------------------------------------------------- moments
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
        y, w = _label_weight(blocks, self.nx, self.has_w)
        xs = csr_panel(blocks, self.nx)
        if xs is not None:
            return self._sparse(xs, y, w)
        if self.full and w is None:
            fast = _moments_in_place(blocks, self.nx, y)
            if fast is not None:
                return fast
        z = _design(blocks, self.nx, False, y)
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


# --------------------------------------------------------------------------- loss/grad
def _margins(x: np.ndarray, coef: np.ndarray, fit_intercept: bool) -> np.ndarray:
    """``x @ coef[:p] (+ coef[p])``; ``coef`` (a host parameter) follows ``x``'s device."""
    p = x.shape[1]
    coef = like(coef, x)
    m: np.ndarray = x @ coef[:p, ...]
    if fit_intercept:
        m += coef[p, ...]
    return m


def _loss_and_residual(family: str, m: np.ndarray, y: np.ndarray,
                       w: np.ndarray | None) -> tuple[float, np.ndarray]:
    """Loss summed over rows and dLoss/dmargin per row (weighted)."""
    xp = namespace(m)
    wt = xp.ones(m.shape[0], dtype=xp.float64) if w is None else w
    if family == "squared":
        r = m - y
        loss = 0.5 * float(wt @ sumsq(r, 1))
    elif family == "binomial":
        mm = m[:, 0]
        yy = y[:, 0]
        # log(1 + e^m) - y m, written with log_expit to stay finite for large |m|.
        loss = float(wt @ (-log_expit(mm) + (1.0 - yy) * mm))
        r = (expit(mm) - yy)[:, None]
    else:
        labels = xp.astype(y[:, 0], xp.int64)[:, None]
        lse = logsumexp_rows(m)
        loss = float(wt @ (lse - xp.take_along_axis(m, labels, axis=1)[:, 0]))
        # Subtracting the one-hot labels changes exactly the entries r[i, yᵢ] -= 1.
        onehot = xp.astype(labels == xp.arange(m.shape[1])[None, :], xp.float64)
        r = xp.exp(m - lse[:, None]) - onehot
    return loss, r * wt[:, None]


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
        x, y, w = _split(blocks, self.nx, self.has_w)
        xp = namespace(x)
        loss, r = _loss_and_residual(self.family, _margins(x, self.coef, self.fit_intercept), y, w)
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


# --------------------------------------------------------------------------- LSQR
@dataclass(frozen=True, eq=False)
class LsqrPartial:
    """One LSQR product over one row panel: ``m = Z·coef − c·y`` (Z = [X 1], or X without
    intercept), packed as the row ``(Σw m², Zᵀ(w∘m))``.

    With t = √w∘m these are tᵀt and Zᵀ(√w∘t): the squared norm of the (unnormalized)
    data part of LSQR's next u and its product with the transposed weighted design, so
    one pass makes one LSQR step without any n-vector kept between passes (see
    :func:`blocklin.ml._glm.sketch_solve`). ``c`` may be arbitrarily small or large; the
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
        x = x.astype(np.float64) if is_sparse(x) else _dense(x)
        y, w = _label_weight(blocks, self.nx, self.has_w)
        xp = namespace(y)
        p = x.shape[1]
        m = xp.reshape(_dense(_margins(x, self.coef, self.fit_intercept)), (-1,))
        m -= self.c * y[:, 0]
        wm = m if w is None else w * m
        out = xp.empty((1, 1, 1 + self.coef.shape[0]), dtype=xp.float64)
        out[0, 0, 0] = m @ wm
        out[0, 0, 1:p + 1] = xp.reshape(_dense(x.T @ wm), (-1,))
        if self.fit_intercept:
            out[0, 0, p + 1] = xp.sum(wm)
        return out


# --------------------------------------------------------------------------- Newton
@dataclass(frozen=True, eq=False)
class NewtonPartial:
    """Logistic loss, gradient and Hessian of one row panel, with ``Z = [X 1]``.

    Binomial (``coef`` of shape (P, 1)): the Hessian ``ZᵀDZ`` by one symmetric rank-k
    update of √D·Z. Multinomial (``coef`` (P, K)): the Hessian of the coefficients
    flattened row-major (index j·K + a), blocks ``Zᵀ diag(w(p_a δ_ab − p_a p_b)) Z``.
    Output ``(1, Q + 2, max(Q, 2))`` with Q = P·K: row 0 (loss, Σw), row 1 the
    gradient, rows 2.. the Hessian.
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    coef: np.ndarray  # (P, K)
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        y, w = _label_weight(blocks, self.nx, self.has_w)
        xs = csr_panel(blocks, self.nx)
        if xs is not None:
            return self._sparse(xs, y, w)
        z = _design(blocks, self.nx, self.fit_intercept)
        xp = namespace(z)
        rows = z.shape[0]
        size, k = self.coef.shape
        m = z @ like(self.coef, z)
        family = "binomial" if k == 1 else "multinomial"
        loss, r = _loss_and_residual(family, m, y, w)
        q = size * k
        out = xp.zeros((1, q + 2, max(q, 2)), dtype=xp.float64)
        out[0, 0, :2] = xp.asarray([loss, (rows if w is None else float(xp.sum(w)))],
                                   dtype=xp.float64)
        out[0, 1, :q] = xp.reshape(z.T @ r, (-1,))
        wt = 1.0 if w is None else w
        if k == 1:
            prob = expit(m[:, 0])
            z *= xp.sqrt(prob * (1.0 - prob) * wt)[:, None]
            out[0, 2:, :size] = z.T @ z  # syrk, GIL released
            return out
        prob = xp.exp(m - logsumexp_rows(m)[:, None])
        h4 = xp.zeros((size, k, size, k), dtype=xp.float64)
        for a in range(k):
            for b in range(a, k):
                d = wt * prob[:, a] * (float(a == b) - prob[:, b])
                hab = (z * d[:, None]).T @ z
                h4[:, a, :, b] = hab
                h4[:, b, :, a] = hab.T
        out[0, 2:, :q] = xp.reshape(h4, (q, q))
        return out

    def _sparse(self, x: Any, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """The same partial from a CSR panel: margins and gradient by sparse products,
        each Hessian block ``Zᵀdiag(d)Z`` a sparse weighted Gram (:func:`weighted_gram`)."""
        rows = x.shape[0]
        size, k = self.coef.shape
        fi = self.fit_intercept
        m = _margins(x, self.coef, fi)
        loss, r = _loss_and_residual("binomial" if k == 1 else "multinomial", m, y, w)
        q = size * k
        out = np.zeros((1, q + 2, max(q, 2)))
        out[0, 0, :2] = loss, (rows if w is None else float(w.sum()))
        grad = np.empty((size, k))
        grad[:x.shape[1]] = x.T @ r
        if fi:
            grad[-1] = r.sum(axis=0)
        out[0, 1, :q] = grad.reshape(-1)
        wt = np.ones(rows) if w is None else w
        if k == 1:
            prob = expit(m[:, 0])
            out[0, 2:, :size] = weighted_gram(x, prob * (1.0 - prob) * wt, fi)
            return out
        prob = np.exp(m - logsumexp_rows(m)[:, None])
        h4 = np.zeros((size, k, size, k))
        for a in range(k):
            for b in range(a, k):
                hab = weighted_gram(x, wt * prob[:, a] * (float(a == b) - prob[:, b]), fi)
                h4[:, a, :, b] = hab
                h4[:, b, :, a] = hab.T
        out[0, 2:, :q] = h4.reshape(q, q)
        return out


# --------------------------------------------------------------------------- QR
@dataclass(frozen=True)
class QRLeaf:
    """Householder R of ``√w·[X 1 y]`` for one row panel, with its exact Gram when needed.

    The intercept column and the weights are applied inside the task, so no augmented
    or weighted copy of X is ever written. A well-conditioned unweighted panel takes R
    from its Gram (:func:`_gram_r`); any other is copied once, column-major, into the
    buffer LAPACK's ``dgeqrt`` factors in place (:func:`blocklin.ops.tsqr.householder_r`).
    Short panels (fewer rows than c) give a trapezoidal R padded with zero rows, which
    leaves ``RᵀR`` unchanged.

    When the panel's own least-squares condition estimate (:func:`ls_condition` of its
    R) exceeds ``extend_above``, or it has fewer rows than columns, the task also forms
    the Gram of the same ``√w·[X 1 y]`` (copied again from the blocks: the first copy
    holds the factorization) in double-double (:func:`exact_gram`) with as many exact
    slices as the panel's condition number asks (:func:`slices_for`), so that an
    ill-conditioned problem can be solved to better than Householder accuracy without
    another pass. Output ``(1, c + 2, c)``: R, a row (panels with an exact Gram,
    panels) and a row (fewest slices among them); with a finite ``extend_above``, 2c
    more rows for the Gram's high then low parts (zero when the panel skipped it).
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    extend_above: float = np.inf

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        y, w = _label_weight(blocks, self.nx, self.has_w)
        rows = y.shape[0]
        c = sum(b.shape[1] for b in blocks[:self.nx]) + int(self.fit_intercept) + y.shape[1]
        out = np.zeros((1, _qr_rows(c, self.extend_above), c))
        out[0, c, 1] = 1.0
        out[0, c + 1, 0] = SLICES_NONE
        r = _gram_r(blocks[0], self.fit_intercept, y) if self.nx == 1 and w is None else None
        if r is not None:
            out[0, :c] = r
        elif rows:
            z = self._weighted(blocks, y, w, "F")
            out[0, : min(rows, c)] = householder_r(z, overwrite=True)
            del z  # factored in place: only R is kept
        if not (rows and y.shape[1] == 1 and np.isfinite(self.extend_above)):
            return out
        kappa, kappa_ls = _panel_condition(out[0, :c], rows)
        if kappa_ls > self.extend_above:
            slices = slices_for(kappa)
            gram = exact_gram(self._weighted(blocks, y, w, "C"), slices)
            out[0, c + 2:] = gram.reshape(2 * c, c)
            out[0, c, 0] = 1.0
            out[0, c + 1, 0] = slices
        return out

    def _weighted(self, blocks: Sequence[Any], y: np.ndarray, w: np.ndarray | None,
                  order: Literal["C", "F"]) -> np.ndarray:
        z = _design(blocks, self.nx, self.fit_intercept, y, order)
        if w is not None:
            z *= np.sqrt(w)[:, None]
        return z


#: Largest 2-norm condition estimate (unit columns) of a panel's design for which the
#: panel's R is taken from its Gram (:func:`_gram_r`). Cholesky of the Gram loses a
#: factor κ against Householder (error ~κ²·u instead of κ·u): at most 10 here, while
#: the Gram route saves two thirds of the panel's flops. With an intercept the bound
#: applies to the centred columns, whose conditioning is the problem's own.
GRAM_R_BELOW = 10.0


def _unit_cholesky(g: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor of a Gram ``g`` when its unit-diagonal scaling has a 2-norm
    condition estimate of at most :data:`GRAM_R_BELOW`; else None."""
    scale = np.sqrt(np.diag(g))
    if not (np.all(scale > 0) and np.all(np.isfinite(g))):
        return None
    try:
        t_unit = scipy.linalg.cholesky(g / np.outer(scale, scale), lower=False,
                                       check_finite=False)
    except np.linalg.LinAlgError:
        return None
    if not conditioning(t_unit).kappa <= GRAM_R_BELOW:
        return None
    out: np.ndarray = t_unit * scale  # R of the columns = R of their unit scaling · diag
    return out


def _gram_r(x: Any, intercept: bool, y: np.ndarray) -> np.ndarray | None:
    """R of a well-conditioned unweighted panel ``[X 1 y]`` from its Gram, else None.

    With an intercept, ``[1 X y] = [1 Xc yc]·M`` (centred columns, M unit upper
    triangular holding the means), and 1 is orthogonal to Xc and yc, so the R of
    ``[1 X y]`` is ``[[√m, √m·μᵀ, √m·ȳ], [0, T, q], [0, 0, r]]``: T is the Cholesky
    factor of the centred ``XcᵀXc`` (:class:`MomentsPartial`'s statistics, as the
    ``normal`` solver forms them), ``q = T⁻ᵀXcᵀyc`` and r the panel's residual norm.
    A Householder QR of that small triangle with the ones column moved after X gives
    the R of ``[X 1 y]``, the column order of the pass. Without an intercept T factors
    ``XᵀX`` itself.

    r is ``‖y − Xβ − b‖`` for the panel's own solution, formed explicitly from the read
    buffer: the Gram's ``yᵀy − ‖q‖²`` would cancel all digits of a small residual,
    while the explicit one is off only by ``‖Z·δβ‖²`` for the error δβ in β (second
    order). The route costs one BLAS-3 product of the panel (no copy when the column
    means are small against their spread) against Householder's two to three.

    A scipy CSR panel takes the same route without being densified: its moments and
    Gram are sparse products (:mod:`blocklin.ops._glm_sparse`), its residual a sparse
    product; only the Householder fallback densifies it.

    None (Householder instead) for a non-float64 or non-contiguous dense block, a
    panel with fewer than 2c rows, several labels, a non-positive-definite Gram or a
    condition estimate above :data:`GRAM_R_BELOW`.
    """
    if y.shape[1] != 1:
        return None
    if sp.issparse(x):
        if not (isinstance(x, sp.csr_matrix) and x.dtype == np.float64):
            return None
    elif not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 2
              and x.flags.c_contiguous):
        return None
    rows, p = x.shape
    c = p + int(intercept) + 1
    if rows < 2 * c:
        return None
    yv = y[:, 0]
    if intercept:
        mom = MomentsPartial(1, False, True)(None, [x, y])[0]
        mu, ybar = mom[1, :p], float(mom[1, p])
        t = _unit_cholesky(mom[2:2 + p, :p])
        if t is None:
            return None
        qty = scipy.linalg.solve_triangular(t, mom[2:2 + p, p], trans="T", check_finite=False)
        beta = scipy.linalg.solve_triangular(t, qty, check_finite=False)
        resid = yv - x @ beta
        resid -= ybar - mu @ beta
        first = np.zeros((c, c))  # R of [1 X y]
        root = np.sqrt(rows)
        first[0, 0], first[0, 1:p + 1], first[0, p + 1] = root, root * mu, root * ybar
        first[1:p + 1, 1:p + 1], first[1:p + 1, p + 1] = t, qty
        first[p + 1, p + 1] = np.linalg.norm(resid)
        return householder_r(first[:, [*range(1, p + 1), 0, p + 1]])
    t = _unit_cholesky(weighted_gram(x, None, False) if sp.issparse(x) else x.T @ x)
    if t is None:
        return None
    xty = np.asarray(x.T @ yv).reshape(-1)
    qty = scipy.linalg.solve_triangular(t, xty, trans="T", check_finite=False)
    beta = scipy.linalg.solve_triangular(t, qty, check_finite=False)
    r = np.zeros((c, c))
    r[:p, :p], r[:p, p], r[p, p] = t, qty, np.linalg.norm(yv - x @ beta)
    return r


def _qr_rows(c: int, extend_above: float) -> int:
    """Rows of a QR pass partial: R and two rows of counts, then the Gram if any."""
    return c + 2 + (2 * c if np.isfinite(extend_above) else 0)


#: Slice count recorded by a panel without an exact Gram (above any real count).
SLICES_NONE = 99.0


def _panel_condition(R: np.ndarray, rows: int) -> tuple[float, float]:
    """(κ, κ_LS) of one panel's R of [Z y] (∞ when it has too few rows), estimated
    (:func:`conditioning`): O(k²), against the panel QR's O(rows·k²)."""
    k = R.shape[0] - 1
    T = R[:k, :k]
    if rows <= k or np.any(np.diag(T) == 0):
        return np.inf, np.inf
    beta = scipy.linalg.solve_triangular(T, R[:k, k], check_finite=False)
    cond = conditioning(T)
    return cond.kappa, ls_condition(T, beta, abs(float(R[k, k])), cond)


class Conditioning(NamedTuple):
    """2-norm size and condition number of a triangular factor with unit columns."""

    norm: float  # σ_max
    kappa: float  # σ_max / σ_min; ∞ when singular or not finite


#: Power-iteration steps and start vectors of the condition estimate (see
#: :func:`conditioning`).
_COND_STEPS = 6
_COND_VECTORS = 2


def conditioning(T: np.ndarray, singular_values: np.ndarray | None = None) -> Conditioning:
    """‖T‖₂ and κ₂(T) of upper-triangular T scaled to unit columns, so that neither
    depends on column units.

    Exact from the singular values of that scaled T when given (the driver has them);
    otherwise estimated in O(k²) per step: power iteration on TᵀT for σ_max and inverse
    iteration (two triangular solves) for 1/σ_min, from a fixed block of start vectors
    (the same estimate on every executor). Both estimates are lower bounds that converge
    from below; after ``_COND_STEPS`` steps they are within a small factor of the truth
    (far closer when the extreme singular values are isolated, as in ill-conditioned
    designs). The 2-norm is the one the least-squares error bounds are stated in: LAPACK's
    1-norm estimate (``dtrcon``) of a well-conditioned 500-column T (κ₂ 1.4) reads 10-50.
    """
    s = np.linalg.norm(T, axis=0)
    if not (np.all(s > 0) and np.all(np.isfinite(T))):
        return Conditioning(np.inf, np.inf)
    if singular_values is not None:
        big, small = float(np.max(singular_values)), float(np.min(singular_values))
        return Conditioning(big, big / small if small > 0 else np.inf)
    te = T / s
    if np.any(np.diag(te) == 0):
        return Conditioning(float(np.abs(te).max()), np.inf)
    k = te.shape[0]
    start = np.random.default_rng(0).standard_normal((k, min(k, _COND_VECTORS)))
    u, v = start, start
    big = inv_small = 0.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(_COND_STEPS):
            tu = te @ u
            big = float(np.linalg.norm(tu, axis=0).max())
            u = te.T @ tu
            u /= np.linalg.norm(u, axis=0)
            tv = scipy.linalg.solve_triangular(te, v, trans="T", check_finite=False)
            inv_small = float(np.linalg.norm(tv, axis=0).max())
            v = scipy.linalg.solve_triangular(te, tv, check_finite=False)
            v /= np.linalg.norm(v, axis=0)
            if not (np.isfinite(inv_small) and np.all(np.isfinite(v))):
                return Conditioning(big, np.inf)
    return Conditioning(big, big * inv_small)


def ls_condition(T: np.ndarray, beta: np.ndarray, resid: float,
                 cond: Conditioning | None = None) -> float:
    """Least-squares condition κ_LS = κ·(1 + κ·‖r‖/(‖T‖·‖β‖)) of a QR solve, in 2-norms.

    κ and ‖T‖ are those of T with unit columns (:func:`conditioning`; pass ``cond`` when
    already at hand), β scaled alike; ``resid`` is the residual norm ‖r‖. The κ² term is
    the sensitivity of large-residual problems. u·κ_LS bounds the normwise relative
    error of any backward-stable solve (Wedin). Returns ∞ for a singular or non-finite
    T, or a zero solution with a nonzero residual.
    """
    if cond is None:
        cond = conditioning(T)
    kappa = cond.kappa
    if not np.isfinite(kappa):
        return np.inf
    s = np.linalg.norm(T, axis=0)
    size = float(cond.norm * np.linalg.norm(beta * s))
    if resid == 0.0:
        return kappa
    if size == 0.0:
        return np.inf
    return kappa * (1.0 + kappa * resid / size)


@dataclass(frozen=True)
class QRCombine:
    """Combine kernel of the QR pass: R of the stacked R parts (as :class:`TreeQR`), the
    double-double sum of the exact Grams, the panel counts and the fewest slices, in
    index order. The Grams are summed only when every panel below supplied one (else
    the sum could never be used, see :func:`unpack_qr`, and stays zero)."""

    c: int

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        from blocklin.ops.tsqr import TreeQR

        c = self.c
        out = np.zeros((1, blocks[0].shape[1], c))
        out[0, :c] = TreeQR(c, False)(ctx, blocks)[0]  # type: ignore[arg-type]
        out[0, c] = np.sum([b[0, c] for b in blocks], axis=0)
        out[0, c + 1, 0] = min(float(b[0, c + 1, 0]) for b in blocks)
        if out.shape[1] > c + 2 and out[0, c, 0] == out[0, c, 1]:
            grams = [b[0, c + 2:].reshape(2, c, c) for b in blocks]
            out[0, c + 2:] = dd_sum_parts(grams).reshape(2 * c, c)
        return out


def qr_spec(p: int, q: int, fit_intercept: bool, has_w: bool, nx: int,
            extend_above: float = np.inf) -> PassSpec:
    """TSQR of √w·[X 1 y]; panels less well conditioned than ``extend_above`` (an
    :func:`ls_condition` figure) also give their exact Gram (see :class:`QRLeaf`)."""
    c = p + int(fit_intercept) + q
    return PassSpec("glm/tsqr_r", QRLeaf(nx, has_w, fit_intercept, extend_above), QRCombine(c),
                    (_qr_rows(c, extend_above), c),
                    {"intercept": fit_intercept, "has_w": has_w, "extend_above": extend_above},
                    row_floats=2 * c if extend_above == np.inf else 4 * c, keeps_sparse=False)


def unpack_qr(part: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
    """R, the exact (2, c, c) Gram when every panel supplied one (else None), and the
    largest condition number that Gram serves (:func:`kappa_limit`) of a QR pass."""
    c = part.shape[1]
    R = np.triu(part[:c])
    extended, panels = part[c, 0], part[c, 1]
    if not (part.shape[0] > c + 2 and panels > 0 and extended == panels):
        return R, None, 0.0
    return R, part[c + 2:].reshape(2, c, c), kappa_limit(int(part[c + 1, 0]))


@dataclass(frozen=True, eq=False)
class RefinePartial:
    """Loss and gradient ``Zᵀw(y − Zβ)`` (Z = [X 1]) in extended precision, for refinement.

    The residual and products are formed in ``np.longdouble`` and each partial is
    stored as a double-double (hi, lo) pair, so the tree sum keeps the cancellation
    between blocks exact to far below double rounding. Output ``(1, 2, c + 1)``: row 0
    the high parts of (Σw r², gradient), row 1 the low parts.
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    coef: np.ndarray  # (c,)

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        x, y, w = _split(blocks, self.nx, self.has_w)
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
        return _double_double(vals)[None]


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
                    DoubleDoubleSum(), (2, c + 1),
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=2 * (c + 2))


def unpack_refine(packed: np.ndarray) -> tuple[float, np.ndarray]:
    """(Σw r², gradient) from a reduced refinement pass, rounded to double."""
    v = packed[0].astype(np.longdouble) + packed[1].astype(np.longdouble)
    return float(v[0]), v[1:].astype(np.float64)


# --------------------------------------------------------------------------- evaluation
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
        x, y, w = _split(blocks, self.nx, self.has_w)
        wt = np.ones(x.shape[0]) if w is None else w
        m = _margins(x, self.coef, self.fit_intercept)
        head = [float(wt.sum()), float(x.shape[0])]
        if self.family == "squared":
            r = m[:, 0] - y[:, 0]
            yc, mc = y[:, 0] - self.y_mean, m[:, 0] - self.y_mean
            vals = [wt @ r**2, wt @ np.abs(r), wt @ r, wt @ yc**2, wt @ mc**2, wt @ yc, wt @ mc]
            return np.array(head + [float(v) for v in vals])[None, None]
        loss, _ = _loss_and_residual(self.family, m, y, w)
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


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class PassSpec:
    """One pass: a per-panel kernel, its combine kernel, and the partial's shape."""

    op: str
    kernel: Kernel
    combine: Kernel
    part_shape: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict)
    row_floats: int = 0  # per-row working floats (copies of the panel), for memory projection
    #: The kernel keeps a CSR panel sparse (all passes but TSQR's): a CSR X is projected
    #: at its stored size and no dense m_b × p panel copy is counted.
    keeps_sparse: bool = True
    #: Per-row working floats on a CSR panel when they differ from ``row_floats`` (the
    #: moments' dense copies of ``[X y]`` do not exist there).
    sparse_row_floats: int | None = None


def moments_spec(p: int, q: int, has_w: bool, nx: int, full: bool) -> PassSpec:
    d = p + q
    return PassSpec("glm/moments", MomentsPartial(nx, has_w, full), MomentsMerge(d, full),
                    (_moment_rows(d, full), max(d, 3)), {"full": full, "has_w": has_w},
                    row_floats=2 * d, sparse_row_floats=3 * q + 4)


def loss_grad_spec(family: str, coef: np.ndarray, fit_intercept: bool, has_w: bool,
                   nx: int) -> PassSpec:
    width = 2 + coef.size
    return PassSpec(f"glm/loss_grad_{family}",
                    LossGradPartial(nx, has_w, family, fit_intercept, coef), SumParts(),
                    (1, width), {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=3 * coef.shape[1] + 2)


def lsqr_spec(coef: np.ndarray, c: float, fit_intercept: bool, has_w: bool, nx: int) -> PassSpec:
    """The pass of :class:`LsqrPartial` at ``(coef, c)``: reduces to ``(1, 1 + coef.size)``."""
    return PassSpec("glm/lsqr", LsqrPartial(nx, has_w, fit_intercept, coef, float(c)), SumParts(),
                    (1, 1 + coef.size),
                    {"coef": coef, "c": float(c), "intercept": fit_intercept, "has_w": has_w},
                    row_floats=4)


def newton_spec(coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int) -> PassSpec:
    q = coef.size
    return PassSpec("glm/newton", NewtonPartial(nx, has_w, fit_intercept, coef),
                    SumParts(), (q + 2, max(q, 2)),
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w},
                    row_floats=coef.shape[0] + 3 * coef.shape[1] + 4)


def eval_spec(family: str, coef: np.ndarray, fit_intercept: bool, has_w: bool, nx: int,
              y_mean: float = 0.0) -> PassSpec:
    return PassSpec(f"glm/eval_{family}",
                    EvalPartial(nx, has_w, family, fit_intercept, coef, y_mean), SumParts(),
                    (1, eval_width(family)),
                    {"coef": coef, "intercept": fit_intercept, "has_w": has_w, "y_mean": y_mean},
                    row_floats=2 * coef.shape[1] + 4)


# --------------------------------------------------------------------------- runners
def _aligned(X: MatrixInput, other: MatrixInput, what: str) -> MatrixInput:
    """``other`` (y or w) in X's row blocks, one column block (see :func:`row_aligned`)."""
    if other.shape[0] != X.shape[0]:
        raise ShapeMismatchError(f"{what} has {other.shape[0]} rows; X has {X.shape[0]}")
    return row_aligned(other, X.node.chunks[0], what)


def build_pass(spec: PassSpec, X: Any, y: Any, w: Any = None) -> Lazy:
    """The lazy result of one pass over row-aligned X, y (and weights w).

    X, y and w are read together, block row by block row, in one stage; partials are
    reduced by a fixed-order tree of fan-in 8.
    """
    xm = as_matrix(X, "X")
    ym = _aligned(xm, as_matrix(y, "y"), "y")
    inputs = [xm.input, ym.input]
    plan = xm.plan.merge(ym.plan)
    wm = None
    if w is not None:
        wm = _aligned(xm, as_matrix(w, "sample_weight"), "sample_weight")
        inputs.append(wm.input)
        plan = plan.merge(wm.plan)
    # y and w are one column block each in X's row blocks: row panels of every input.
    tasks = row_panel_tasks([xm, ym] + ([wm] if wm is not None else []))
    rows, cols = spec.part_shape
    sparse = spec.keeps_sparse and reads_csr(xm)
    if sparse:
        # The joined float64 CSR panel, a weighted copy and per-entry temporaries (three
        # times the stored panel) and the kernel's sparse products (XᵀDX's entries: at
        # most the partial's size, counted twice), never the dense m_b × p panel.
        panel = 3 * int(xm.node.block_nbytes or 0)
        per_row = spec.row_floats if spec.sparse_row_floats is None else spec.sparse_row_floats
        extra = panel + 8 * (2 * rows * cols + xm.node.chunks[0] * per_row)
    else:
        extra = 8 * (rows * cols + xm.node.chunks[0] * (xm.shape[1] + spec.row_floats))
    stage = make_stage(f"{spec.op}/partial", spec.kernel, inputs, tasks,
                       shape=(xm.grid[0], rows, cols), chunks=(1, rows, cols), dtype="float64",
                       params=spec.params, extra_memory=extra, keeps_sparse=sparse)
    plan, out = tree_reduce(plan.add(stage), stage.output, spec.combine, op=spec.op,
                            params=spec.params, extra_memory=8 * rows * cols)
    return Lazy(plan, out, "small", lambda v: v[0], label=spec.op)


# In-process runs have no task; the kernels here never look at their context.
_NO_CTX = cast(TaskContext, None)


def run_local(spec: PassSpec, x: Any, y: np.ndarray, w: np.ndarray | None,
              chunk_rows: int) -> np.ndarray:
    """Run a pass on in-memory arrays: the same kernels over fixed row chunks, merged in order.

    ``x`` may be a numpy array or a scipy sparse matrix (its chunks stay sparse in
    every kernel but TSQR's).
    """
    n = x.shape[0]
    parts = []
    for start in range(0, n, chunk_rows):
        sl = slice(start, min(n, start + chunk_rows))
        blocks: list[Any] = [x[sl], y[sl]]
        if w is not None:
            blocks.append(w[sl, None])
        parts.append(spec.kernel(_NO_CTX, blocks))
    # Same fixed fan-in tree as the planned path.
    while len(parts) > 1:
        parts = [spec.combine(_NO_CTX, parts[k:k + DEFAULT_FAN_IN])
                 for k in range(0, len(parts), DEFAULT_FAN_IN)]
    result: np.ndarray = parts[0][0]
    return result


def normal_stats(X: Any, y: Any, sample_weight: Any = None) -> Lazy:
    """One-pass weighted least-squares statistics of row-aligned X and y, lazily.

    Parameters
    ----------
    X : BlockMatrix, path or lazy matrix, m × p
    y : BlockMatrix, path or lazy matrix, m × q (row-aligned with X)
    sample_weight : BlockMatrix, m × 1, optional

    Returns
    -------
    Lazy
        Computes to a packed ``(p + q + 2, max(p + q, 3))`` array: row 0 (Σw, Σw²,
        rows), row 1 the weighted means of ``[X y]``, rows 2.. the centered co-moment
        matrix ``(Z - μ)ᵀW(Z - μ)``. See :class:`blocklin.ml.LinearRegression`.

    Notes
    -----
    One pass over X, y and the weights, read together in one stage. Each task copies
    its panel once, centers it by the panel's means and applies one symmetric rank-k
    update (``dsyrk``, m_b·d² flops); panels merge by Chan's update in a fixed-order
    tree. Per-task memory: the panel, one float64 copy of it and two d × d matrices.
    """
    xm = as_matrix(X, "X")
    ym = as_matrix(y, "y")
    spec = moments_spec(xm.shape[1], ym.shape[1], sample_weight is not None, xm.grid[1], True)
    return build_pass(spec, X, y, sample_weight)


def loss_grad(X: Any, y: Any, coef: np.ndarray, *, family: Family = "squared",
              fit_intercept: bool = True, sample_weight: Any = None) -> Lazy:
    """Summed loss and gradient at ``coef`` (``(p + intercept, k)``), lazily.

    Notes
    -----
    One pass; per-task memory a panel plus its margins (m_b × k). Computes to a row
    ``[loss, Σw, gradient...]`` (see :func:`unpack_grad`).
    """
    xm = as_matrix(X, "X")
    spec = loss_grad_spec(family, np.asarray(coef, dtype=np.float64), fit_intercept,
                          sample_weight is not None, xm.grid[1])
    return build_pass(spec, X, y, sample_weight)


def newton_pass(X: Any, y: Any, coef: np.ndarray, *, fit_intercept: bool = True,
                sample_weight: Any = None) -> Lazy:
    """Binomial loss, gradient and Hessian at ``coef`` in one pass, lazily.

    Notes
    -----
    One pass; each task applies a symmetric rank-k update to its panel scaled by
    √(w p(1-p)). Per-task memory: a panel, one copy and a P × P matrix.
    """
    xm = as_matrix(X, "X")
    coef = np.asarray(coef, dtype=np.float64)
    spec = newton_spec(coef, fit_intercept, sample_weight is not None, xm.grid[1])
    return build_pass(spec, X, y, sample_weight)


def eval_pass(X: Any, y: Any, coef: np.ndarray, *, family: Family = "squared",
              fit_intercept: bool = True, sample_weight: Any = None,
              y_mean: float = 0.0) -> Lazy:
    """Sums for a fitted model's summary (residual norms, accuracy, AUC histograms)."""
    xm = as_matrix(X, "X")
    spec = eval_spec(family, np.asarray(coef, dtype=np.float64), fit_intercept,
                     sample_weight is not None, xm.grid[1], y_mean)
    return build_pass(spec, X, y, sample_weight)
