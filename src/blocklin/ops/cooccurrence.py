"""Co-occurrence counts, their (positive) pointwise mutual information, and embeddings.

Two views of a stored matrix A give co-occurrence counts C (n × n, symmetric):

* **item sets** (``window=None``): the rows of A (users × items, documents × terms)
  are sets; items i and j co-occur once in every row holding both, ``C = BᵀB`` with
  B the indicator of A's nonzeros (``binary``) or A itself (weighted counts);
* **token windows** (``window=w``): A is a token stream, a ``tokens × 1`` column of
  integer ids in corpus order (the flat id array a tokenized corpus is kept in),
  documents separated by negative ids or a ``boundary`` id; tokens at distance
  d ≤ w in one document co-occur with weight 1/d (default), 1 or (w − d + 1)/w.

:func:`cooccurrence` counts either as one block pass (:mod:`._cooccurrence_pass`):
each row block's sparse partial counts are a block task, summed by a fixed-order
tree, in integer-scaled arithmetic so the result is bitwise the same on every
executor and a refresh adding rows (:func:`cooccurrence_counts`) equals a recompute.
:func:`ppmi` turns counts into (positive) PMI on C's nonzeros, where the logarithm
is defined; :func:`embed` takes a truncated SVD of that matrix (Levy & Goldberg's
factorization view of word2vec); :func:`blocklin.ops.swivel` fits Swivel's sharded
objective, unobserved pairs included; :func:`nearest` ranks rows of an embedding by
cosine similarity, and :mod:`blocklin.ops.embedding_eval` scores embeddings against
human similarity judgements and analogies.

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
from blocklin.executors.options import ComputeOptions, OptionsLike, eager_options
from blocklin.executors.progress import operation
from blocklin.executors.progress import step as progress_step
from blocklin.ops._cooccurrence_pass import (
    PANEL_CELLS,
    Weighting,
    count_spec,
    pair_counts,
    partial_plan,
    plan_panels,
    seam_pairs,
    sizing_plan,
    static_panels,
    weight_scale,
)
from blocklin.ops.inputs import as_matrix
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.stores import store_for

__all__ = ["SWIVEL_MAX_ITEMS", "Unobserved", "Weighting", "cooccurrence", "cooccurrence_counts",
           "embed", "nearest", "pmi_values", "ppmi", "seam_pairs", "weight_scale", "write_counts"]

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


def _check_window(M: BlockMatrix, window: int, weighting: str,
                  vocab_size: int | None) -> None:
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise InputValueError(f"window must be a positive integer; got {window!r}")
    if weighting not in ("uniform", "harmonic", "linear"):
        raise InputValueError(f"weighting must be 'uniform', 'harmonic' or 'linear'; "
                              f"got {weighting!r}")
    if M.shape[1] != 1:
        raise InputValueError(f"window co-occurrence reads a token stream: a 1-column matrix "
                              f"of token ids; got {M.shape[1]} columns")
    if M.meta.format != "dense":
        raise InputValueError("window co-occurrence reads a dense token column, not CSR")
    # A task sees its block and the next one's first w tokens: enough unless a window
    # could reach past that next block into a third.
    if window > M.chunks[0] and M.nblocks[0] > 2:
        raise InputValueError(f"window {window} is longer than a row block "
                              f"({M.chunks[0]} tokens); store the tokens in larger blocks")
    if vocab_size is not None and (isinstance(vocab_size, bool) or vocab_size < 1):
        raise InputValueError(f"vocab_size must be a positive integer; got {vocab_size!r}")


def _vocab(M: BlockMatrix, vocab_size: int | None, options: ComputeOptions) -> int:
    """vocab_size, or one more than the largest id (a column-statistics pass)."""
    if vocab_size is not None:
        return int(vocab_size)
    from blocklin.executors.api import compute
    from blocklin.ops.stats import column_stats

    (stats,) = compute(column_stats(M), compute_options=options)
    return max(1, int(np.asarray(stats.max).max()) + 1)


def cooccurrence_counts(A: Any, *, window: int | None = None,
                        weighting: Weighting = "harmonic", vocab_size: int | None = None,
                        boundary: int | None = None, binary: bool = True,
                        diagonal: bool = False, panel_rows: int | None = None,
                        compute_options: OptionsLike = None,
                        **options: Any) -> tuple[sp.csr_matrix, int]:
    """The block pass of :func:`cooccurrence`: integer-scaled counts and their scale.

    Returns ``(S, scale)`` with ``C = S / scale``; S's entries are integers (for
    ``binary`` item sets and every window weighting), so sums of S over disjoint row
    ranges are exact: a refresh adds the new rows' S to the stored one. Arguments as
    :func:`cooccurrence`.
    """
    M = _stored(A, "cooccurrence")
    if window is not None:
        _check_window(M, window, weighting, vocab_size)
    if panel_rows is not None and (isinstance(panel_rows, bool) or panel_rows < 1):
        raise InputValueError(f"panel_rows must be a positive integer; got {panel_rows!r}")
    opts, progress = eager_options(compute_options, options)
    with operation("cooccurrence", progress):
        n = _vocab(M, vocab_size, opts) if window is not None else M.shape[1]
        counts = _count_pass(M, n, window, weighting, boundary, binary, diagonal, panel_rows,
                             opts)
    return counts, weight_scale(window, weighting)


def _count_pass(M: BlockMatrix, n: int, window: int | None, weighting: Weighting,
                boundary: int | None, binary: bool, diagonal: bool, panel_rows: int | None,
                opts: ComputeOptions) -> sp.csr_matrix:
    from blocklin.executors.api import compute

    spec = count_spec(n, window, weighting, boundary, binary, diagonal)
    m = as_matrix(M)
    if panel_rows is None and n * n <= PANEL_CELLS:
        # C fits one part: sized from shapes, one pass.
        panels = static_panels(m, n, window, n)
    else:
        # Parts sized from the data: a sizing pass counts each block's distinct pairs
        # per fine panel, then panels are joined up to PANEL_CELLS entries each.
        rows = panel_rows or max(1, PANEL_CELLS // n)
        with progress_step("co-occurrence sizing pass"):
            (sizes,) = compute(sizing_plan(m, spec, rows), compute_options=opts)
        panels = plan_panels(sizes, n, rows, grouped=panel_rows is None)
    lazies = partial_plan(m, spec, panels)
    with progress_step("co-occurrence pass"):
        roots = compute(*(lz for _, _, lz in lazies), compute_options=opts)
    return pair_counts([(r0, r1, part) for (r0, r1, _), part in
                        zip(lazies, roots, strict=True)], n, window)


def cooccurrence(A: Any, out: str | os.PathLike[str], *, window: int | None = None,
                 weighting: Weighting = "harmonic", vocab_size: int | None = None,
                 boundary: int | None = None, binary: bool = True, diagonal: bool = False,
                 overwrite: bool = False, block_rows: int | None = None,
                 panel_rows: int | None = None, compute_options: OptionsLike = None,
                 **options: Any) -> BlockMatrix:
    """Co-occurrence counts of item sets or of tokens within a window, as CSR blocks.

    Parameters
    ----------
    A : BlockMatrix or path
        Item sets (``window=None``): a stored m × n matrix, dense or CSR, whose rows
        are the sets (users' items, documents' terms); ``C = BᵀB``.
        Token stream (``window=w``): a stored ``tokens × 1`` integer matrix of token
        ids in corpus order (a tokenized corpus's flat id array, as nanoGPT or
        Megatron store it; ingest a Parquet ``token`` column or write one with
        ``bl.from_array(ids[:, None], ...)``). Negative ids, and ``boundary`` if
        given, separate documents.
    out : path
        Where C (n × n, CSR row blocks) is written.
    window : int, optional
        Count token pairs at distance 1..w within one document (both orders: C is
        symmetric). Must not exceed A's block rows when A has more than two blocks.
    weighting : {"harmonic", "uniform", "linear"}
        Window pairs at distance d weigh 1/d (default, as GloVe and Swivel's
        ``fastprep``), 1, or (w − d + 1)/w (word2vec's dynamic window in expectation).
    vocab_size : int, optional
        n for a token stream; default one more than the largest id (an extra pass).
    boundary : int, optional
        A token id that separates documents (an end-of-text token); never counted.
    binary : bool
        Item sets: count each row's items once (B = A ≠ 0); False weights by A's
        values (``C = AᵀA``, e.g. term counts). Ignored for windows.
    diagonal : bool
        Keep ``C_ii`` (item sets: how many rows hold i; windows: a token repeated
        within the window); the default leaves self pairs out.
    overwrite : bool
        Replace an existing array at ``out``.
    block_rows : int, optional
        Rows per block of C (default: blocklin's byte-target chunking).
    panel_rows : int, optional
        Rows of C per panel of the pass (default ``2²² // n``): a part holds at most
        ``panel_rows × n`` entries.
    compute_options : ComputeOptions or dict, optional
        How and where the pass runs (executor, cluster, work directory, ...).
    **options
        Fields of ComputeOptions replacing those of ``compute_options``.

    Returns
    -------
    BlockMatrix
        C, symmetric, float64, in CSR row blocks.

    Raises
    ------
    InputDtypeError
        A is not a stored matrix.
    InputValueError
        A bad window, weighting or vocabulary size, a token stream that is not one
        column, or a window longer than a block (before any compute); a token id at
        or over ``vocab_size`` (in the pass).

    Notes
    -----
    One pass over A as block tasks when C fits one part (``n² ≤ 2²²``); otherwise a
    sizing pass first (each block's distinct pairs per fine panel of C's rows, so
    that every part is sized from the data), then the counting pass; one more with
    ``vocab_size`` unknown. In the counting pass task i reads row block i and writes
    its sparse partial counts, per panel of C's rows, as a key/value block; a fixed
    fan-in tree sums them, adding for windows the pairs across each block seam from
    the first and last w tokens every part carries. Memory per leaf task: one block
    of A, its pairs (windows: ``2·w·block_rows`` entries of ~48 bytes, generated once
    per task and shared by the panels) and one part per panel of the largest block's
    count there, 16 bytes an entry; per tree task ``9 ×`` a part, at most 2²²
    entries (64 MiB) each. The projection refuses a plan over ``max_task_memory``
    before it runs. The driver gathers the roots (C's nonzeros) and writes C.
    Weights are integers (scaled by ``lcm(1..w)`` for harmonic, w for linear), so
    partial sums are exact: the counts are the same to the bit whatever the
    executor, the block order or the tree (``C = S / scale`` divides once at the end).

    Examples
    --------
    >>> T = bl.from_array(ids[:, None], "tokens.zarr", chunks=(1_000_000, None))
    >>> C = bl.ops.cooccurrence(T, "C.zarr", window=5, vocab_size=50_000, boundary=0)
    """
    target = store_for(out)
    if not overwrite and (target.exists("zarr.json") or target.list("")):
        raise InputValueError(f"{target.url} already exists; pass overwrite=True to replace it")
    counts, scale = cooccurrence_counts(A, window=window, weighting=weighting,
                                        vocab_size=vocab_size, boundary=boundary,
                                        binary=binary, diagonal=diagonal,
                                        panel_rows=panel_rows,
                                        compute_options=compute_options, **options)
    return write_counts(counts, scale, out, overwrite=overwrite, block_rows=block_rows,
                        attrs={"window": window, "weighting": weighting if window else None,
                               "binary": bool(binary), "diagonal": bool(diagonal)})


def write_counts(counts: sp.csr_matrix, scale: int, out: str | os.PathLike[str], *,
                 overwrite: bool = False, block_rows: int | None = None,
                 attrs: dict[str, Any] | None = None) -> BlockMatrix:
    """Store ``counts / scale`` (one division, so equal counts give equal bits)."""
    c = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    if scale != 1:
        c.data /= float(scale)
    c.eliminate_zeros()
    c.sort_indices()
    return from_array(c, out, chunks=(block_rows, None), overwrite=overwrite,
                      attrs={"blocklin_op": "cooccurrence", **(attrs or {})})


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
        refused above ``SWIVEL_MAX_ITEMS`` (5,000) items; Swivel's own fit
        (:func:`blocklin.ops.swivel`) treats unobserved pairs shard by shard, with no
        such limit.
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
    values = pmi_values(c, positive=positive, context_smoothing=context_smoothing,
                        unobserved=unobserved)
    return from_array(values, out, chunks=(M.chunks[0], None), overwrite=overwrite,
                      attrs={"blocklin_op": "ppmi" if positive else "pmi",
                             "context_smoothing": float(context_smoothing),
                             "unobserved": unobserved})


def pmi_values(c: sp.csr_matrix, *, positive: bool = True, context_smoothing: float = 1.0,
               unobserved: Unobserved = "zero") -> sp.csr_matrix:
    """:func:`ppmi` of in-memory counts (a scipy sparse matrix), as CSR."""
    c = sp.csr_matrix(c)
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
    return values


def embed(P: Any, k: int, *, n_iter: int = 3, seed: int = 0, weight: float = 0.5,
          compute_options: OptionsLike = None, **options: Any) -> np.ndarray:
    """Item embeddings ``U_k·diag(s_k)^weight`` from a truncated SVD of a (P)PMI matrix.

    ``weight`` 0.5 is Levy et al.'s symmetric split (their best on similarity tasks);
    1 gives the scores ``U·S``. Passes and options as :func:`blocklin.ops.randomized_svd`
    (one more pass forms U).
    """
    from blocklin.ops.svd import randomized_svd

    res = randomized_svd(P, k, n_iter=n_iter, seed=seed, compute_options=compute_options,
                         **options)
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
