"""Multilevel Monte Carlo (MLMC) estimate of AᵀB over a Haar hierarchy of row cells.

The hierarchy
-------------
Rows are grouped into dyadic *cells* of consecutive rows (the matrix is padded with zero
rows to a whole number of coarse cells; padding changes nothing). Level 0 has C₀ coarse
cells of h = 2^L rows; each level halves the cells, down to single rows at level L. The
level-ℓ approximation of AᵀB treats each cell as one row holding its mean,

    P_ℓ = Σ_cells (1/|c|)·(Σ_{i∈c} aᵢ)(Σ_{i∈c} bᵢ)ᵀ,

cheap and biased at coarse levels (it drops the covariance inside each cell) and exact
at level L. The telescoping sum AᵀB = P_0 + Σ_{ℓ=1}^{L} (P_ℓ − P_{ℓ−1}) has corrections
that are sums of rank-one Haar details: a parent cell q of p rows split into halves
with sums s₁, s₂ (of A) and t₁, t₂ (of B) contributes D_q = d_q^A (d_q^B)ᵀ with
d_q^A = (s₁ − s₂)/√p, d_q^B = (t₁ − t₂)/√p.

The estimator
-------------
P_0 is computed exactly (C₀ ≤ k/2 rows of the sketch). Each correction ℓ = 1…L is
estimated from N_ℓ parent cells drawn uniformly with replacement from its M_ℓ = C₀·2^{ℓ−1}
(the draws are shared through the seed, so A and B are sketched apart), scaled by M_ℓ/N_ℓ;
a level whose share of the budget covers all its cells is taken exactly. Everything is
a linear sketch S (≤ k rows, very sparse: one coarse entry per row plus the sampled
cells' entries), so the estimate is (SA)ᵀ(SB), unbiased, with

    E‖estimate − AᵀB‖²_F = Σ_{sampled ℓ} (1/N_ℓ)·(M_ℓ·Σ_q ‖d_q^A‖²‖d_q^B‖² − ‖P_ℓ − P_{ℓ−1}‖²_F)

(:func:`mlmc_variance`). The budget left after the coarse level is split equally over
the levels (Giles' allocation for corrections of equal cost when V_ℓ is unknown
before the pass). The a-posteriori error is the sum over sampled levels of the
Horvitz–Thompson sample variance of their N_ℓ terms.

When it pays off
----------------
The corrections' variance decays with ℓ when neighbouring rows are alike (rows
ordered in time or space, sorted keys): the coarse levels then carry most of AᵀB
exactly and the fine corrections are small. With rows in random order every detail
carries as much energy as a row, and the linear kinds (``gaussian``...) are more
accurate at the same k. ``benchmarks`` and ``tests/ops/test_mlmc.py`` measure both.

References
----------
Giles, "Multilevel Monte Carlo path simulation", Operations Research 2008 (the
telescoping estimator and the allocation); Wu, Polydorides, "A multilevel Monte Carlo
estimator for matrix multiplication", SIAM J. Sci. Comput. 2020 (arXiv:1904.00429),
MLMC for matrix products over coarse-to-fine approximations of the data. The Haar cell
hierarchy here is blocklin's own construction for one fixed product; the paper's text
was not available when it was written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp

from blocklin.errors import InputValueError, ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops._random import granule_rng
from blocklin.ops.inputs import as_matrix, hstack_panel, row_panel_tasks
from blocklin.ops.sketch import left_apply, parse_sketch_args
from blocklin.plan.graph import StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce

__all__ = ["MLMCLayout", "mlmc_estimate", "mlmc_layout", "mlmc_matmul", "mlmc_rows",
           "mlmc_sketch", "mlmc_variance"]

#: Columns of a tagged sketch row: level, samples of that level (0: taken exactly), values.
_LEVEL, _COUNT, _VALUES = 0, 1, 2


@dataclass(frozen=True)
class MLMCLayout:
    """Where each level sits in the sketch, fixed by (m, k) alone."""

    m: int
    levels: int
    coarse: int
    populations: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def cell(self) -> int:
        """Rows per coarse cell, 2^L."""
        return 1 << self.levels

    @property
    def rows(self) -> int:
        """Rows of the sketch: coarse cells plus every level's samples (≤ k)."""
        return self.coarse + sum(self.counts)

    def exact(self, level: int) -> bool:
        """Whether correction ``level`` (1…L) is taken whole rather than sampled."""
        return self.counts[level - 1] == self.populations[level - 1]

    def offset(self, level: int) -> int:
        """First sketch row of ``level`` (0 is the coarse level)."""
        return self.coarse + sum(self.counts[:max(level - 1, 0)]) if level else 0

    def tags(self) -> np.ndarray:
        """Per sketch row: its level and its level's sample count (0 when exact)."""
        out = np.zeros((self.rows, 2))
        for lv in range(1, self.levels + 1):
            lo, n = self.offset(lv), self.counts[lv - 1]
            out[lo:lo + n, _LEVEL] = lv
            out[lo:lo + n, _COUNT] = 0 if self.exact(lv) else n
        return out


def mlmc_layout(m: int, k: int) -> MLMCLayout:
    """The level layout for m rows and a budget of k sketch rows.

    L is the fewest levels whose coarse cells number at most k/2; the rest of the budget
    goes to the corrections, an equal share each, from the coarsest (a level whose share
    covers all its cells is taken exactly and passes the rest on).

    Raises
    ------
    InputValueError
        If k leaves fewer than one sample per level.
    """
    half = max(k // 2, 1)
    levels = max(1, math.ceil(math.log2(m / half))) if m > half else 1
    while -(-m // (1 << levels)) > half:  # float log2 rounding
        levels += 1
    coarse = -(-m // (1 << levels))
    left = k - coarse
    if left < levels:
        raise InputValueError(
            f"kind='mlmc' needs k >= {coarse + levels} for {m} rows ({coarse} coarse cells "
            f"and one sample for each of {levels} levels); got k={k}")
    pops = tuple(coarse << (lv - 1) for lv in range(1, levels + 1))
    counts = []
    for lv in range(levels):
        share = left // (levels - lv)
        n = min(share, pops[lv])
        counts.append(n)
        left -= n
    return MLMCLayout(m=m, levels=levels, coarse=coarse, populations=pops, counts=tuple(counts))


@lru_cache(maxsize=64)
def _samples(seed: int, level: int, population: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Level ``level``'s sampled parent cells, shared through the seed: the draws sorted,
    and each sorted draw's sketch column within the level."""
    q = granule_rng(seed, "mlmc", 0, level, tag=1).integers(0, population, size=count)
    order = np.argsort(q, kind="stable")
    return q[order], order


def mlmc_rows(layout: MLMCLayout, seed: int, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of Sᵀ (shape ``(stop − start, layout.rows)``), CSR.

    Regenerated in each task from (layout, seed): nothing depends on chunking.
    """
    i = np.arange(start, stop, dtype=np.int64)
    local = i - start
    rows, cols, vals = [local], [i >> layout.levels], [np.full(i.size, layout.cell ** -0.5)]
    for lv in range(1, layout.levels + 1):
        p = layout.cell >> (lv - 1)
        parent = i // p
        sign = np.where(i % p < p // 2, 1.0, -1.0) / math.sqrt(p)
        off = layout.offset(lv)
        if layout.exact(lv):
            rows.append(local)
            cols.append(off + parent)
            vals.append(sign)
            continue
        pop, n = layout.populations[lv - 1], layout.counts[lv - 1]
        drawn, column = _samples(seed, lv, pop, n)
        lo = np.searchsorted(drawn, parent, "left")
        cnt = np.searchsorted(drawn, parent, "right") - lo
        total = int(cnt.sum())
        if not total:
            continue
        # Row r repeats once per draw of its parent; pos walks lo[r] … lo[r] + cnt[r] − 1.
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        pos = np.repeat(lo, cnt) + (np.arange(total) - first)
        rows.append(np.repeat(local, cnt))
        cols.append(off + column[pos])
        vals.append(np.repeat(sign, cnt) * math.sqrt(pop / n))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(stop - start, layout.rows))


@dataclass(frozen=True)
class MLMCPartial:
    """S[:, rows]·Aᵢ for one row panel (S regenerated, never stored)."""

    layout: MLMCLayout
    seed: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        start, stop = ctx.row_range(0, ctx.task.reads[0][1])
        return left_apply(mlmc_rows(self.layout, self.seed, start, stop),
                          hstack_panel(blocks))[None, ...]


def _parse(A: Any, k: Any, seed: Any) -> tuple[Any, MLMCLayout]:
    m = as_matrix(A)
    parse_sketch_args(k, "gaussian", seed, 1, m)  # validates k, seed and the dtype
    return m, mlmc_layout(m.shape[0], int(k))


def _node(A: Any, k: int, seed: int) -> tuple[Lazy, MLMCLayout]:
    """SA as a lazy ``(1, rows, n)`` array, and its layout."""
    m, layout = _parse(A, k, seed)
    n, r = m.shape[1], m.node.chunks[0]
    params = {"k": int(k), "seed": int(seed), "levels": layout.levels}
    nnz = r * (2 + layout.levels)  # Sᵀ entries of a panel: a coarse one, one per level, draws
    stage = make_stage("mlmc/partial", MLMCPartial(layout, int(seed)), [m.input],
                       row_panel_tasks([m]), shape=(m.grid[0], layout.rows, n),
                       chunks=(1, layout.rows, n), dtype="float64", params=params,
                       extra_memory=8 * (3 * nnz + 2 * layout.rows * n), keeps_sparse=True)
    plan, out = tree_reduce(m.plan.add(stage), stage.output, SumParts(), op="mlmc",
                            params=params)
    return Lazy(plan, out, "small", label="mlmc"), layout


def mlmc_sketch(A: Any, k: int, seed: int = 0) -> Lazy:
    """One factor's MLMC sketch, computable on its own: a (rows, 2 + n) array, each row
    tagged with its level and that level's sample count (0 when taken exactly)."""
    lazy, layout = _node(A, k, seed)
    tags = layout.tags()
    return Lazy(lazy.plan, lazy.output, "small",
                lambda p: np.concatenate([tags, p[0]], axis=1), label="mlmc")


def _estimate(sa: np.ndarray, sb: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, float]:
    est = sa.T @ sb
    var = 0.0
    for lv in np.unique(tags[tags[:, _COUNT] > 0, _LEVEL]):
        sel = tags[:, _LEVEL] == lv
        ra, rb = sa[sel], sb[sel]
        n = int(sel.sum())
        if n < 2:
            return est, float("nan")
        # Terms X_t = N·r_tᴬ(r_tᴮ)ᵀ with mean T = Σ_t r_tᴬ(r_tᴮ)ᵀ (the level's correction).
        t = ra.T @ rb
        sq = n * n * float(np.sum(np.einsum("ij,ij->i", ra, ra) * np.einsum("ij,ij->i", rb, rb)))
        var += max(sq - n * float(np.sum(t * t)), 0.0) / (n * (n - 1))
    return est, float(np.sqrt(var))


def mlmc_estimate(sa: np.ndarray, sb: np.ndarray) -> tuple[np.ndarray, float]:
    """AᵀB and its a-posteriori error from two tagged sketches (:func:`mlmc_sketch`).

    Raises
    ------
    ShapeMismatchError
        If the sketches were made for different row counts or budgets.
    """
    if sa.shape[0] != sb.shape[0] or not np.array_equal(sa[:, :_VALUES], sb[:, :_VALUES]):
        raise ShapeMismatchError("MLMC sketches of A and B must share their layout (same rows "
                                 f"and k); got {sa.shape[0]} and {sb.shape[0]} sketch rows")
    return _estimate(sa[:, _VALUES:], sb[:, _VALUES:], sa[:, :_VALUES])


@dataclass(frozen=True)
class MLMCCombine:
    """Estimate and error from the two reduced sketches: an (n_A + 1) × n_B array."""

    layout: MLMCLayout

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        est, err = _estimate(blocks[0][0], blocks[1][0], self.layout.tags())
        out = np.zeros((1, est.shape[0] + 1, est.shape[1]))
        out[0, :-1] = est
        out[0, -1, 0] = err
        return out


def mlmc_matmul(A: Any, B: Any, k: int, seed: int = 0) -> tuple[Lazy, int]:
    """The plan of ``sketched_matmul(A, B, k, kind="mlmc")``: both sketches and their
    combination; computes to an (n_A + 1, n_B) array (the estimate, then the error)."""
    la, layout = _node(A, k, seed)
    lb, _ = _node(B, k, seed)
    na, nb = la.shape[-1], lb.shape[-1]
    task = Task(out=(0, 0, 0), reads=((0, (0, 0, 0)), (1, (0, 0, 0))))
    stage = make_stage("sketched_matmul/mlmc", MLMCCombine(layout),
                       [StageInput(la.output), StageInput(lb.output)], [task],
                       shape=(1, na + 1, nb), chunks=(1, na + 1, nb), dtype="float64",
                       params={"k": int(k), "seed": int(seed)},
                       extra_memory=8 * (3 * na * nb + 2 * layout.rows * (na + nb)))
    return Lazy(la.plan.merge(lb.plan).add(stage), stage.output, "small", lambda p: p[0],
                label="sketched_matmul[mlmc]"), layout.rows


def _details(x: np.ndarray, layout: MLMCLayout, level: int) -> np.ndarray:
    """Haar details d_q (rows) of every parent cell of ``level``, for in-memory x."""
    pad = np.zeros((layout.coarse * layout.cell, x.shape[1]))
    pad[: x.shape[0]] = x
    p = layout.cell >> (level - 1)
    cells = pad.reshape(-1, p, x.shape[1])
    out: np.ndarray = (cells[:, : p // 2].sum(axis=1) - cells[:, p // 2:].sum(axis=1)) / np.sqrt(p)
    return out


def mlmc_variance(a: Any, b: Any, k: int) -> float:
    """E‖estimate − AᵀB‖²_F of ``kind="mlmc"`` for in-memory A, B and budget k (the
    formula in the module docstring), for checking and planning."""
    a = np.asarray(a.toarray() if sp.issparse(a) else a, dtype=np.float64)
    b = np.asarray(b.toarray() if sp.issparse(b) else b, dtype=np.float64)
    layout = mlmc_layout(a.shape[0], k)
    var = 0.0
    for lv in range(1, layout.levels + 1):
        if layout.exact(lv):
            continue
        da, db = _details(a, layout, lv), _details(b, layout, lv)
        pop, n = layout.populations[lv - 1], layout.counts[lv - 1]
        corr = da.T @ db
        terms = np.einsum("ij,ij->i", da, da) * np.einsum("ij,ij->i", db, db)
        var += (pop * float(terms.sum()) - float(np.sum(corr * corr))) / n
    return var
