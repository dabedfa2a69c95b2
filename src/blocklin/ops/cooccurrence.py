"""Co-occurrence counts, their (positive) pointwise mutual information, and embeddings.

The item-set view of a stored matrix A (users × items, documents × terms): items i and
j co-occur once in every row holding both, so the co-occurrence matrix is ``C = BᵀB``
with B the indicator of A's nonzeros (``binary``) or A itself (weighted counts).

:func:`cooccurrence` reads A once, block by block, on the driver, summing each block's
sparse ``BᵢᵀBᵢ``: its memory is C's nonzeros plus one block, whatever the number of
rows, and it never forms a dense items × items array. :func:`ppmi` turns counts into
(positive) PMI on C's nonzeros, where the logarithm is defined; :func:`embed` takes a
truncated SVD of that matrix (Levy & Goldberg's factorization view of word2vec);
:func:`nearest` ranks rows of an embedding by cosine similarity.

References
----------
Church & Hanks, "Word association norms, mutual information, and lexicography" (1990);
Levy, Goldberg & Dagan, "Improving distributional similarity with lessons learned from
word embeddings", TACL 3 (2015); Shazeer et al., "Swivel: improving embeddings by
noticing what's missing", arXiv:1602.02215 (2016).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.progress import step as progress_step
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix

__all__ = ["SWIVEL_MAX_ITEMS", "Unobserved", "cooccurrence", "embed", "nearest", "ppmi"]

#: What :func:`ppmi` does with a pair never seen together: ``"zero"`` leaves it out
#: (PPMI's convention: log 0 clipped to 0); ``"swivel"`` gives it Swivel's smoothed
#: estimate ``log(D / (rᵢ·cⱼ))`` as if it had been seen once, clipped at 0 as well.
Unobserved = Literal["zero", "swivel"]


#: Above this many items ``unobserved="swivel"`` is refused: its values are dense.
SWIVEL_MAX_ITEMS = 5_000


def _stored(A: Any, what: str) -> BlockMatrix:
    if isinstance(A, BlockMatrix):
        return A
    if isinstance(A, str | os.PathLike):
        return open_matrix(A)
    raise InputDtypeError(f"{what} reads a stored matrix (a BlockMatrix or a zarr path); "
                          f"got {type(A).__name__}")


def _row_block(M: BlockMatrix, i: int) -> sp.csr_matrix:
    """Row block i of M as float64 CSR (column blocks of a dense array side by side)."""
    parts = [M.block(i, j) for j in range(M.nblocks[1])]
    if all(sp.issparse(p) for p in parts):
        return sp.csr_matrix(sp.hstack(parts), dtype=np.float64)
    return sp.csr_matrix(np.hstack([np.asarray(p) for p in parts]), dtype=np.float64)


def cooccurrence(A: Any, out: str | os.PathLike[str], *, binary: bool = True,
                 diagonal: bool = False, overwrite: bool = False,
                 block_rows: int | None = None) -> BlockMatrix:
    """Item co-occurrence counts ``C = BᵀB`` of a stored matrix, as a CSR block matrix.

    Parameters
    ----------
    A : BlockMatrix or path
        Stored m × n matrix, dense or CSR; its rows are the item sets (users' items,
        documents' terms).
    out : path
        Where C (n × n, CSR row blocks) is written.
    binary : bool
        Count each row's items once (B = A ≠ 0); False weights by A's values
        (``C = AᵀA``, e.g. term counts).
    diagonal : bool
        Keep ``C_ii`` (how many rows hold item i); the default leaves self pairs out.
    overwrite : bool
        Replace an existing array at ``out``.
    block_rows : int, optional
        Rows per block of C (default: blocklin's byte-target chunking).

    Returns
    -------
    BlockMatrix
        C, symmetric, float64, in CSR row blocks.

    Notes
    -----
    One pass over A, on the driver: memory is C's nonzeros (three numbers each) plus one
    block of A; nothing dense of size n × n is formed. Exact (integer counts) whatever
    the block order.
    """
    M = _stored(A, "cooccurrence")
    n = M.shape[1]
    acc = sp.csr_matrix((n, n), dtype=np.float64)
    with progress_step("co-occurrence pass"):
        for i in range(M.nblocks[0]):
            b = _row_block(M, i)
            if binary:
                b.data = np.ones_like(b.data)
                b.eliminate_zeros()
            acc = acc + (b.T @ b).tocsr()
    if not diagonal:
        acc.setdiag(0.0)
    acc.eliminate_zeros()
    acc.sort_indices()
    return from_array(acc, out, chunks=(block_rows, None), overwrite=overwrite,
                      attrs={"blocklin_op": "cooccurrence", "binary": bool(binary)})


def ppmi(C: Any, out: str | os.PathLike[str], *, positive: bool = True,
         context_smoothing: float = 1.0, unobserved: Unobserved = "zero",
         overwrite: bool = False) -> BlockMatrix:
    """(Positive) pointwise mutual information of co-occurrence counts.

    ``PMI_ij = log(C_ij · D / (r_i · c_j))`` with r and c the row and column sums of C
    and D their total; with ``context_smoothing`` α the context counts are raised to α
    (Levy et al.'s 0.75) before normalizing.

    Parameters
    ----------
    C : BlockMatrix or path
        Stored co-occurrence counts (as :func:`cooccurrence` writes).
    out : path
        Where the (P)PMI matrix is written (CSR row blocks, C's blocking).
    positive : bool
        Clip at 0 (PPMI). False keeps negative PMI on C's nonzeros.
    context_smoothing : float
        α in (0, 1]; 1 is plain PMI.
    unobserved : {"zero", "swivel"}
        ``"zero"``: only C's nonzeros carry a value. ``"swivel"``: a pair never seen
        gets Swivel's estimate ``log(D / (r_i·c_j))`` (PMI as if counted once), which is
        > 0 only when ``r_i·c_j < D``; with ``positive`` the others clip to 0, so only
        pairs of rare items gain an entry. Its values are dense, so this option is
        refused above ``SWIVEL_MAX_ITEMS`` (5,000) items.
    overwrite : bool
        Replace an existing array at ``out``.

    Returns
    -------
    BlockMatrix
    """
    if not 0 < context_smoothing <= 1:
        raise InputValueError(f"context_smoothing must be in (0, 1]; got {context_smoothing}")
    if unobserved not in ("zero", "swivel"):
        raise InputValueError(f"unobserved must be 'zero' or 'swivel'; got {unobserved!r}")
    M = _stored(C, "ppmi")
    if M.shape[0] != M.shape[1]:
        raise InputValueError(f"ppmi takes a square co-occurrence matrix; got {M.shape}")
    n = M.shape[0]
    if unobserved == "swivel" and n > SWIVEL_MAX_ITEMS:
        raise InputValueError(f"unobserved='swivel' fills every pair: {n} items is over the "
                              f"{SWIVEL_MAX_ITEMS:,} this dense-valued result allows")
    c = sp.vstack([_row_block(M, i) for i in range(M.nblocks[0])]).tocsr()
    if c.nnz and float(c.data.min()) < 0:
        raise InputValueError("co-occurrence counts must be nonnegative")
    rows = np.asarray(c.sum(axis=1)).ravel()
    ctx = np.asarray(c.sum(axis=0)).ravel() ** context_smoothing
    total, ctx_total = float(rows.sum()), float(ctx.sum())
    if total <= 0:
        raise InputValueError("the co-occurrence matrix is all zeros")
    coo = c.tocoo()
    # log(P(i,j) / (P(i)·P_α(j))): D cancels, leaving Σ c^α from the smoothed contexts.
    pmi = (np.log(coo.data) - np.log(rows[coo.row]) - np.log(ctx[coo.col])
           + np.log(ctx_total))
    values = sp.csr_matrix((pmi, (coo.row, coo.col)), shape=c.shape)
    if unobserved == "swivel":
        with np.errstate(divide="ignore"):
            est = (np.log(ctx_total) - np.log(rows)[:, None] - np.log(ctx)[None, :])
        est[~np.isfinite(est)] = 0.0
        seen = c.toarray() != 0
        dense = np.where(seen, values.toarray(), est)
        values = sp.csr_matrix(np.maximum(dense, 0.0) if positive else dense)
    elif positive:
        values.data = np.maximum(values.data, 0.0)
    values.eliminate_zeros()
    values.sort_indices()
    return from_array(values, out, chunks=(M.chunks[0], None), overwrite=overwrite,
                      attrs={"blocklin_op": "ppmi" if positive else "pmi",
                             "context_smoothing": float(context_smoothing),
                             "unobserved": unobserved})


def embed(P: Any, k: int, *, n_iter: int = 3, seed: int = 0,
          weight: float = 0.5, **options: Any) -> np.ndarray:
    """Item embeddings ``U_k·diag(s_k)^weight`` from a truncated SVD of a (P)PMI matrix.

    ``weight`` 0.5 is Levy et al.'s symmetric split (their best on similarity tasks);
    1 gives the scores ``U·S``. Passes and options as :func:`blocklin.ops.randomized_svd`
    (one more pass forms U).
    """
    from blocklin.ops.svd import randomized_svd

    res = randomized_svd(P, k, n_iter=n_iter, seed=seed, **options)
    u = res.U.to_numpy()
    out: np.ndarray = u * res.s**weight
    return out


def nearest(E: np.ndarray, query: int | np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The n rows of E most cosine-similar to row ``query`` (itself left out) or to a
    query vector: (indices, similarities), most similar first."""
    e = np.asarray(E, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    if isinstance(query, int | np.integer):
        q = e[int(query)]
        skip: int | None = int(query)
    else:
        q, skip = np.asarray(query, dtype=np.float64), None
    qn = float(np.linalg.norm(q)) or 1.0
    sims = (e @ q) / (safe * qn)
    sims[norms == 0] = -np.inf
    if skip is not None:
        sims[skip] = -np.inf
    n = min(n, int(np.isfinite(sims).sum()))
    idx = np.argsort(-sims, kind="stable")[:n]
    return idx, sims[idx]
