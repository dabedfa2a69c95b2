"""Approximate AᵀB from independent sketches of A and B that share a seed.

Two families:

* **Linear sketches** (``gaussian``, ``rademacher``, ``sparse_sign``, ``countsketch``,
  ``srht``, ``fjlt``): SA and SB with the same S (same seed), estimate (SA)ᵀ(SB). Its error is
  ≈ ‖A‖_F‖B‖_F/√k whatever the sparsity of A and B.
* **Coordinated sampling** (``coordinated``): priority sampling of rows with a hash
  h(i) shared through the seed (Daliri, Freire, Musco, Santos, Zhang, "Sampling
  methods for inner product sketching", VLDB 2024). A keeps the k rows of smallest
  rank h(i)/‖aᵢ‖², B likewise with its own norms; because h is shared, rows that
  matter to both tend to be kept by both. The estimate sums aᵢbᵢᵀ/pᵢ over rows kept
  by both, pᵢ = min(1, ‖aᵢ‖²τ_A, ‖bᵢ‖²τ_B) with τ the (k+1)-th smallest rank. Rows
  where only one side is nonzero cost nothing, so for sparse A and B (s rows shared)
  the sketch needs O(s/ε²) rows instead of O(d/ε²).
* **Multilevel Monte Carlo** (``mlmc``): a Haar hierarchy of row cells, the coarse
  cell sums kept exactly and the level corrections sampled (:mod:`blocklin.ops._mlmc`);
  far more accurate than the linear kinds when neighbouring rows are alike (rows
  ordered in time or space), less when rows come in random order.

Each sketch is one pass over its matrix and may be computed on its own (another
store, another day): :func:`sketch_for_product` and :func:`estimate_product`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from blocklin.errors import ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops._coordinated import (
    CoordinatedSketch,
    RecordLayout,
    coordinated_estimate,
    coordinated_node,
    load_coordinated_sketch,
)
from blocklin.ops._mlmc import mlmc_estimate, mlmc_matmul, mlmc_sketch
from blocklin.ops._random import SketchKind
from blocklin.ops.inputs import as_matrix
from blocklin.ops.sketch import left_sketch_node, parse_sketch_args
from blocklin.plan.graph import StageInput, Task, TaskContext, make_stage
from blocklin.types import parse_option

__all__ = ["PRODUCT_KINDS", "CoordinatedSketch", "ProductKind", "SketchedProduct",
           "estimate_product", "load_coordinated_sketch", "sketch_for_product",
           "sketched_matmul"]

#: The linear sketch kinds (:data:`blocklin.ops._random.SketchKind`) and coordinated sampling.
ProductKind = Literal[SketchKind, "coordinated", "mlmc"]
PRODUCT_KINDS: tuple[ProductKind, ...] = get_args(ProductKind)


@dataclass(frozen=True)
class SketchedProduct:
    """An estimate of AᵀB and an a-posteriori estimate of its Frobenius error."""

    estimate: np.ndarray
    error: float
    kind: str
    k: int


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


def estimate_product(sa: np.ndarray | CoordinatedSketch, sb: np.ndarray | CoordinatedSketch,
                     kind: ProductKind = "gaussian", k: int | None = None) -> SketchedProduct:
    """Combine two sketches (from :func:`sketch_for_product`, same seed) into AᵀB ≈ estimate.

    Parameters
    ----------
    sa, sb : ndarray or CoordinatedSketch
        Sketches of A and B: SA and SB (k × n_A, k × n_B) for linear kinds;
        :class:`CoordinatedSketch` objects for ``coordinated`` (a sample in the
        former dense (k + 1) × (n + 2) layout is converted).
    kind : str
        The kind both were made with (inferred as ``coordinated`` for
        :class:`CoordinatedSketch` inputs).
    k : int, optional
        Sample size of a dense-layout coordinated sample (default: its rows − 1).

    Raises
    ------
    ShapeMismatchError
        If the sketches have different sizes.
    InputValueError
        For coordinated sketches made with different seeds.
    """
    kind = parse_option("kind", kind, PRODUCT_KINDS)
    if kind == "mlmc" and isinstance(sa, np.ndarray) and isinstance(sb, np.ndarray):
        # Tagged sketches (mlmc_sketch): each row carries its level and sample count.
        est, err = mlmc_estimate(sa, sb)
        return SketchedProduct(estimate=est, error=err, kind="mlmc", k=sa.shape[0])
    if kind == "coordinated" or not isinstance(sa, np.ndarray) or not isinstance(sb, np.ndarray):
        ca = sa if isinstance(sa, CoordinatedSketch) else CoordinatedSketch.from_dense(sa, k)
        cb = sb if isinstance(sb, CoordinatedSketch) else CoordinatedSketch.from_dense(sb, k)
        est, err = coordinated_estimate(ca, cb)
        return SketchedProduct(estimate=est, error=err, kind="coordinated", k=ca.k)
    if sa.shape[0] != sb.shape[0]:
        raise ShapeMismatchError(f"sketches of A and B must have the same size; got "
                                 f"{sa.shape[0]} and {sb.shape[0]} rows")
    est, err = _linear_estimate(sa, sb)
    return SketchedProduct(estimate=est, error=err, kind=kind, k=sa.shape[0])


def sketch_for_product(A: Any, k: int, kind: ProductKind = "gaussian", seed: int = 0, *,
                       s: int = 8) -> Lazy:
    """The sketch of one factor of AᵀB, computable on its own (one pass over A).

    Linear kinds compute to SA (k × n); ``coordinated`` to a :class:`CoordinatedSketch`
    (the kept rows' ids and nonzeros, and the threshold: its size follows the sampled
    nonzeros, not k × n), which ``save`` stores in zarr and
    :func:`load_coordinated_sketch` reads back. Combine two of them, made with the same
    seed (on any store, at any time), with :func:`estimate_product`.
    """
    kind = parse_option("kind", kind, PRODUCT_KINDS)
    if kind == "mlmc":  # rows tagged with level and sample count, then SA's values
        return mlmc_sketch(A, k, seed)
    if kind == "coordinated":
        parse_sketch_args(k, "gaussian", seed, 1, as_matrix(A))  # validates k, seed, dtype
        node, layout = coordinated_node(A, k, seed)
        return Lazy(node.plan, node.output, "small",
                    lambda p: CoordinatedSketch.from_record(layout, p[0], int(seed)),
                    label="coordinated")
    lazy = left_sketch_node(A, k, kind, seed, s)
    return Lazy(lazy.plan, lazy.output, "small", lambda p: p[0], label=lazy.label)


@dataclass(frozen=True)
class CombineSketches:
    """Estimate and error from the two reduced sketches: an (n_A + 1) × n_B array."""

    kind: ProductKind
    k: int
    #: Record layouts of A's and B's coordinated samples (None for linear kinds).
    records: tuple[RecordLayout, RecordLayout] | None = None
    seed: int = 0

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        if self.records is None:
            r = estimate_product(blocks[0][0], blocks[1][0], self.kind, self.k)
        else:
            sa, sb = (CoordinatedSketch.from_record(lay, b[0], self.seed)
                      for lay, b in zip(self.records, blocks, strict=True))
            r = estimate_product(sa, sb, self.kind)
        out = np.zeros((1, r.estimate.shape[0] + 1, r.estimate.shape[1]))
        out[0, :-1] = r.estimate
        out[0, -1, 0] = r.error
        return out


def _factor_sketch(M: Any, k: int, kind: ProductKind, seed: int,
                   s: int) -> tuple[Lazy, RecordLayout | None]:
    """One factor's sketch node, and its record layout for coordinated sampling."""
    if kind != "coordinated":
        return sketch_for_product(M, k, kind, seed, s=s), None
    parse_sketch_args(k, "gaussian", seed, 1, as_matrix(M))
    return coordinated_node(M, k, seed)


def sketched_matmul(A: Any, B: Any, k: int, kind: ProductKind = "gaussian", seed: int = 0,
                    *, s: int = 8) -> Lazy:
    """Approximate AᵀB for A (m × n_A) and B (m × n_B) that share rows, lazily.

    Parameters
    ----------
    A, B : BlockMatrix, path, lazy matrix or view, dense or sparse
        Row-aligned matrices; their chunkings may differ (each is sketched alone).
    k : int
        Sketch size (rows kept). Error ≈ ‖A‖_F‖B‖_F/√k for linear kinds.
    kind : {"gaussian", "rademacher", "sparse_sign", "countsketch", "srht", "fjlt", \
"coordinated", "mlmc"}
        Linear sketch kind (see :func:`blocklin.ops.sketch`), coordinated priority
        sampling, the better choice for sparse A and B, or the multilevel Monte Carlo
        estimator, the better choice for rows ordered so that neighbours are alike
        (its sketch has at most k rows: up to k/2 coarse cell sums, the rest samples,
        at least one per level, so k/2 must reach about log₂(2m/k)). Its variance is
        :func:`blocklin.ops._mlmc.mlmc_variance`.
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
        variance for coordinated sampling and, summed over the sampled levels, for
        ``mlmc``).

    Raises
    ------
    ShapeMismatchError
        If A and B have different numbers of rows.
    InputValueError
        For an unknown kind, k < 1 or a negative seed.

    Notes
    -----
    One pass over A and one over B (shared with other operators of the same
    :func:`blocklin.compute`). Per-task memory: a row panel plus the sketch (k × n;
    for coordinated, a record of the k + 1 sampled rows' nonzeros, at most
    (k + 1) × n, and at most nnz(A) for CSR A). The combination runs in one small task.

    References
    ----------
    Daliri, Freire, Musco, Santos, Zhang, "Sampling methods for inner product
    sketching", VLDB 2024. Woodruff, "Sketching as a Tool for Numerical Linear
    Algebra", 2014, §2.2 (approximate matrix product). Giles, "Multilevel Monte Carlo
    path simulation", Operations Research 2008; Wu, Polydorides, "A multilevel Monte
    Carlo estimator for matrix multiplication", SIAM J. Sci. Comput. 2020.

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
    if kind == "mlmc":
        lazy, _ = mlmc_matmul(A, B, k, seed)
        return Lazy(lazy.plan, lazy.output, "small",
                    lambda p: SketchedProduct(estimate=p[0, :-1].copy(),
                                              error=float(p[0, -1, 0]), kind="mlmc", k=int(k)),
                    label="sketched_matmul[mlmc]")
    la, ra = _factor_sketch(A, k, kind, seed, s)
    lb, rb = _factor_sketch(B, k, kind, seed, s)
    na, nb = a.shape[1], b.shape[1]
    records = (ra, rb) if ra is not None and rb is not None else None
    task = Task(out=(0, 0, 0), reads=((0, (0,) * len(la.shape)), (1, (0,) * len(lb.shape))))
    stage = make_stage("sketched_matmul/combine",
                       CombineSketches(kind, int(k), records, int(seed)),
                       [StageInput(la.output), StageInput(lb.output)], [task],
                       shape=(1, na + 1, nb), chunks=(1, na + 1, nb), dtype="float64",
                       params={"kind": kind, "k": int(k), "seed": int(seed)},
                       extra_memory=8 * (3 * na * nb + 2 * (k + 1) * (na + nb + 4)
                                         + 2 * sum(r.length for r in records or ())))
    plan = la.plan.merge(lb.plan).add(stage)

    def present(p: np.ndarray) -> SketchedProduct:
        return SketchedProduct(estimate=p[0, :-1].copy(), error=float(p[0, -1, 0]), kind=kind,
                               k=int(k))

    return Lazy(plan, stage.output, "small", present, label=f"sketched_matmul[{kind}]")
