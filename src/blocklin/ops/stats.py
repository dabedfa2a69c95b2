"""Column statistics: MLlib's column summary, mergeable in a fixed-order tree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from blocklin.executors.lazy import Lazy
from blocklin.ops._xp import as_dtype, col_sumsq
from blocklin.ops.inputs import as_matrix, hstack_panel, reads_csr, row_panel_tasks
from blocklin.plan.device import is_sparse, namespace, to_host
from blocklin.plan.graph import TaskContext, make_stage
from blocklin.plan.reduce import tree_reduce

__all__ = ["ColumnStats", "column_stats"]

# Rows of the stored summary array.
COUNT, MEAN, M2, MIN, MAX, L1, SUMSQ, NNZ = range(8)
NROWS = 8


@dataclass(frozen=True)
class ColumnStats:
    """Per-column summary (as MLlib's ``Summarizer``): variance is the unbiased one."""

    count: int
    mean: np.ndarray
    variance: np.ndarray
    min: np.ndarray
    max: np.ndarray
    norm_l1: np.ndarray
    norm_l2: np.ndarray
    num_nonzeros: np.ndarray

    @property
    def std(self) -> np.ndarray:
        out: np.ndarray = np.sqrt(self.variance)
        return out

    def merge(self, other: ColumnStats) -> ColumnStats:
        """The summary of both sets of rows (Chan et al.'s pairwise mean/variance update)."""
        na, nb = float(self.count), float(other.count)
        n = na + nb
        delta = other.mean - self.mean
        m2 = (self.variance * max(na - 1, 0) + other.variance * max(nb - 1, 0)
              + delta**2 * (na * nb / n))
        return ColumnStats(
            count=int(n), mean=self.mean + delta * (nb / n),
            variance=m2 / (n - 1) if n > 1 else np.zeros_like(m2),
            min=np.minimum(self.min, other.min), max=np.maximum(self.max, other.max),
            norm_l1=self.norm_l1 + other.norm_l1,
            norm_l2=np.sqrt(self.norm_l2**2 + other.norm_l2**2),
            num_nonzeros=self.num_nonzeros + other.num_nonzeros)

    @classmethod
    def from_array(cls, s: np.ndarray) -> ColumnStats:
        s = s[0] if s.ndim == 3 else s
        n = int(s[COUNT, 0])
        var = s[M2] / (n - 1) if n > 1 else np.zeros_like(s[M2])
        return cls(count=n, mean=s[MEAN].copy(), variance=var, min=s[MIN].copy(),
                   max=s[MAX].copy(), norm_l1=s[L1].copy(), norm_l2=np.sqrt(s[SUMSQ]),
                   num_nonzeros=s[NNZ].astype(np.int64))


class StatsPartial:
    """Summary of one row panel (dense panels on the task's device)."""

    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        panel = hstack_panel(blocks)
        if is_sparse(panel):
            # O(nnz) bincounts on the host: a GPU's scatter-adds (atomics) would make the
            # sums' order, and so their bits, change from run to run.
            return _sparse_summary(to_host(panel))
        x = as_dtype(panel, "float64")
        xp = namespace(x)
        out = xp.empty((1, NROWS, x.shape[1]), dtype=xp.float64)
        mean = xp.mean(x, axis=0)
        out[0, COUNT, :] = x.shape[0]
        out[0, MEAN, :] = mean
        out[0, M2, :] = xp.sum((x - mean) ** 2, axis=0)
        out[0, MIN, :] = xp.min(x, axis=0)
        out[0, MAX, :] = xp.max(x, axis=0)
        out[0, L1, :] = xp.sum(xp.abs(x), axis=0)
        out[0, SUMSQ, :] = col_sumsq(x)
        out[0, NNZ, :] = xp.astype(xp.count_nonzero(x, axis=0), xp.float64)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatsPartial)

    def __hash__(self) -> int:
        return hash(StatsPartial)


def _sparse_summary(x: Any) -> np.ndarray:
    """The summary of a CSR row panel from its stored entries only (never densified)."""
    r, n = x.shape
    cols, vals = x.indices, np.asarray(x.data, dtype=np.float64)
    stored = np.bincount(cols, minlength=n)
    out = np.empty((1, NROWS, n))
    mean = np.bincount(cols, weights=vals, minlength=n) / r
    out[0, COUNT] = r
    out[0, MEAN] = mean
    # Centered squares: stored entries, plus the implicit zeros' (0 - mean)².
    out[0, M2] = np.bincount(cols, weights=(vals - mean[cols]) ** 2, minlength=n) \
        + (r - stored) * mean**2
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(lo, cols, vals)
    np.maximum.at(hi, cols, vals)
    has_zero = stored < r
    out[0, MIN] = np.where(has_zero, np.minimum(lo, 0.0), lo)
    out[0, MAX] = np.where(has_zero, np.maximum(hi, 0.0), hi)
    out[0, L1] = np.bincount(cols, weights=np.abs(vals), minlength=n)
    out[0, SUMSQ] = np.bincount(cols, weights=vals**2, minlength=n)
    out[0, NNZ] = np.bincount(cols[vals != 0], minlength=n)
    return out


class StatsMerge:
    """Merge summaries in index order (Chan et al.'s pairwise mean/M2 update)."""

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        acc = np.array(blocks[0][0], copy=True)
        for b in blocks[1:]:
            s = b[0]
            na, nb = acc[COUNT], s[COUNT]
            n = na + nb
            delta = s[MEAN] - acc[MEAN]
            acc[MEAN] = acc[MEAN] + delta * (nb / n)
            acc[M2] = acc[M2] + s[M2] + delta**2 * (na * nb / n)
            acc[COUNT] = n
            acc[MIN] = np.minimum(acc[MIN], s[MIN])
            acc[MAX] = np.maximum(acc[MAX], s[MAX])
            for row in (L1, SUMSQ, NNZ):
                acc[row] += s[row]
        return acc[None]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatsMerge)

    def __hash__(self) -> int:
        return hash(StatsMerge)


def column_stats_node(A: Any) -> Lazy:
    """Like :func:`column_stats` but presenting the raw (1, 8, n) summary array."""
    m = as_matrix(A)
    n = m.shape[1]
    tasks = row_panel_tasks([m])
    # A centered copy of a dense panel; for CSR, per-entry temporaries of the bincounts.
    csr = m.node.block_nbytes if reads_csr(m) else None
    work = 2 * m.node.chunks[0] * n * 8 if csr is None else 3 * csr
    stage = make_stage("column_stats/partial", StatsPartial(), [m.input], tasks,
                       shape=(m.grid[0], NROWS, n), chunks=(1, NROWS, n), dtype="float64",
                       extra_memory=work + 4 * n * 8, keeps_sparse=True)
    plan, out = tree_reduce(m.plan.add(stage), stage.output, StatsMerge(), op="column_stats")
    return Lazy(plan, out, "small", label="column_stats")


def column_stats(A: Any) -> Lazy:
    """Column count, mean, variance, min, max, L1 and L2 norms, and nonzero counts.

    Parameters
    ----------
    A : BlockMatrix, path, lazy matrix or view

    Returns
    -------
    Lazy
        Computes to a :class:`ColumnStats`.

    Notes
    -----
    One pass over A (shared with other operators computed in the same
    :func:`blocklin.compute`). Per-block summaries are merged with Chan's pairwise
    update in a fixed-order tree, so means and variances are stable and bitwise
    reproducible. Per-task memory: a row panel plus two float64 copies of it (for
    the centered squares) and 8 n-vectors.
    """
    lazy = column_stats_node(A)
    return Lazy(lazy.plan, lazy.output, "small", ColumnStats.from_array, label="column_stats")
