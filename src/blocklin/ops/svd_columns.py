"""Sparse column appends and low-rank changes for :func:`blocklin.ops.svd_update`.

Deng et al.'s update, by symmetry with the sparse row path (:mod:`blocklin.ops.svd_rows`).
For ``A + X·Yᵀ`` with ``A ≈ U diag(s) Vᵀ`` (appended columns D: ``X = D``, ``Y = [0; I]``
against V padded with q zero rows):

* ``L_X = UᵀX`` (k × r) from U's rows at X's nonzero rows only
  (:meth:`~blocklin.ops.svd_state.SVDState.u_rows`), and the residual
  ``H_X = X − U·L_X`` through its Gram ``H_XᵀH_X = XᵀX − L_XᵀL_X = Z·Λ·Zᵀ``
  (r × r, from X's nonzeros): ``H_X = Q_X·R_X`` with ``R_X = Λ^½Zᵀ`` and
  ``Q_X = H_X·Z·Λ^-½`` never formed. Directions with Λ under the Gram's rounding
  are dropped (X inside span(U), or rank-deficient X), as the row path does.
* Y alike against V (rows of V at Y's nonzero rows, V kept as ``base·K_v``).
* The middle ``[[S, 0], [0, 0]] + [L_X; R_X]·[L_Y; R_Y]ᵀ`` ((k + r_X) × (k + r_Y)),
  its SVD ``Uₘ Sₘ Wₘᵀ`` truncated to k, and then, with ``T_X = Z·Λ^-½·Uₘ[k:]``:
  ``U' = U·(Uₘ[:k] − L_X·T_X) + X·T_X`` — a k × k rotation of U's shared factor
  and one new term whose basis is X itself, kept sparse — and V' the same way
  (:class:`~blocklin.ops.svd_rows.FactoredV`: only V's rows at Y's nonzero rows,
  and the factor, change).

Nothing m- or n-wide is formed: O(nnz(X)·k + nnz(Y)·k + (k + r)³ + k³) plus reading
U's row blocks where X is nonzero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from blocklin.errors import InputValueError
from blocklin.ops.svd_rows import FactoredV
from blocklin.ops.svd_state import SVDState, VFactor
from blocklin.storage.blockmatrix import BlockMatrix
from blocklin.storage.sparse import to_scipy

__all__ = ["LowRankStep", "as_csc", "lowrank_sparse"]


@dataclass(frozen=True)
class LowRankStep:
    """A sparse column or low-rank update before its commit."""

    rotation: np.ndarray        # of the old rows of U (raw, k × k)
    s: np.ndarray
    V: VFactor
    ids: np.ndarray             # V's rows this update changed (sorted) and their values
    rows: np.ndarray
    whole: bool                 # V's base replaced (its factor folded): checkpoint it
    basis: sp.csr_matrix | None  # X's rows [row0, row0 + basis rows), or None (no new term)
    row0: int
    g: np.ndarray               # the new term's G (X's width × k)


def as_csc(x: Any, what: str) -> sp.csc_matrix:
    """X in memory as float64 CSC (stored X read on the driver), checked finite.

    CSC keeps the update's work in X's nonzeros: its nonzero rows are its indices.
    """
    if isinstance(x, BlockMatrix):
        x = to_scipy(x)
    out = sp.csc_matrix(x, dtype=np.float64)
    out.eliminate_zeros()
    out.sum_duplicates()
    if not np.isfinite(out.data).all():
        raise InputValueError(f"{what} holds NaN or infinite values")
    return out


def _gram_split(x: Any, L: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``H = X − B·L`` (B orthonormal, ``L = BᵀX``) through ``HᵀH = XᵀX − LᵀL``.

    Returns ``(R, Z/√λ, L)``-ready pieces: ``R = Λ^½Zᵀ`` (r' × r) and ``Z·Λ^-½``
    (r × r') for the kept eigenpairs (those above the Gram's rounding).
    """
    xx = np.asarray((x.T @ x).toarray())
    h = xx - L.T @ L
    lam, z = np.linalg.eigh((h + h.T) / 2)
    # Eigenvalues below the rounding of XᵀX − LᵀL are noise, not directions of H.
    tol = max(x.shape[1], k) * np.finfo(np.float64).eps * max(float(np.trace(xx)), 0.0)
    keep = lam > tol
    zr, lr = z[:, keep], lam[keep]
    return np.sqrt(lr)[:, None] * zr.T, zr / np.sqrt(lr), xx


def lowrank_sparse(st: SVDState, x: sp.csc_matrix, y: sp.csc_matrix | None) -> LowRankStep:
    """Deng et al.'s update of ``st`` for ``A + X·Yᵀ`` (``y`` None: X appended as columns).

    Parameters
    ----------
    st : SVDState
        The current state (raw U and V: signs are not applied, they cancel).
    x : csc_matrix (m, r)
        The left factor, or the appended columns D.
    y : csc_matrix (n, r) or None
        The right factor; None appends x's columns (V padded with r zero rows).

    Returns
    -------
    LowRankStep
        Cost O(nnz(X)·k + nnz(Y)·k + (k + r)³ + k³), plus the reads of U's row
        blocks holding X's nonzero rows.
    """
    k, r = st.k, x.shape[1]
    # -- U's side: L_X = UᵀX from U's rows where X is nonzero.
    ids = np.unique(x.indices)
    # X's nonzero rows, compacted (|ids| × r): O(nnz), never m-long.
    xu = sp.csc_matrix((x.data, np.searchsorted(ids, x.indices), x.indptr),
                       shape=(ids.size, r))
    lx = np.asarray((xu.T @ st.u_rows(ids)).T) if ids.size else np.zeros((k, r))  # k × r
    rx, tx_half, _ = _gram_split(xu, lx, k)
    # -- V's side: rows of V where Y is nonzero (the appended rows, zero, for columns).
    if y is None:
        vf = st.V.padded(r)
        n0 = st.V.n
        yt = sp.csr_matrix((np.ones(r), np.arange(n0, n0 + r), np.arange(r + 1)),
                           shape=(r, n0 + r))
    else:
        vf = st.V
        yt = sp.csr_matrix(y.T)  # Y CSC: its transpose is CSR as it stands
    fv = FactoredV(vf, dense=False)
    ly_t, cu, uid = fv.rows_times(yt)                 # Yᵀ·V: r × k
    ly = ly_t.T
    ry, ty_half, _ = _gram_split(yt.T, ly, k)
    # -- the middle and its SVD.
    left = np.vstack([lx, rx])                        # (k + r_X) × r
    right = np.vstack([ly, ry])                       # (k + r_Y) × r
    mid = left @ right.T
    mid[:k, :k] += np.diag(st.s)
    um, sm, wt = np.linalg.svd(mid, full_matrices=False)
    um, sm, w = um[:, :k], sm[:k], wt[:k].T
    tx = tx_half @ um[k:]                             # r × k: U' = U·(Uₘ[:k] − L_X·T_X) + X·T_X
    rotation = um[:k] - lx @ tx
    ty = ty_half @ w[k:]
    fv.update(w[:k] - ly @ ty, cu, uid, ty)
    V, vids, vrows = fv.result()
    if not tx_half.size or not ids.size:             # X inside span(U): no new term
        return LowRankStep(rotation, sm, V, vids, vrows, fv.whole, None, 0, tx)
    row0, row1 = int(ids[0]), int(ids[-1]) + 1
    # The basis spans X's first to last nonzero row (stored CSR: O(nnz + that span)).
    basis = sp.csc_matrix((x.data, x.indices - row0, x.indptr), shape=(row1 - row0, r)).tocsr()
    return LowRankStep(rotation, sm, V, vids, vrows, fv.whole, basis, row0, tx)
