"""The ``cooccurrence`` pipeline step: counts, and optionally PPMI SVD embeddings.

Inputs: ``A``, item sets (rows of a stored matrix) or a token stream (a 1-column
matrix of ids, with ``window``); see :func:`blocklin.ops.cooccurrence`. Outputs:
C in CSR components (``indptr``, ``indices``, ``data`` = the counts, ``counts`` =
the same times ``scale``, integers), ``n``, ``scale``; for a window, ``tail`` (the
stream's last w tokens); with ``embedding_dim`` k, ``embedding`` (n × k: U_k·√S_k
of PPMI's truncated SVD, Levy et al.'s split).

Refresh (``blocklin refresh``) reads only the appended rows: their counts (one pass
over the batch) join the stored integer counts, plus, for a window, the pairs
between the stored ``tail`` and the batch's first w tokens (the stream continues:
a document split across batches is counted as one). Counts are integers, so the
refreshed output equals a recompute over the whole input bit for bit; the
embedding is recomputed from them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from blocklin.errors import InputValueError
from blocklin.ops.cooccurrence import (
    Weighting,
    cooccurrence_counts,
    pmi_values,
    seam_pairs,
    weight_scale,
)
from blocklin.pipelines.registry import Arrays, BuildContext, Operator, Params, UpdateContext
from blocklin.storage.blockmatrix import BlockMatrix

__all__ = ["cooccurrence_operators"]


class CooccurrenceParams(Params):
    window: int | None = Field(None, ge=1, description="token window (None: item sets)")
    weighting: Weighting = "harmonic"
    vocab_size: int | None = Field(None, ge=1, description="token ids' range (windows)")
    boundary: int | None = Field(None, description="document separator id (windows)")
    binary: bool = True
    diagonal: bool = False
    embedding_dim: int = Field(0, ge=0, description="k of the PPMI SVD embedding; 0: none")
    context_smoothing: float = Field(0.75, gt=0, le=1, description="PPMI's context α")


def _counts_of(A: BlockMatrix, p: CooccurrenceParams, comp: Any) -> sp.csr_matrix:
    counts, _ = cooccurrence_counts(A, window=p.window, weighting=p.weighting,
                                    vocab_size=p.vocab_size, boundary=p.boundary,
                                    binary=p.binary, diagonal=p.diagonal,
                                    compute_options=comp)
    return counts


def _tail(A: BlockMatrix, w: int) -> np.ndarray:
    """The stream's last w tokens (from its last row blocks)."""
    parts: list[np.ndarray] = []
    held = 0
    for i in range(A.nblocks[0] - 1, -1, -1):
        if held >= w:
            break
        b = np.asarray(A.block(i, 0)).reshape(-1)
        parts.insert(0, b)
        held += b.size
    seq = np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(seq[-w:], dtype=np.int64)


def _canonical(s: sp.csr_matrix) -> sp.csr_matrix:
    out = sp.csr_matrix(s, dtype=np.float64)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _arrays(counts: sp.csr_matrix, tail: np.ndarray | None, p: CooccurrenceParams) -> Arrays:
    s = _canonical(counts)
    scale = weight_scale(p.window, p.weighting)
    c = sp.csr_matrix((s.data / float(scale), s.indices, s.indptr), shape=s.shape)
    out: Arrays = {"indptr": s.indptr.astype(np.int64), "indices": s.indices.astype(np.int64),
                   "counts": s.data, "data": c.data, "n": np.asarray(s.shape[0]),
                   "scale": np.asarray(scale)}
    if tail is not None:
        out["tail"] = tail
    if p.embedding_dim:
        out["embedding"] = _embedding(c, p)
    return out


def _embedding(c: sp.csr_matrix, p: CooccurrenceParams) -> np.ndarray:
    """U_k·√S_k of PPMI's top-k singular triplets (LAPACK on the dense PPMI up to a few
    thousand items, ARPACK with a fixed start vector beyond: deterministic both ways)."""
    n, k = c.shape[0], int(p.embedding_dim)
    if k >= n:
        raise InputValueError(f"embedding_dim must be below the {n} items; got {k}")
    P = pmi_values(c, context_smoothing=p.context_smoothing)
    if n <= 4_000:
        u, s, _ = np.linalg.svd(P.toarray())
        u, s = u[:, :k], s[:k]
    else:
        from scipy.sparse.linalg import svds

        u, s, _ = svds(P, k=k, v0=np.full(n, 1.0 / np.sqrt(n)))
        order = np.argsort(-s)
        u, s = u[:, order], s[order]
    # Signs: each column's largest-magnitude entry positive, so equal inputs give equal bits.
    pivot = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    out: np.ndarray = u * np.where(pivot == 0, 1.0, pivot) * np.sqrt(s)
    return out


def _check(p: CooccurrenceParams, A: BlockMatrix) -> None:
    if p.window is not None and p.vocab_size is None:
        raise InputValueError("a window cooccurrence step needs vocab_size: appended batches "
                              "must count into the same n × n matrix")


def _build(inputs: Mapping[str, Any], p: CooccurrenceParams, ctx: BuildContext) -> Arrays:
    A = inputs["A"]
    if not isinstance(A, BlockMatrix):
        raise InputValueError("the cooccurrence step reads a stored input, not a step result")
    _check(p, A)
    counts = _counts_of(A, p, ctx.compute)
    return _arrays(counts, _tail(A, p.window) if p.window else None, p)


def _update(ctx: UpdateContext, p: CooccurrenceParams) -> Arrays:
    """New rows' counts join the stored ones; a window also counts the pairs that
    straddle the old end of the stream (stored tail × the batch's first w tokens)."""
    prev = ctx.previous
    n = int(prev["n"])
    batch = ctx.batch["A"]
    stored = sp.csr_matrix((prev["counts"], prev["indices"], prev["indptr"]), shape=(n, n))
    new = stored + _counts_of(batch, p, ctx.compute)
    tail = None
    if p.window is not None:
        w = int(p.window)
        head = np.concatenate([np.asarray(batch.block(i, 0)).reshape(-1)
                               for i in range(min(batch.nblocks[0], w))])[:w].astype(np.int64)
        old = np.asarray(prev["tail"], dtype=np.int64)
        keys, vals = seam_pairs(old, head, n, w, p.weighting, p.boundary, p.diagonal)
        new = new + sp.csr_matrix((vals, (keys // n, keys % n)), shape=(n, n))
        tail = np.concatenate([old, _tail(batch, w)])[-w:]
    return _arrays(new, tail, p)


def cooccurrence_operators() -> Iterator[Operator]:
    """The co-occurrence family's pipeline operators."""
    yield Operator("cooccurrence", "co-occurrence counts of item sets or of a token window "
                   "(one block pass), optional PPMI SVD embedding (refresh: new rows' counts "
                   "added, bit for bit a recompute)", ("A",), CooccurrenceParams, "eager",
                   _build, extract=dict, update=_update)
