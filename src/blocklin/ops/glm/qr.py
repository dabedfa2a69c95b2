"""The TSQR pass of ``√w·[X 1 y]``: per-panel R (from the Gram where well conditioned,
Householder otherwise), with the exact (double-double) Gram of the panels that need it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from blocklin.ops.extended import dd_sum_parts, exact_gram, kappa_limit, slices_for
from blocklin.ops.glm.conditioning import conditioning, ls_condition
from blocklin.ops.glm.moments import MomentsPartial
from blocklin.ops.glm.panels import design, label_weight
from blocklin.ops.glm.passes import PassSpec
from blocklin.ops.glm.sparse import weighted_gram
from blocklin.ops.tsqr import householder_r
from blocklin.plan.graph import TaskContext

__all__ = ["GRAM_R_BELOW", "QRCombine", "QRFactor", "QRLayout", "QRLeaf", "QRPartial",
           "qr_spec"]


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
    another pass. Output ``(1, *QRLayout.shape)`` (:class:`QRLayout`), extended (room
    for the Gram) when ``extend_above`` is finite.
    """

    nx: int
    has_w: bool
    fit_intercept: bool
    extend_above: float = np.inf

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        y, w = label_weight(blocks, self.nx, self.has_w)
        rows = y.shape[0]
        c = sum(b.shape[1] for b in blocks[:self.nx]) + int(self.fit_intercept) + y.shape[1]
        layout = QRLayout(c, bool(np.isfinite(self.extend_above)))
        R = np.zeros((c, c))
        r = _gram_r(blocks[0], self.fit_intercept, y) if self.nx == 1 and w is None else None
        if r is not None:
            R[:] = r
        elif rows:
            z = self._weighted(blocks, y, w, "F")
            R[: min(rows, c)] = householder_r(z, overwrite=True)
            del z  # factored in place: only R is kept
        if not (rows and y.shape[1] == 1 and layout.extended):
            return layout.pack(R)[None]
        kappa, kappa_ls = _panel_condition(R, rows)
        if kappa_ls > self.extend_above:
            slices = slices_for(kappa)
            gram = exact_gram(self._weighted(blocks, y, w, "C"), slices)
            return layout.pack(R, gram_panels=1, slices=slices, gram=gram)[None]
        return layout.pack(R)[None]

    def _weighted(self, blocks: Sequence[Any], y: np.ndarray, w: np.ndarray | None,
                  order: Literal["C", "F"]) -> np.ndarray:
        z = design(blocks, self.nx, self.fit_intercept, y, order)
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
    Gram are sparse products (:mod:`blocklin.ops.glm.sparse`), its residual a sparse
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



class QRPartial(NamedTuple):
    """The fields of a QR pass partial (:class:`QRLayout`)."""

    R: np.ndarray  # (c, c) R of the panels below (zero rows under a short panel's)
    gram_panels: int  # panels below that formed their exact Gram
    panels: int  # panels below
    slices: int  # fewest exact slices among those Grams; 0 when none formed one
    gram: np.ndarray | None  # (2, c, c) double-double sum of the Grams; None unless extended


class QRFactor(NamedTuple):
    """What the solver takes from a reduced QR pass."""

    R: np.ndarray  # (c, c) upper triangular
    gram: np.ndarray | None  # the exact (2, c, c) Gram when every panel formed one
    serves: float  # the largest condition number that Gram serves (:func:`kappa_limit`)


@dataclass(frozen=True)
class QRLayout:
    """Where a QR pass partial of ``c`` columns keeps each field of :class:`QRPartial`.

    Rows ``[0, c)`` R; row c (panels with an exact Gram, panels); row c + 1 (fewest
    exact slices among those Grams, 0 for none); with ``extended``, 2c more rows for the
    Gram's high then low parts (zero when no Gram, or not every panel's, was summed).
    The counts travel as floats (exact below 2⁵³) and are read back as integers.
    """

    c: int
    extended: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (self.c + 2 + (2 * self.c if self.extended else 0), self.c)

    def pack(self, R: np.ndarray, gram_panels: int = 0, panels: int = 1, slices: int = 0,
             gram: np.ndarray | None = None) -> np.ndarray:
        c = self.c
        out = np.zeros(self.shape)
        out[:c] = R
        out[c, :2] = gram_panels, panels
        out[c + 1, 0] = slices
        if gram is not None:
            out[c + 2:] = gram.reshape(2 * c, c)
        return out

    def unpack(self, packed: np.ndarray) -> QRPartial:
        c = self.c
        gram = packed[c + 2:].reshape(2, c, c) if self.extended else None
        return QRPartial(packed[:c], int(packed[c, 0]), int(packed[c, 1]),
                         int(packed[c + 1, 0]), gram)

    def factor(self, packed: np.ndarray) -> QRFactor:
        """R, and the exact Gram with the condition number it serves when every panel
        formed one (else None and 0)."""
        part = self.unpack(packed)
        R = np.triu(part.R)
        if part.gram is None or not (part.panels > 0 and part.gram_panels == part.panels):
            return QRFactor(R, None, 0.0)
        return QRFactor(R, part.gram, kappa_limit(part.slices))


@dataclass(frozen=True)
class QRCombine:
    """Combine kernel of the QR pass: R of the stacked R parts (as TSQR's ``TreeQR``), the
    double-double sum of the exact Grams, the panel counts and the fewest slices, in
    index order. The Grams are summed only when every panel below supplied one (else
    the sum could never be used, see :meth:`QRLayout.factor`, and stays zero)."""

    c: int
    extended: bool = False

    def __call__(self, ctx: TaskContext | None, blocks: Sequence[Any]) -> Any:
        layout = QRLayout(self.c, self.extended)
        parts = [layout.unpack(b[0]) for b in blocks]
        # The R parts stacked in index order and factored again, as TSQR's TreeQR does.
        R = householder_r(np.vstack([part.R for part in parts]))
        gram_panels = sum(p.gram_panels for p in parts)
        panels = sum(p.panels for p in parts)
        slices = min((p.slices for p in parts if p.slices > 0), default=0)
        gram = None
        if self.extended and gram_panels == panels:
            gram = dd_sum_parts([p.gram for p in parts if p.gram is not None])
        return layout.pack(R, gram_panels, panels, slices, gram)[None]


def qr_spec(p: int, q: int, fit_intercept: bool, has_w: bool, nx: int,
            extend_above: float = np.inf) -> PassSpec:
    """TSQR of √w·[X 1 y]; panels less well conditioned than ``extend_above`` (an
    :func:`ls_condition` figure) also give their exact Gram (see :class:`QRLeaf`)."""
    c = p + int(fit_intercept) + q
    layout = QRLayout(c, bool(np.isfinite(extend_above)))
    return PassSpec("glm/tsqr_r", QRLeaf(nx, has_w, fit_intercept, extend_above),
                    QRCombine(c, layout.extended), layout.shape,
                    {"intercept": fit_intercept, "has_w": has_w, "extend_above": extend_above},
                    row_floats=2 * c if extend_above == np.inf else 4 * c, keeps_sparse=False)
