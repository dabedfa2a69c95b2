"""The GLM passes' arithmetic on CSR row panels, never densifying a panel.

Every quantity a GLM pass needs is a product of X with a dense vector or matrix
(margins ``X·β``, gradients ``Xᵀr``) or a weighted Gram ``XᵀDX``, so a CSR panel of
``m_b`` rows and ``nnz`` stored entries costs ``O(nnz·k)`` work and ``O(nnz)`` memory
plus the result: never the ``m_b × p`` dense panel. Centring is implicit: the
co-moments ``Σw(x − μ)(x − μ)ᵀ = XᵀWX − W·μμᵀ`` and the variances from the stored
entries plus the implicit zeros' ``μ²`` (no cancellation), so ``X − 1μᵀ`` (dense)
never exists.

Only scipy CSR panels take these paths (:func:`csr_panel`); anything else (dense
blocks, CuPy sparse) goes through the dense kernels of :mod:`blocklin.ops.glm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from blocklin.ops.inputs import hstack_panel

__all__ = ["csr_panel", "sparse_moments", "weighted_gram"]


def csr_panel(blocks: Sequence[Any], nx: int) -> sp.csr_matrix | None:
    """X's row panel as a float64 scipy CSR matrix when its blocks are scipy sparse; else None."""
    if not any(sp.issparse(b) for b in blocks[:nx]):
        return None
    x = hstack_panel(blocks[:nx])
    if not sp.issparse(x):
        return None
    if isinstance(x, sp.csr_matrix) and x.dtype == np.float64:
        return x  # the block as read (no copy)
    out = sp.csr_matrix(x)
    return out if out.dtype == np.float64 else out.astype(np.float64)


def weighted_gram(x: sp.csr_matrix, d: np.ndarray | None, intercept: bool) -> np.ndarray:
    """``ZᵀDZ`` for ``Z = [X 1]`` (or X), D = diag(d) (identity when None), dense (P × P).

    The sparse product ``Xᵀ(D·X)`` costs Σᵢ nnz(rowᵢ)² multiply-adds; only the P × P
    result is dense (the Newton and normal-equation methods' own memory).
    """
    rows, p = x.shape
    dx = x if d is None else sp.csr_matrix(x.multiply(d[:, None]))
    size = p + int(intercept)
    out = np.empty((size, size))
    out[:p, :p] = (x.T @ dx).toarray()
    if intercept:
        col = np.asarray(dx.sum(axis=0)).reshape(-1)
        out[:p, p] = col
        out[p, :p] = col
        out[p, p] = float(rows if d is None else d.sum())
    return out


def _weighted_variances(x: sp.csr_matrix, w: np.ndarray | None, mu: np.ndarray,
                        total: float) -> np.ndarray:
    """Σᵢ wᵢ(xᵢⱼ − μⱼ)² per column from the stored entries, plus the implicit zeros' μⱼ².

    Each term is a square of a difference formed entry by entry, as a two-pass
    variance: no ``Σwx² − Wμ²`` cancellation.
    """
    p = x.shape[1]
    cols = x.indices
    wnz = np.ones(cols.shape[0]) if w is None else np.repeat(w, np.diff(x.indptr))
    dev = x.data - mu[cols]
    stored = np.bincount(cols, weights=wnz * dev * dev, minlength=p)
    wstored = np.bincount(cols, weights=wnz, minlength=p)
    out: np.ndarray = stored + (total - wstored) * mu * mu
    return out


def sparse_moments(x: sp.csr_matrix, y: np.ndarray, w: np.ndarray | None,
                   full: bool) -> tuple[np.ndarray, np.ndarray]:
    """The weighted means of ``[X y]`` and its centred co-moments (``full``: d × d) or
    their diagonal, from a CSR panel, X never densified (see
    :class:`blocklin.ops.glm.moments.MomentsLayout`).

    ``full``: the co-moments ``XᵀWX − W·μμᵀ`` (a sparse product; the d × d result is
    the normal equations' own memory), ``Xᵀ(w∘(y − ȳ))`` (the centred label carries the
    centring) and ``Σw(y − ȳ)²``. Otherwise only the diagonal, entry by entry.
    """
    rows, p = x.shape
    q = y.shape[1]
    d = p + q
    total = float(rows) if w is None else float(w.sum())
    wt = np.ones(rows) if w is None else w
    mu_x = np.asarray(x.T @ wt).reshape(-1) / total
    mu_y = (wt @ y) / total
    yc = y - mu_y
    wyc = yc * wt[:, None]
    mean = np.concatenate([mu_x, mu_y])
    if not full:
        diag = np.concatenate([_weighted_variances(x, w, mu_x, total),
                               np.sum(wyc * yc, axis=0)])
        return mean, diag
    C = np.empty((d, d))
    gram = weighted_gram(x, w, False)
    gram -= total * np.outer(mu_x, mu_x)
    # Rounding may leave a variance a hair below 0 where the subtraction cancels; the
    # diagonal is taken entry by entry instead.
    gram[np.diag_indices(p)] = _weighted_variances(x, w, mu_x, total)
    xy = np.asarray(x.T @ wyc)
    C[:p, :p], C[:p, p:], C[p:, :p], C[p:, p:] = gram, xy, xy.T, yc.T @ wyc
    return mean, C
