"""Row appends for :func:`blocklin.ops.svd_update`: the gram, qr and sparse paths.

Each path returns a :class:`RowStep`: the k × k rotation applied to every old G_t,
the new ``s`` and ``Vt``, and the new rows' U segment, already written as a basis
(p × k, its G the identity). None of them reads the old bases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse as sp

from blocklin.errors import InputDtypeError, InputValueError, ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops.products import gram, matmul
from blocklin.ops.sketch import dense
from blocklin.ops.svd_state import _NO_IDS, VFactor
from blocklin.ops.tsqr import plan_form_q, plan_tree, row_signs
from blocklin.plan.graph import Task, TaskContext, make_stage
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix

__all__ = ["GRAM_MAX_COLUMNS", "NewRows", "RowStep", "SparseRun", "SparseStep", "brand_rows", "parse_rows",
           "row_batches", "rows_gram", "rows_qr", "rows_sparse", "update_factors"]

#: Widest n for which ``method="auto"`` takes the gram path (an n × n Gram on the driver).
GRAM_MAX_COLUMNS = 8192
#: The gram path is kept when its loss of accuracy, about eps·(‖C‖₂ / s'ₖ)², is below this.
GRAM_LOSS_LIMIT = 1e-8

Runner = Callable[..., tuple[Any, ...]]


@dataclass(frozen=True)
class NewRows:
    """Appended rows, checked: in memory (ndarray or CSR) or stored (dense or CSR)."""

    memory: np.ndarray | sp.csr_matrix | None
    stored: BlockMatrix | None
    shape: tuple[int, int]
    sparse: bool


@dataclass(frozen=True)
class RowStep:
    """The outcome of a row append: rotation of the old G_t, new s and Vt, rows added."""

    rotation: np.ndarray
    s: np.ndarray
    Vt: np.ndarray
    rows: int


def parse_rows(rows: Any, n: int) -> NewRows:
    """Check appended rows before anything runs: shape (p, n), real, finite when in memory."""
    if isinstance(rows, str | os.PathLike):
        rows = open_matrix(rows)
    if isinstance(rows, BlockMatrix):
        if rows.shape[1] != n:
            raise ShapeMismatchError(f"rows must have {n} columns; got {rows.shape[1]}")
        return NewRows(None, rows, rows.shape, rows.meta.format != "dense")
    if sp.issparse(rows):
        c: Any = sp.csr_matrix(rows)
        values = c.data
    else:
        c = np.asarray(rows)
        values = c
    if c.dtype.kind not in "fiub":
        raise InputDtypeError(f"rows must be real-valued; got dtype {c.dtype}")
    if c.ndim != 2 or c.shape[1] != n or c.shape[0] == 0:
        raise ShapeMismatchError(f"rows must have shape (p, {n}) with p >= 1; got {c.shape}")
    if not np.isfinite(values).all():
        raise InputValueError("rows hold NaN or infinite values")
    return NewRows(c.astype(np.float64, copy=False), None, (int(c.shape[0]), n), sp.issparse(c))


def update_factors(s: np.ndarray, Vt: np.ndarray,
                   r_new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The small Rayleigh–Ritz step of a row append: SVD of ``[diag(s)·Vt; R_new]``.

    Returns ``(Um, s', Vt')`` truncated to k = len(s), signs as scikit-learn's
    ``svd_flip`` on Vt'. ``R_new`` is any factor with ``R_newᵀR_new = CᵀC`` for the
    new rows C (their R from a QR, or a square root of CᵀC). Old U rows map through
    ``Um[:k]``, new ones (``Q_C``) through ``Um[k:]``.
    """
    k = s.size
    um, sm, wt = np.linalg.svd(np.vstack([s[:, None] * Vt, r_new]), full_matrices=False)
    um, sm, wt = um[:, :k], sm[:k], wt[:k]
    d = row_signs(wt)
    return um * d, sm, wt * d[:, None]


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise InputValueError(f"rows hold NaN or infinite values ({what} is not finite); "
                              "nothing was written")


# -- gram path ------------------------------------------------------------------------------
def gram_step(s: np.ndarray, Vt: np.ndarray,
              g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The Rayleigh–Ritz step of a row append from the new rows' Gram ``g = CᵀC``.

    Returns :func:`update_factors`'s ``(Um, s', Vt')``, or None when the squared
    conditioning costs more than :data:`GRAM_LOSS_LIMIT` (take a QR of C instead).
    """
    lam, q = np.linalg.eigh(g)
    # Any R with RᵀR = CᵀC will do; clipping rounding negatives keeps rank-deficient C exact.
    r = np.sqrt(np.clip(lam, 0.0, None))[:, None] * q.T
    um, s2, vt2 = update_factors(s, Vt, r)
    eps = np.finfo(np.float64).eps
    # U'ᵀU' − I = −diag(1/s')V'ᵀ·E·V'diag(1/s') for the rounding E of CᵀC (‖E‖ ≈ eps‖C‖²);
    # s' carries the same relative perturbation.
    if s2[-1] <= 0 or eps * max(float(lam[-1]), 0.0) / s2[-1] ** 2 > GRAM_LOSS_LIMIT:
        return None
    return um, s2, vt2


def rows_gram(s: np.ndarray, Vt: np.ndarray, c: NewRows, url: str,
              run: Runner, given: np.ndarray | None = None) -> RowStep | None:
    """CᵀC in one pass (or ``given``), a square root by eigh, then the basis
    ``C·V'·diag(1/s')`` in one more.

    Returns None (nothing written) when the Gram's squared conditioning would cost
    more than :data:`GRAM_LOSS_LIMIT`; the caller then takes the qr path.
    """
    if given is not None:
        g = np.asarray(given, dtype=np.float64)
    elif c.stored is not None:
        g = np.asarray(run(gram(c.stored))[0], dtype=np.float64)
    else:
        x: Any = c.memory
        g = dense(x.T @ x)
    _check_finite(g, "CᵀC")
    step = gram_step(s, Vt, g)
    if step is None:
        return None
    um, s2, vt2 = step
    w = np.ascontiguousarray(vt2.T / s2)
    if c.stored is not None:
        run(matmul(c.stored, w, out=url))
    else:
        from_array(dense(c.memory @ w), url)
    k = s.size
    return RowStep(um[:k], s2, vt2, c.shape[0])


# -- qr path --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ConstantFactor:
    """A given (2c+1, c) array whose top-left block is the right factor W of ``Q·W``."""

    values: np.ndarray

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return self.values


def rows_qr(s: np.ndarray, Vt: np.ndarray, c: NewRows, url: str, run: Runner) -> RowStep:
    """Householder TSQR of C (one pass for R), then its U segment ``Q_C·Um[k:]`` (one more)."""
    k, n = s.size, Vt.shape[1]
    C = c.stored
    if C is not None and C.shape[0] >= n:
        tree = plan_tree([C], with_q=True, op="svd_update")
        w = tree.c
        lazy = Lazy(tree.plan, tree.top, "small", lambda p: np.array(p[0][:w]),
                    label="update.R")
        r_c = run(lazy, keep=True)[0]  # its leaves and tree: the Q·W pass below resumes them
        _check_finite(r_c, "R")
        um, sm, wt = update_factors(s, Vt, r_c)
        values = np.zeros((2 * w + 1, w))
        values[:w, :k] = um[k:]
        st = make_stage("svd_update/w", ConstantFactor(values), [], [Task(out=(0, 0), reads=())],
                        shape=values.shape, chunks=values.shape, dtype="float64",
                        params={"values": values})
        # resume: the R pass's leaves and tree are recorded complete; only Q·W runs.
        run(plan_form_q(tree, tree.plan.add(st), st.output, op="svd_update", out=url, k=k),
            resume=True)
        return RowStep(um[:k], sm, wt, C.shape[0])
    x = _to_dense(c)
    _check_finite(x, "the rows")
    q_c, r_c = np.linalg.qr(x)
    um, sm, wt = update_factors(s, Vt, r_c)
    from_array(q_c @ um[k:], url)
    return RowStep(um[:k], sm, wt, c.shape[0])


def _to_dense(c: NewRows) -> np.ndarray:
    return np.vstack([dense(b) for b in _panels(c)])


def _panels(c: NewRows) -> Iterator[Any]:
    """The rows in memory, or the stored row panels read on the driver (CSR stays CSR)."""
    C = c.stored
    if C is None:
        yield c.memory
        return
    for i in range(C.nblocks[0]):
        parts = [C.block(i, j) for j in range(C.nblocks[1])]
        if len(parts) == 1:
            yield parts[0]
        elif any(sp.issparse(p) for p in parts):
            yield sp.csr_matrix(sp.hstack(parts, format="csr"))
        else:
            yield np.hstack(parts)


# -- sparse path ----------------------------------------------------------------------------
#: Fold V's small factor into its base once its condition number passes this: V = base·Kv
#: is then formed with a relative rounding of about eps·cond(Kv) (1e-12 here).
FOLD_COND = 1e4
#: A batch's rows restricted to their nonzero columns are held dense up to this many entries.
COMPACT_DENSE = 1 << 16


def row_batches(c: NewRows, batch: int) -> Iterator[Any]:
    """C in consecutive batches of ``batch`` rows (the last may be shorter), whatever
    its row blocks, so the result does not depend on how C is chunked; CSR stays
    CSR, each batch checked finite."""
    held: list[Any] = []
    count = 0
    for panel in _panels(c):
        a = 0
        while a < panel.shape[0]:
            part = panel[a:a + batch - count]
            a += part.shape[0]
            held.append(part)
            count += part.shape[0]
            if count == batch:
                yield _joined(held)
                held, count = [], 0
    if held:
        yield _joined(held)


def _joined(parts: list[Any]) -> Any:
    if any(sp.issparse(p) for p in parts):
        out: Any = sp.csr_matrix(sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0],
                                 dtype=np.float64)
    else:
        out = np.asarray(np.vstack(parts) if len(parts) > 1 else parts[0], dtype=np.float64)
    _check_finite(np.asarray(out.data if sp.issparse(out) else out), "a row batch")
    return out


class FactoredV:
    """Right singular vectors kept as ``V = base·K`` (n × k times k × k), as Deng et al.

    A batch of rows C changes V to ``V·M + Cᵀ·T`` (M k × k, T p × k). Written as
    ``(base + Cᵀ·T·(K·M)⁻¹)·(K·M)``, only the base rows at C's nonzero columns change:
    O(nnz(C)·k + p·k² + k³) per batch, whatever n. The factor is folded into the base
    (O(n·k²)) only when its condition number passes ``fold_cond``
    (:data:`FOLD_COND`; 1 folds after every batch).

    Started from a :class:`VFactor` (a state's V), the base is either copied once
    (``dense=True``: many batches, O(n·k) once) or left shared, the changed rows kept
    as a sorted delta (``dense=False``: a call of one or a few small batches, O(delta·k)
    per batch). :meth:`result` gives the next VFactor and the rows this call changed.
    """

    def __init__(self, V: np.ndarray | VFactor, fold_cond: float = FOLD_COND, *,
                 dense: bool = True) -> None:
        self.start = V if isinstance(V, VFactor) else VFactor.of(V)
        self.K = self.start.K.copy()
        self.fold_cond = fold_cond
        self.folds = 0
        self.whole = False  # every base row changed (a fold, or dense rows)
        self.touched: list[np.ndarray] = []
        self.delta = self.start
        self.base: np.ndarray | None = self.start.full() if dense else None

    def _densify(self) -> np.ndarray:
        if self.base is None:
            self.base = self.delta.full()
        return self.base

    def _gather(self, uid: np.ndarray) -> np.ndarray:
        return self.base[uid] if self.base is not None else self.delta.gather(uid)

    def rows_times(self, c: Any) -> tuple[np.ndarray, Any, np.ndarray | None]:
        """``L = C·V`` (p × k), C restricted to its nonzero columns, and those columns."""
        if not sp.issparse(c):
            return (c @ self._densify()) @ self.K, c, None
        uid, local = np.unique(c.indices, return_inverse=True)
        p, u = c.shape[0], uid.size
        if p * u <= COMPACT_DENSE:
            # A small batch: its p × u compacted block dense (BLAS beats scipy's
            # per-call overhead here; u <= nnz, never n-wide).
            cu: Any = np.zeros((p, u))
            np.add.at(cu, (np.repeat(np.arange(p), np.diff(c.indptr)), local.ravel()), c.data)
        else:
            cu = sp.csr_matrix((c.data, local.ravel(), c.indptr), shape=(p, u))
        return np.asarray(cu @ self._gather(uid)) @ self.K, cu, uid

    def update(self, M: np.ndarray, cu: Any, uid: np.ndarray | None, t: np.ndarray) -> None:
        """V ← V·M + Cᵀ·T, with ``cu``/``uid`` from :meth:`rows_times`."""
        k_new = self.K @ M
        lu = scipy.linalg.lu_factor(k_new, check_finite=False)
        # LAPACK's 1-norm condition estimate from the LU: O(k²), no SVD.
        rcond = scipy.linalg.lapack.dgecon(lu[0], np.abs(k_new).sum(axis=0).max())[0]
        if not rcond > 1.0 / self.fold_cond:
            # Ill-conditioned (or singular) factor: form V once and restart from K = I.
            self.base = self._densify() @ k_new
            self.K = np.eye(k_new.shape[0])
            delta = t
            self.folds += 1
            self.whole = True
        else:
            self.K = k_new
            delta = scipy.linalg.lu_solve(lu, t.T, trans=1, check_finite=False).T  # T·(K·M)⁻¹
        if uid is None:
            self._densify()
            self.whole = True
            assert self.base is not None
            self.base += cu.T @ delta
            return
        self.touched.append(uid)
        if self.base is not None:
            self.base[uid] += np.asarray(cu.T @ delta)
        else:
            rows = self.delta.gather(uid) + np.asarray(cu.T @ delta)
            self.delta = self.delta.merged(uid, rows, self.K)

    def result(self) -> tuple[VFactor, np.ndarray, np.ndarray]:
        """The next V, and the base rows this call changed (sorted ids, their rows).

        After a fold or dense rows (:attr:`whole`) the next V has a new base: the
        changed rows are then every row (and a checkpoint must store the base).
        """
        if self.whole:
            assert self.base is not None
            vf = VFactor(self.base, self.K, _NO_IDS, np.zeros((0, self.K.shape[0])))
            return vf, np.arange(self.base.shape[0]), self.base
        ids = np.unique(np.concatenate(self.touched)) if self.touched else _NO_IDS
        rows = self._gather(ids)
        if self.base is not None:
            return self.start.merged(ids, rows, self.K), ids, rows
        return replace(self.delta, K=self.K), ids, rows

    def orthonormal(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rayleigh–Ritz on V's rounding (:meth:`VFactor.orthonormal`), O(n·k²)."""
        vf = self.result()[0]
        return vf.orthonormal(s)

    def matrix(self) -> np.ndarray:
        """V formed (n × k): O(n·k²)."""
        out: np.ndarray = self._densify() @ self.K
        return out


def _brand_batch(s: np.ndarray, V: FactoredV, c: Any) -> tuple[np.ndarray, np.ndarray]:
    """One batch: ``[U S Vᵀ; C] = diag(U, I)·[[S, 0], [L, K]]·[V Q]ᵀ``, Q never formed.

    Updates V in place and returns ``Um`` ((k + p) × k: old rows map through ``Um[:k]``,
    the batch's rows are ``Um[k:]``) and s'. Cost O(nnz(C)·k + (k + p)³), independent
    of n and of the rows already absorbed.
    """
    k = s.size
    L, cu, uid = V.rows_times(c)                      # p × k, nnz·k flops
    cc = dense(cu @ cu.T)                             # p × p from the nonzeros
    h = cc - L @ L.T                                  # HHᵀ for H = C − L·Vᵀ (VᵀV = I)
    lam, z = np.linalg.eigh((h + h.T) / 2)
    # Eigenvalues below the rounding of CCᵀ − LLᵀ are noise, not directions of H.
    tol = max(c.shape[0], k) * np.finfo(np.float64).eps * max(float(np.trace(cc)), 0.0)
    keep = lam > tol
    zr, lr = z[:, keep], lam[keep]
    r = zr.shape[1]
    mid = np.zeros((k + c.shape[0], k + r))
    mid[:k, :k] = np.diag(s)
    mid[k:, :k] = L
    mid[k:, k:] = zr * np.sqrt(lr)                    # K, with H = K·Qᵀ
    um, sm, wt = np.linalg.svd(mid, full_matrices=False)
    um, sm, w = um[:, :k], sm[:k], wt[:k].T
    # V' = [V Q]·W with Q = Hᵀ·Z·Λ^{-1/2}: V(W₁ − LᵀT) + CᵀT, T = Z·Λ^{-1/2}·W₂ (p × k).
    t = (zr / np.sqrt(lr)) @ w[k:]
    V.update(w[:k] - L.T @ t, cu, uid, t)
    return um, sm


@dataclass(frozen=True)
class SparseRun:
    """Batches of rows absorbed by :func:`brand_rows` (V formed, not yet sign-fixed)."""

    parts: list[np.ndarray]     # each batch's Um[k:] (its rows of U, before later rotations)
    rots: list[np.ndarray]      # each batch's Um[:k] (the rotation of the rows before it)
    last: np.ndarray            # the closing Rayleigh–Ritz rotation (k × k)
    s: np.ndarray
    Vt: np.ndarray
    folds: int                  # times V's factor was folded into its base


def brand_rows(s: np.ndarray, Vt: np.ndarray, batches: Iterable[Any],
               fold_cond: float = FOLD_COND) -> SparseRun:
    """Deng et al.'s update over ``batches`` of rows (CSR or dense), H = C − CVVᵀ implicit.

    V stays factored (:class:`FactoredV`) across the batches and is formed once at
    the end, followed by one Rayleigh–Ritz re-orthonormalization (a QR of V). Cost:
    O(Σ_b (nnz_b·k + (k + p_b)³) + n·k²); memory O(n·k + Σ_b p_b·k).
    """
    k = s.size
    V = FactoredV(Vt.T, fold_cond)
    parts: list[np.ndarray] = []
    rots: list[np.ndarray] = []
    for cb in batches:
        um, s = _brand_batch(s, V, cb)
        parts.append(um[k:])
        rots.append(um[:k])
    # V's rounding (and the squared conditioning of HHᵀ) corrected once per call.
    a, s, vt = V.orthonormal(s)
    return SparseRun(parts, rots, a, s, vt, V.folds)


@dataclass(frozen=True)
class SparseStep:
    """A sparse row append before its commit: U's rotation and new rows, the next V."""

    rotation: np.ndarray        # of the old rows of U (raw, k × k)
    seg: np.ndarray             # the new rows of U (p × k)
    s: np.ndarray
    V: VFactor
    ids: np.ndarray             # V's base rows this call changed, sorted
    rows: np.ndarray            # their values
    whole: bool                 # V's base replaced (a fold or dense rows): checkpoint it


def rows_sparse(s: np.ndarray, V: VFactor, c: NewRows, batch: int) -> SparseStep:
    """Deng et al.'s update over C in batches of at most ``batch`` rows, V kept factored.

    Nothing is formed n-wide or written: a call of one batch costs O(nnz·k + (k + p)³
    + delta·k) (delta: V's base rows changed since the last checkpoint); a call of
    several batches copies V's base once (O(n·k)).
    """
    k = s.size
    fv = FactoredV(V, dense=c.shape[0] > batch)
    parts: list[np.ndarray] = []
    rots: list[np.ndarray] = []
    for cb in row_batches(c, batch):
        um, s = _brand_batch(s, fv, cb)
        parts.append(um[k:])
        rots.append(um[:k])
    # Part b is later rotated by every later batch's Um[:k]: apply suffix products once.
    acc = np.eye(k)
    for b in range(len(parts) - 1, -1, -1):
        parts[b] = parts[b] @ acc
        acc = rots[b] @ acc
    vf, ids, rows = fv.result()
    return SparseStep(acc, np.vstack(parts), s, vf, ids, rows, fv.whole)
