"""Approximate AᵀB from independent sketches of A and B that share a seed.

Two families:

* **Linear sketches** (``gaussian``, ``rademacher``, ``sparse_sign``, ``countsketch``,
  ``srht``): SA and SB with the same S (same seed), estimate (SA)ᵀ(SB). Its error is
  ≈ ‖A‖_F‖B‖_F/√k whatever the sparsity of A and B.
* **Coordinated sampling** (``coordinated``): priority sampling of rows with a hash
  h(i) shared through the seed (Daliri, Freire, Musco, Santos, Zhang, "Sampling
  methods for inner product sketching", VLDB 2024). A keeps the k rows of smallest
  rank h(i)/‖aᵢ‖², B likewise with its own norms; because h is shared, rows that
  matter to both tend to be kept by both. The estimate sums aᵢbᵢᵀ/pᵢ over rows kept
  by both, pᵢ = min(1, ‖aᵢ‖²τ_A, ‖bᵢ‖²τ_B) with τ the (k+1)-th smallest rank. Rows
  where only one side is nonzero cost nothing, so for sparse A and B (s rows shared)
  the sketch needs O(s/ε²) rows instead of O(d/ε²).

Each sketch is one pass over its matrix and may be computed on its own (another
store, another day): :func:`sketch_for_product` and :func:`estimate_product`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import scipy.sparse as sp

from blocklin.errors import ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops._inputs import as_matrix, hstack_panel, row_panel_tasks
from blocklin.ops._random import SketchKind, uniform_priorities
from blocklin.ops.sketch import left_sketch_node, parse_sketch_args
from blocklin.plan.graph import StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import tree_reduce
from blocklin.types import parse_option

__all__ = ["PRODUCT_KINDS", "ProductKind", "SketchedProduct", "estimate_product",
           "sketch_for_product", "sketched_matmul"]

#: The linear sketch kinds (:data:`blocklin.ops._random.SketchKind`) and coordinated sampling.
ProductKind = Literal[SketchKind, "coordinated"]
PRODUCT_KINDS: tuple[ProductKind, ...] = get_args(ProductKind)

# Columns of a coordinated sample: rank h(i)/‖aᵢ‖², row index i, then the row aᵢ.
_RANK, _ROW, _VALUES = 0, 1, 2


@dataclass(frozen=True)
class SketchedProduct:
    """An estimate of AᵀB and an a-posteriori estimate of its Frobenius error."""

    estimate: np.ndarray
    error: float
    kind: str
    k: int


# -- coordinated sampling -----------------------------------------------------------------
def _row_sqnorms(a: Any) -> np.ndarray:
    if sp.issparse(a):
        sq = a.multiply(a) if a.dtype.kind == "f" else a.astype(np.float64).multiply(a)
        return np.asarray(sq.sum(axis=1), dtype=np.float64).ravel()
    a = np.asarray(a, dtype=np.float64)
    out: np.ndarray = np.einsum("ij,ij->i", a, a)
    return out


def _take_smallest(sample: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` rows of smallest rank, ties broken by row index (deterministic)."""
    order = np.lexsort((sample[:, _ROW], sample[:, _RANK]))[:keep]
    return sample[order]


@dataclass(frozen=True)
class CoordinatedPartial:
    """The k + 1 rows of smallest rank h(i)/‖aᵢ‖² of one row panel."""

    k: int
    seed: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        start, stop = ctx.row_range(0, ctx.task.reads[0][1])
        a = hstack_panel(blocks)
        sq = _row_sqnorms(a)
        with np.errstate(divide="ignore"):
            rank = np.where(sq > 0, uniform_priorities(self.seed, start, stop) / sq, np.inf)
        # A row holding NaN ranks first (as one holding inf does), so it is sampled and
        # its values reach the output, where the task's finite check finds them.
        rank[np.isnan(sq)] = 0.0
        keep = min(self.k + 1, stop - start)
        pick = np.lexsort((np.arange(stop - start), rank))[:keep]
        out = np.full((self.k + 1, a.shape[1] + _VALUES), np.inf)
        out[:, _ROW] = -1.0
        out[:keep, _RANK] = rank[pick]
        out[:keep, _ROW] = start + pick
        rows = a[pick]
        out[:keep, _VALUES:] = rows.toarray() if sp.issparse(rows) else rows
        out[keep:, _VALUES:] = 0.0
        return out[None]

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """Row indices and values; the rank column holds inf for zero rows and padding."""
        return out[..., _ROW:]


@dataclass(frozen=True)
class CoordinatedMerge:
    """Merge samples in index order, keeping the k + 1 smallest ranks."""

    k: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return _take_smallest(np.concatenate([b[0] for b in blocks]), self.k + 1)[None]

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """As :meth:`CoordinatedPartial.finite_part`."""
        return out[..., _ROW:]


def _coordinated_node(A: Any, k: int, seed: int) -> Lazy:
    m = as_matrix(A)
    parse_sketch_args(k, "gaussian", seed, 1, m)  # validates k, seed and dtype
    n = m.shape[1]
    tasks = row_panel_tasks([m])
    params = {"k": int(k), "seed": int(seed)}
    shape = (k + 1, n + _VALUES)
    stage = make_stage("coordinated/partial", CoordinatedPartial(int(k), int(seed)), [m.input],
                       tasks, shape=(m.grid[0], *shape), chunks=(1, *shape), dtype="float64",
                       params=params, extra_memory=8 * (3 * m.node.chunks[0] + 2 * shape[0] * shape[1]))
    plan, out = tree_reduce(m.plan.add(stage), stage.output, CoordinatedMerge(int(k)),
                            op="coordinated", params=params,
                            extra_memory=8 * 9 * shape[0] * shape[1])
    return Lazy(plan, out, "small", lambda p: p[0], label="coordinated")


def _coordinated_estimate(sa: np.ndarray, sb: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    def threshold(s: np.ndarray) -> float:
        return float(s[k, _RANK]) if s.shape[0] > k else np.inf

    ta, tb = threshold(sa), threshold(sb)
    ka, kb = sa[:k][np.isfinite(sa[:k, _RANK])], sb[:k][np.isfinite(sb[:k, _RANK])]
    _, ia, ib = np.intersect1d(ka[:, _ROW], kb[:, _ROW], return_indices=True)
    a, b = ka[ia, _VALUES:], kb[ib, _VALUES:]
    wa, wb = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    with np.errstate(invalid="ignore"):  # inf threshold times a weight: probability one
        p = np.minimum(1.0, np.minimum(np.nan_to_num(wa * ta, nan=np.inf, posinf=np.inf),
                                       np.nan_to_num(wb * tb, nan=np.inf, posinf=np.inf)))
    est = (a / p[:, None]).T @ b
    # Horvitz–Thompson variance estimate: rows are kept independently given τ.
    var = float(np.sum((1.0 - p) / p**2 * wa * wb))
    return est, float(np.sqrt(max(var, 0.0)))


# -- linear sketches ----------------------------------------------------------------------
def _linear_estimate(sa: np.ndarray, sb: np.ndarray) -> tuple[np.ndarray, float]:
    k = sa.shape[0]
    est = sa.T @ sb
    if k < 2:
        return est, float("nan")
    # est = Σ_r Y_r with Y_r = (s_r A)ᵀ(s_r B), treated as k exchangeable terms of mean
    # AᵀB/k: the sample variance of the Y_r estimates E‖est − AᵀB‖²_F (exact in
    # expectation for i.i.d. rows, gaussian and rademacher).
    total = float(np.sum(np.einsum("ij,ij->i", sa, sa) * np.einsum("ij,ij->i", sb, sb)))
    var = k / (k - 1) * (total - float(np.sum(est * est)) / k)
    return est, float(np.sqrt(max(var, 0.0)))


def estimate_product(sa: np.ndarray, sb: np.ndarray, kind: ProductKind = "gaussian",
                     k: int | None = None) -> SketchedProduct:
    """Combine two sketches (from :func:`sketch_for_product`, same seed) into AᵀB ≈ estimate.

    Raises
    ------
    ShapeMismatchError
        If the sketches have different sizes.
    """
    kind = parse_option("kind", kind, PRODUCT_KINDS)
    if sa.shape[0] != sb.shape[0]:
        raise ShapeMismatchError(f"sketches of A and B must have the same size; got "
                                 f"{sa.shape[0]} and {sb.shape[0]} rows")
    if kind == "coordinated":
        size = sa.shape[0] - 1 if k is None else k
        est, err = _coordinated_estimate(sa, sb, size)
    else:
        size = sa.shape[0]
        est, err = _linear_estimate(sa, sb)
    return SketchedProduct(estimate=est, error=err, kind=kind, k=size)


def sketch_for_product(A: Any, k: int, kind: ProductKind = "gaussian", seed: int = 0, *,
                       s: int = 8) -> Lazy:
    """The sketch of one factor of AᵀB, computable on its own (one pass over A).

    Linear kinds compute to SA (k × n); ``coordinated`` to a (k + 1) × (n + 2) sample
    (rank, row index, row values). Combine two of them, made with the same seed, with
    :func:`estimate_product`.
    """
    kind = parse_option("kind", kind, PRODUCT_KINDS)
    if kind == "coordinated":
        return _coordinated_node(A, k, seed)
    lazy = left_sketch_node(A, k, kind, seed, s)
    return Lazy(lazy.plan, lazy.output, "small", lambda p: p[0], label=lazy.label)


@dataclass(frozen=True)
class CombineSketches:
    """Estimate and error from the two reduced sketches: an (n_A + 1) × n_B array."""

    kind: ProductKind
    k: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        r = estimate_product(blocks[0][0], blocks[1][0], self.kind, self.k)
        out = np.zeros((1, r.estimate.shape[0] + 1, r.estimate.shape[1]))
        out[0, :-1] = r.estimate
        out[0, -1, 0] = r.error
        return out


def sketched_matmul(A: Any, B: Any, k: int, kind: ProductKind = "gaussian", seed: int = 0,
                    *, s: int = 8) -> Lazy:
    """Approximate AᵀB for A (m × n_A) and B (m × n_B) that share rows, lazily.

    Parameters
    ----------
    A, B : BlockMatrix, path, lazy matrix or view, dense or sparse
        Row-aligned matrices; their chunkings may differ (each is sketched alone).
    k : int
        Sketch size (rows kept). Error ≈ ‖A‖_F‖B‖_F/√k for linear kinds.
    kind : {"gaussian", "rademacher", "sparse_sign", "countsketch", "srht", "coordinated"}
        Linear sketch kind (see :func:`blocklin.ops.sketch`) or coordinated priority
        sampling, the better choice for sparse A and B.
    seed : int
        Shared seed: A and B must be sketched with the same one.
    s : int
        Nonzeros per column for ``sparse_sign``.

    Returns
    -------
    Lazy
        Computes to a :class:`SketchedProduct`: ``estimate`` (n_A × n_B) and
        ``error``, an a-posteriori estimate of ‖estimate − AᵀB‖_F (the sample
        variance of the k rank-one terms for linear kinds, the Horvitz–Thompson
        variance for coordinated sampling).

    Raises
    ------
    ShapeMismatchError
        If A and B have different numbers of rows.
    InputValueError
        For an unknown kind, k < 1 or a negative seed.

    Notes
    -----
    One pass over A and one over B (shared with other operators of the same
    :func:`blocklin.compute`). Per-task memory: a row panel plus the sketch (k × n,
    or (k + 1) × (n + 2) for coordinated). The combination runs in one small task.

    References
    ----------
    Daliri, Freire, Musco, Santos, Zhang, "Sampling methods for inner product
    sketching", VLDB 2024. Woodruff, "Sketching as a Tool for Numerical Linear
    Algebra", 2014, §2.2 (approximate matrix product).

    Examples
    --------
    >>> r = bl.ops.sketched_matmul(A, B, 500, kind="coordinated", seed=7).compute()
    >>> r.estimate, r.error
    """
    kind = parse_option("kind", kind, PRODUCT_KINDS)
    a, b = as_matrix(A, "A"), as_matrix(B, "B")
    if a.shape[0] != b.shape[0]:
        raise ShapeMismatchError(f"sketched_matmul(A, B) approximates AᵀB and needs A and B "
                                 f"with the same rows; got {a.shape} and {b.shape}")
    la = sketch_for_product(A, k, kind, seed, s=s)
    lb = sketch_for_product(B, k, kind, seed, s=s)
    na, nb = a.shape[1], b.shape[1]
    task = Task(out=(0, 0, 0), reads=((0, (0, 0, 0)), (1, (0, 0, 0))))
    stage = make_stage("sketched_matmul/combine", CombineSketches(kind, int(k)),
                       [StageInput(la.output), StageInput(lb.output)], [task],
                       shape=(1, na + 1, nb), chunks=(1, na + 1, nb), dtype="float64",
                       params={"kind": kind, "k": int(k), "seed": int(seed)},
                       extra_memory=8 * (3 * na * nb + 2 * (k + 1) * (na + nb + 4)))
    plan = la.plan.merge(lb.plan).add(stage)

    def present(p: np.ndarray) -> SketchedProduct:
        return SketchedProduct(estimate=p[0, :-1].copy(), error=float(p[0, -1, 0]), kind=kind,
                               k=int(k))

    return Lazy(plan, stage.output, "small", present, label=f"sketched_matmul[{kind}]")
