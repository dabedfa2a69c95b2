"""Coordinated (priority) row sampling for inner-product sketches, stored as the sample.

A coordinated sketch of A (m × n) keeps the k rows of smallest rank h(i)/‖aᵢ‖², with
h(i) a uniform hash shared through the seed, and the threshold τ, the (k + 1)-th
smallest rank (Daliri, Freire, Musco, Santos, Zhang, VLDB 2024). What it holds is
what it sampled: the kept rows' ids and their nonzeros (CSR), so its size follows
the sampled nonzeros, not k × n (:class:`CoordinatedSketch`).

Inside a plan every part (one per row panel, then one per merge) is a flat float64
record of fixed capacity, because a stage's output has a fixed shape::

    [ranks (k+1) | count, nnz | row ids (k+1) | nonzeros per row (k+1) |
     column indices (C) | values (C)]

with C = min((k + 1)·n, a bound on nnz(A) from the stored CSR layout). Unused
capacity is zeros (ranks: inf) and the records are stored through zstd, so on disk a
part costs about its sampled nonzeros. Ranks are stored because merges need them;
the final sketch keeps only τ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from blocklin.errors import (
    InputValueError,
    MetadataError,
    ShapeMismatchError,
)
from blocklin.executors.lazy import Lazy
from blocklin.ops._random import uniform_priorities
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, reads_csr, row_panel_tasks
from blocklin.plan.graph import ArrayNode, Plan, StageInput, TaskContext, TreeTasks, make_stage
from blocklin.plan.reduce import DEFAULT_FAN_IN
from blocklin.storage.chunkio import read_block, write_block
from blocklin.storage.codecs import ChunkCodec
from blocklin.storage.meta import (
    ATTRS_NAMESPACE,
    METADATA_KEY,
    ArrayMeta,
    parse_metadata_json,
    read_meta,
    write_meta,
)
from blocklin.storage.stores import store_for

__all__ = ["CoordinatedSketch", "RecordLayout", "coordinated_estimate", "coordinated_node",
           "load_coordinated_sketch"]

#: Records are mostly unused capacity (zeros): zstd stores that in a few bytes.
_RECORD_CODEC = ChunkCodec("zstd", 1)
_FORMAT = "coordinated_sketch"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RecordLayout:
    """Offsets of one part's flat record (see the module docstring)."""

    k: int
    ncols: int
    capacity: int

    @property
    def slots(self) -> int:
        return self.k + 1

    @property
    def length(self) -> int:
        return 3 * self.slots + 2 + 2 * self.capacity

    def encode(self, ranks: np.ndarray, rows: np.ndarray, values: sp.csr_matrix) -> np.ndarray:
        """One record from the sampled rows (in rank order) and their CSR values."""
        s, c, z = self.slots, len(rows), int(values.nnz)
        if c > s or z > self.capacity:
            raise ValueError(f"a sample of {c} rows and {z} nonzeros exceeds its record "
                             f"({s} rows, {self.capacity} nonzeros)")
        out = np.zeros(self.length)
        out[:s] = np.inf
        out[:c] = ranks
        out[s], out[s + 1] = c, z
        rows_at, nnz_at = s + 2, 2 * s + 2
        out[rows_at:rows_at + s] = -1.0
        out[rows_at:rows_at + c] = rows
        out[nnz_at:nnz_at + c] = np.diff(values.indptr)
        cols_at = 3 * s + 2
        vals_at = cols_at + self.capacity
        out[cols_at:cols_at + z] = values.indices
        out[vals_at:vals_at + z] = values.data
        return out

    def decode(self, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
        """Ranks, row ids (int64) and CSR values of the rows held by a record."""
        s = self.slots
        c, z = int(rec[s]), int(rec[s + 1])
        rows = rec[s + 2:s + 2 + c].astype(np.int64)
        indptr = np.zeros(c + 1, dtype=np.int64)
        np.cumsum(rec[2 * s + 2:2 * s + 2 + c].astype(np.int64), out=indptr[1:])
        cols_at = 3 * s + 2
        vals_at = cols_at + self.capacity
        values = sp.csr_matrix((rec[vals_at:vals_at + z].copy(),
                                rec[cols_at:cols_at + z].astype(np.int64), indptr),
                               shape=(c, self.ncols))
        return rec[:c].copy(), rows, values

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """Everything but the ranks, which hold inf for zero rows and padding."""
        return out[..., self.slots:]


def _row_sqnorms(a: Any) -> np.ndarray:
    if sp.issparse(a):
        a = a if a.dtype == np.float64 else a.astype(np.float64)
        return np.asarray(a.multiply(a).sum(axis=1), dtype=np.float64).ravel()
    a = np.asarray(a, dtype=np.float64)
    out: np.ndarray = np.einsum("ij,ij->i", a, a)
    return out


def _sample_csr(a: Any, pick: np.ndarray) -> sp.csr_matrix:
    """Rows ``pick`` of a panel as float64 CSR without explicit zeros: only the
    sampled rows are ever converted (a dense panel's sample, never a sparse block)."""
    rows = a[pick]
    out = sp.csr_matrix(rows, dtype=np.float64)
    out.eliminate_zeros()
    out.sort_indices()
    return out


@dataclass(frozen=True)
class CoordinatedPartial:
    """The k + 1 rows of smallest rank h(i)/‖aᵢ‖² of one row panel, as a record."""

    layout: RecordLayout
    seed: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        start, stop = ctx.row_range(0, ctx.task.reads[0][1])
        a = hstack_panel(blocks)
        sq = _row_sqnorms(a)
        with np.errstate(divide="ignore"):
            rank = np.where(sq > 0, uniform_priorities(self.seed, start, stop) / sq, np.inf)
        # A row holding NaN ranks first (as one holding inf does), so it is sampled and
        # its values reach the record, where the task's finite check finds them.
        rank[np.isnan(sq)] = 0.0
        cand = np.flatnonzero(rank < np.inf)  # zero rows are never sampled
        pick = cand[np.lexsort((cand, rank[cand]))][:self.layout.slots]
        return self.layout.encode(rank[pick], start + pick, _sample_csr(a, pick))[None]

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """As :meth:`RecordLayout.finite_part`."""
        return self.layout.finite_part(out)


@dataclass(frozen=True)
class CoordinatedMerge:
    """Merge records in index order, keeping the k + 1 smallest ranks (ties by row id)."""

    layout: RecordLayout

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        parts = [self.layout.decode(b[0]) for b in blocks]
        ranks = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        values = sp.csr_matrix(sp.vstack([p[2] for p in parts], format="csr"))
        order = np.lexsort((rows, ranks))[:self.layout.slots]
        return self.layout.encode(ranks[order], rows[order], values[order])[None]

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """As :meth:`RecordLayout.finite_part`."""
        return self.layout.finite_part(out)


def _nnz_bound(m: MatrixInput) -> int | None:
    """An upper bound on nnz(A) from its stored CSR layout (largest block × blocks)."""
    if not reads_csr(m) or m.node.block_nbytes is None:
        return None
    per_entry = np.dtype(m.node.dtype).itemsize + (4 if m.shape[1] < 2**31 else 8)
    largest = (m.node.block_nbytes - (m.node.chunks[0] + 1) * 8) // per_entry
    return max(int(largest), 0) * m.grid[0]


def record_layout(m: MatrixInput, k: int) -> RecordLayout:
    """The record layout of a coordinated sketch of ``m`` with k samples."""
    n = m.shape[1]
    bound = _nnz_bound(m)
    capacity = (k + 1) * n if bound is None else min((k + 1) * n, bound)
    return RecordLayout(k=k, ncols=n, capacity=max(capacity, 1))


def _merge_levels(plan: Plan, parts: ArrayNode, layout: RecordLayout,
                  params: dict[str, Any]) -> tuple[Plan, ArrayNode]:
    """Fixed fan-in merge tree in index order (as plan.reduce.tree_reduce), with the
    records' compressing codec at every level."""
    level, current = 0, parts
    while current.shape[0] > 1:
        n = current.shape[0]
        stage = make_stage(f"coordinated/reduce{level}", CoordinatedMerge(layout),
                           [StageInput(current)], TreeTasks(n, DEFAULT_FAN_IN, 2),
                           shape=(-(-n // DEFAULT_FAN_IN), layout.length),
                           chunks=(1, layout.length), dtype="float64",
                           params={**params, "level": level, "fan_in": DEFAULT_FAN_IN},
                           extra_memory=8 * 3 * layout.length, codec=_RECORD_CODEC)
        plan, current, level = plan.add(stage), stage.output, level + 1
    return plan, current


def coordinated_node(A: Any, k: int, seed: int) -> tuple[Lazy, RecordLayout]:
    """The reduced record of a coordinated sketch of A, lazily (one pass over A)."""
    m = as_matrix(A)
    layout = record_layout(m, int(k))
    params = {"k": int(k), "seed": int(seed), "capacity": layout.capacity}
    rows, n = m.node.chunks[0], m.shape[1]
    # Ranks and hashes of the panel, the sampled rows (dense for a dense panel), a record.
    extra = 8 * (3 * rows + layout.slots * (n + 3) + layout.length)
    stage = make_stage("coordinated/partial", CoordinatedPartial(layout, int(seed)), [m.input],
                       row_panel_tasks([m], out_ndim=2), shape=(m.grid[0], layout.length),
                       chunks=(1, layout.length), dtype="float64", params=params,
                       extra_memory=extra, codec=_RECORD_CODEC, keeps_sparse=True)
    plan, out = _merge_levels(m.plan.add(stage), stage.output, layout, params)
    return Lazy(plan, out, "small", label="coordinated"), layout


@dataclass(frozen=True, eq=False)
class CoordinatedSketch:
    """A coordinated sample of the rows of a matrix: what :func:`sketch_for_product`
    computes with ``kind="coordinated"``.

    Attributes
    ----------
    k : int
        Sample size asked for (at most k rows are kept).
    seed : int or None
        The hash seed (None for a sketch converted from the former dense layout).
    threshold : float
        τ, the (k + 1)-th smallest rank; inf when at most k rows were nonzero (every
        nonzero row is then kept with probability one).
    rows : ndarray of int64, shape (c,)
        Row ids of the kept rows, c ≤ k, in rank order.
    values : scipy.sparse.csr_matrix, shape (c, n)
        The kept rows (float64, nonzeros only).
    """

    k: int
    seed: int | None
    threshold: float
    rows: np.ndarray
    values: sp.csr_matrix

    @property
    def ncols(self) -> int:
        return int(self.values.shape[1])

    @property
    def nnz(self) -> int:
        """Sampled nonzeros."""
        return int(self.values.nnz)

    @property
    def size(self) -> int:
        """Numbers stored: row ids, row offsets, column indices and values, and τ."""
        return len(self.rows) + len(self.values.indptr) + 2 * self.nnz + 1

    @classmethod
    def from_record(cls, layout: RecordLayout, rec: np.ndarray, seed: int) -> CoordinatedSketch:
        """The sketch held by a reduced record (the (k + 1)-th row only gives τ)."""
        ranks, rows, values = layout.decode(rec)
        k = layout.k
        tau = float(ranks[k]) if len(ranks) > k else float("inf")
        return cls(k=k, seed=seed, threshold=tau, rows=rows[:k], values=values[:k])

    @classmethod
    def from_dense(cls, sample: np.ndarray, k: int | None = None) -> CoordinatedSketch:
        """Convert a sketch in the former dense layout ((k + 1) × (n + 2): rank, row id,
        row values) so that sketches stored before still combine."""
        if sample.ndim != 2 or sample.shape[1] < 2:
            raise InputValueError(f"a dense coordinated sample is (k + 1) × (n + 2); got "
                                  f"shape {sample.shape}")
        k = sample.shape[0] - 1 if k is None else int(k)
        kept = sample[:k][np.isfinite(sample[:k, 0])]
        tau = float(sample[k, 0]) if sample.shape[0] > k else float("inf")
        values = sp.csr_matrix(kept[:, 2:])
        values.eliminate_zeros()
        return cls(k=k, seed=None, threshold=tau, rows=kept[:, 1].astype(np.int64),
                   values=values)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Store the sketch in zarr: row ids and CSR components as 1-D arrays whose
        chunks carry crc32c, and a group ``zarr.json`` (k, seed, τ, n) written last.

        Raises
        ------
        InputValueError
            If ``path`` holds something and ``overwrite`` is False.
        """
        store = store_for(path)
        if store.exists(METADATA_KEY) or store.list(""):
            if not overwrite:
                raise InputValueError(f"{store.url} exists; pass overwrite=True to replace it")
            store.delete_prefix("")
        v = self.values
        parts = {"rows": self.rows.astype(np.int64), "indptr": v.indptr.astype(np.int64),
                 "indices": v.indices.astype(np.int32 if self.ncols < 2**31 else np.int64),
                 "data": v.data.astype(np.float64)}
        try:
            for name, arr in parts.items():
                child = store.child(name)
                meta = ArrayMeta(url=child.url, shape=(arr.size,), chunks=(max(arr.size, 1),),
                                 dtype=arr.dtype.name, codec=ChunkCodec())
                if arr.size:
                    write_block(child, meta, (0,), arr)
                write_meta(child, meta)
            tau = None if np.isinf(self.threshold) else float(self.threshold)
            doc = {ATTRS_NAMESPACE: {"format": _FORMAT, "format_version": _FORMAT_VERSION,
                                     "k": self.k, "seed": self.seed, "threshold": tau,
                                     "ncols": self.ncols, "count": len(self.rows),
                                     "nnz": self.nnz}}
            group = {"zarr_format": 3, "node_type": "group", "attributes": doc}
            store.put(METADATA_KEY, json.dumps(group, indent=1, sort_keys=True).encode())
        except BaseException:
            store.delete_prefix("")
            raise


def _read_part(store: Any, name: str, length: int) -> np.ndarray:
    child = store.child(name)
    meta = read_meta(child)
    if meta is None or meta.shape != (length,):
        raise MetadataError(child.url, "shape", f"expected a 1-D array of {length} entries")
    if length == 0:
        return np.zeros(0, dtype=meta.np_dtype)
    return read_block(child, meta, (0,))


def load_coordinated_sketch(path: str | os.PathLike[str]) -> CoordinatedSketch:
    """Read a sketch written by :meth:`CoordinatedSketch.save`, verifying every checksum.

    Raises
    ------
    MetadataError
        If ``path`` holds no coordinated sketch or its layout is inconsistent.
    CorruptChunkError
        If a stored component fails its crc32c.
    """
    store = store_for(path, read_only=True)
    raw = store.get(METADATA_KEY)
    if raw is None:
        raise MetadataError(store.url, "zarr.json", "absent: no coordinated sketch here")
    attrs = parse_metadata_json(raw, store.url).get("attributes", {})
    ns = attrs.get(ATTRS_NAMESPACE, {}) if isinstance(attrs, dict) else {}
    if not isinstance(ns, dict) or ns.get("format") != _FORMAT:
        raise MetadataError(store.url, "attributes.blocklin.format",
                            f"expected {_FORMAT!r}; got {ns.get('format') if isinstance(ns, dict) else ns!r}")
    try:
        k, count, nnz, ncols = (int(ns[f]) for f in ("k", "count", "nnz", "ncols"))
        seed = None if ns.get("seed") is None else int(ns["seed"])
        tau = float("inf") if ns.get("threshold") is None else float(ns["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MetadataError(store.url, "attributes.blocklin", f"malformed: {exc}") from exc
    if not 0 <= count <= k or nnz < 0 or ncols < 1:
        raise MetadataError(store.url, "attributes.blocklin",
                            f"inconsistent: k={k}, count={count}, nnz={nnz}, ncols={ncols}")
    rows = _read_part(store, "rows", count)
    indptr = _read_part(store, "indptr", count + 1)
    indices = _read_part(store, "indices", nnz)
    data = _read_part(store, "data", nnz)
    if int(indptr[-1]) != nnz or (np.diff(indptr) < 0).any() or \
            (nnz and (indices.min() < 0 or indices.max() >= ncols)):
        raise MetadataError(store.url, "indptr", "CSR components disagree")
    values = sp.csr_matrix((data, indices, indptr), shape=(count, ncols))
    return CoordinatedSketch(k=k, seed=seed, threshold=tau, rows=rows.astype(np.int64),
                             values=values)


def coordinated_estimate(sa: CoordinatedSketch, sb: CoordinatedSketch) -> tuple[np.ndarray, float]:
    """AᵀB from two coordinated sketches, and the Horvitz–Thompson error estimate.

    Raises
    ------
    ShapeMismatchError
        If the sketches were made with different k.
    InputValueError
        If they were made with different seeds (their samples are not coordinated).
    """
    if sa.k != sb.k:
        raise ShapeMismatchError(f"sketches of A and B must have the same size; got k={sa.k} "
                                 f"and k={sb.k}")
    if sa.seed is not None and sb.seed is not None and sa.seed != sb.seed:
        raise InputValueError(f"coordinated sketches combine only with the same seed; got "
                              f"{sa.seed} and {sb.seed}")
    _, ia, ib = np.intersect1d(sa.rows, sb.rows, assume_unique=True, return_indices=True)
    a, b = sa.values[ia], sb.values[ib]
    wa, wb = _row_sqnorms(a), _row_sqnorms(b)
    with np.errstate(invalid="ignore"):  # inf threshold times a weight: probability one
        p = np.minimum(1.0, np.minimum(
            np.nan_to_num(wa * sa.threshold, nan=np.inf, posinf=np.inf),
            np.nan_to_num(wb * sb.threshold, nan=np.inf, posinf=np.inf)))
    if not len(p):
        return np.zeros((sa.ncols, sb.ncols)), 0.0
    scaled = sp.csr_matrix(sp.diags(1.0 / p) @ a)
    est = np.asarray((scaled.T @ b).toarray(), dtype=np.float64)
    # Horvitz–Thompson variance estimate: rows are kept independently given τ.
    var = float(np.sum((1.0 - p) / p**2 * wa * wb))
    return est, float(np.sqrt(max(var, 0.0)))
