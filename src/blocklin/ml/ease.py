"""``EASE``: the closed-form item–item recommender of Steck (2019) from one pass's Gram.

EASE fits the item–item weights B (zero diagonal) minimizing ‖X − XB‖²_F + λ‖B‖²_F,
whose solution is B = I − P·diag(1/diag P) with P = (XᵀX + λI)⁻¹. XᵀX is exact,
computed by block tasks over a stored interaction matrix (dense or CSR row blocks) in
column panels (:func:`gram_panels`: one pass up to 5,792 items); the n_items × n_items
inverse is taken on the driver.
Recommending reads user rows as block tasks, keeping the top n items of each row
block: no users × items matrix is ever formed on the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from blocklin.config import default_work_dir
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.api import compute
from blocklin.executors.lazy import Lazy
from blocklin.ml._progress import reports
from blocklin.ml._validation import is_stored, stored_matrix, validate_features
from blocklin.ml.persist import SaveMixin
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, row_panel_reads
from blocklin.plan.graph import RowPanelTasks, StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.storage.blockmatrix import from_array
from blocklin.storage.leases import scratch_folder

__all__ = ["EASE", "EASE_MAX_ITEMS", "ease_weights", "top_n"]

#: Most items whose weights the driver computes: the Gram (kept for partial_fit) and B
#: are n × n float64, 3.2 GB each at 20,000 items; the LU inverse used above 8,192
#: items holds four n × n arrays at its peak (≈ 32·n² bytes: 12.8 GB at 20,000; 5.1 GB
#: peak RSS measured at 15,000 items). Beyond it a blocked or distributed inverse is
#: needed, which blocklin does not have yet.
EASE_MAX_ITEMS = 20_000
#: Bytes of B read by one recommend task: B is cut into column panels of this size.
_PANEL_BYTES = 128 * 2**20
#: Rows of an in-memory user matrix scored at once (bounds the rows × items scores).
_MEMORY_ROWS = 2048
#: Bytes of one column panel of the Gram (items × panel columns), per task and part.
_GRAM_PANEL_BYTES = 256 * 2**20
#: Largest n inverted by Cholesky (dpotrf/dpotri). Threaded OpenBLAS dpotrf segfaults
#: from n = 16,000 on 2 threads with both the scipy and numpy wheels' OpenBLAS (measured
#: here; OpenBLAS issues #2562 and #2821: its parallel syrk inside potrf); larger
#: systems go through LU (numpy.linalg.inv: 2n³ flops, two more n × n arrays), which
#: ran at 16,000.
_CHOLESKY_MAX_ITEMS = 8192


def _check_items(n: int) -> None:
    if n > EASE_MAX_ITEMS:
        gib = 32 * n * n / 2**30
        raise InputValueError(
            f"EASE computes its {n} × {n} item weights on the driver, up to "
            f"EASE_MAX_ITEMS = {EASE_MAX_ITEMS} items (about {gib:.0f} GiB for {n}); reduce "
            "the catalogue (e.g. drop items with few interactions) before fitting")


def ease_weights(g: np.ndarray, l2: float) -> np.ndarray:
    """B = I − P·diag(1/diag P), P = (G + λI)⁻¹, with a zero diagonal.

    Parameters
    ----------
    g : ndarray (n, n)
        The Gram matrix XᵀX (symmetric positive semidefinite); not modified.
    l2 : float
        λ > 0 (or 0 when G is positive definite).

    Returns
    -------
    ndarray (n, n)
        B, float64. Bᵢⱼ = −Pᵢⱼ/Pⱼⱼ off the diagonal.

    Raises
    ------
    InputValueError
        If G + λI is not positive definite (λ = 0 with a rank-deficient Gram).

    Notes
    -----
    Up to 8,192 items: Cholesky factorization and inverse (LAPACK ``dpotrf``/``dpotri``,
    n³ flops), in place on one n × n copy of G, which becomes B: 8n² bytes beside G.
    Beyond: LU inverse (2n³ flops, 24n² bytes beside G at the peak), because threaded
    OpenBLAS ``dpotrf`` crashes on large systems.
    """
    n = g.shape[0]
    if n > _CHOLESKY_MAX_ITEMS:
        return _weights_lu(g, l2)
    a = np.array(g, dtype=np.float64, order="F", copy=True)
    a[np.diag_indices(n)] += l2
    c, info = lapack.dpotrf(a, lower=False, overwrite_a=True, clean=False)
    if info > 0:
        raise InputValueError(
            f"XᵀX + l2·I is not positive definite (leading minor {info} of {n}); use l2 > 0")
    p, info = lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:  # pragma: no cover - dpotrf succeeded, so the factor is invertible
        raise InputValueError(f"the inverse of XᵀX + l2·I failed (LAPACK info {info})")
    # dpotri fills the upper triangle: mirror it by column panels (small temporaries).
    step = 1024
    for j in range(0, n, step):
        p[j:j + step, :j] = p[:j, j:j + step].T
        blk = p[j:j + step, j:j + step]
        blk[...] = np.triu(blk) + np.triu(blk, 1).T
    # p is Fortran-ordered and now symmetric: its transpose is the same matrix in C
    # order, so B is formed in place, without a copy.
    b: np.ndarray = p.T
    d = np.diagonal(b).copy()
    b /= -d[None, :]
    b[np.diag_indices(n)] = 0.0
    return b


def _weights_lu(g: np.ndarray, l2: float) -> np.ndarray:
    """:func:`ease_weights` through numpy's LU inverse (for large n)."""
    n = g.shape[0]
    a = np.array(g, dtype=np.float64, copy=True)
    a[np.diag_indices(n)] += l2
    try:
        p: np.ndarray = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        raise InputValueError("XᵀX + l2·I is singular (not positive definite); use l2 > 0") \
            from None
    del a
    d = np.diagonal(p).copy()
    if not np.all(d > 0):
        raise InputValueError("XᵀX + l2·I is not positive definite; use l2 > 0")
    p /= -d[None, :]
    p[np.diag_indices(n)] = 0.0
    return p


def top_n(scores: np.ndarray, seen: Any, n: int, offset: int = 0) -> np.ndarray:
    """Per row, the n best items as a (rows, 2n) float64 block: item indices (−1 where
    fewer than n are left) then their scores (−inf there).

    ``seen`` is a boolean mask (or sparse matrix) of the same shape whose true cells are
    excluded; ``offset`` is added to the item indices (a column panel's first item).
    Rows are ordered by score, descending, then item index.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if sp.issparse(seen):
        r, c = seen.nonzero()
        scores[r, c] = -np.inf
    elif seen is not None:
        scores[np.asarray(seen)] = -np.inf
    rows, width = scores.shape
    k = min(n, width)
    if k < width:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(width), (rows, width))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.float64) + offset
    vals = np.take_along_axis(vals, order, axis=1)
    out = np.full((rows, 2 * n), -np.inf)
    out[:, :n] = -1.0
    idx[~np.isfinite(vals) & (vals < 0)] = -1.0
    out[:, :k], out[:, n:n + k] = idx, vals
    return out


def _merge_top(blocks: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Merge (rows, 2n) top-n blocks of disjoint item ranges into one."""
    idx = np.concatenate([b[:, :n] for b in blocks], axis=1)
    vals = np.concatenate([b[:, n:] for b in blocks], axis=1)
    # Padding (index −1, score −inf) sorts after every real item.
    key = np.where(idx < 0, np.inf, idx)
    order = np.lexsort((key, -vals), axis=1)[:, :n]
    out = np.empty((idx.shape[0], 2 * n))
    out[:, :n] = np.take_along_axis(idx, order, axis=1)
    out[:, n:] = np.take_along_axis(vals, order, axis=1)
    return out


@dataclass(frozen=True)
class GramPanel:
    """Σᵢ Xᵢᵀ·Xᵢ[:, j0:j1] over a group of row panels (in index order): a column panel of
    their Gram. CSR panels are stacked and multiplied once, sparse kept sparse."""

    j0: int
    j1: int
    nx: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        panels = [hstack_panel(blocks[r:r + self.nx]) for r in range(0, len(blocks), self.nx)]
        if sp.issparse(panels[0]):
            x = sp.csr_matrix(sp.vstack(panels, format="csr"), dtype=np.float64)
            return np.asarray((x.T @ x[:, self.j0:self.j1]).toarray())[None, ...]
        x = np.asarray(panels[0], dtype=np.float64)
        acc = x.T @ x[:, self.j0:self.j1]
        for panel in panels[1:]:
            x = np.asarray(panel, dtype=np.float64)
            acc += x.T @ x[:, self.j0:self.j1]
        return acc[None, ...]


def gram_panels(X: MatrixInput, width: int) -> list[tuple[int, int, Lazy]]:
    """XᵀX as column panels of ``width`` columns, each its own pass and fixed-order tree
    sum: a task holds items × width floats (not items²), so wide interaction matrices
    fit in a task's memory. A task reads a group of row blocks (about _GRAM_PANEL_BYTES
    of stored blocks): each dense partial costs items × width floats written, however
    few rows (sparse blocks hold few bytes) it sums."""
    n = X.shape[1]
    stored = X.node.block_nbytes or X.node.chunk_nbytes * X.grid[1]
    group = max(1, _GRAM_PANEL_BYTES // max(stored, 1))
    ngroups = -(-X.grid[0] // group)
    tasks = [Task(out=(g, 0, 0), reads=tuple(r for i in range(g * group,
                                                              min((g + 1) * group, X.grid[0]))
                                             for r in row_panel_reads(X, 0, i)))
             for g in range(ngroups)]
    out = []
    for j0 in range(0, n, width):
        j1 = min(n, j0 + width)
        extra = 8 * n * (j1 - j0) * 2 + 8 * X.node.chunks[0] * (j1 - j0)
        stage = make_stage("ease/gram", GramPanel(j0, j1, X.grid[1]), [X.input], tasks,
                           shape=(ngroups, n, j1 - j0), chunks=(1, n, j1 - j0),
                           dtype="float64", params={"cols": [j0, j1], "group": group},
                           extra_memory=extra, keeps_sparse=True)
        plan, part = tree_reduce(X.plan.add(stage), stage.output, SumParts(), op="ease/gram",
                                 params={"cols": [j0, j1], "group": group})
        out.append((j0, j1, Lazy(plan, part, "small", lambda p: p[0], label="ease.gram")))
    return out


@dataclass(frozen=True)
class ScoreTopN:
    """Top-n of a group of user row panels against one column panel of B (the last
    block read; seen items excluded)."""

    n: int
    nx: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        panels = [hstack_panel(blocks[r:r + self.nx]) for r in range(0, len(blocks) - 1, self.nx)]
        if len(panels) == 1:
            x = panels[0]
        else:
            x = sp.vstack(panels, format="csr") if sp.issparse(panels[0]) else np.vstack(panels)
        b = np.asarray(blocks[-1], dtype=np.float64)
        j0 = ctx.task.reads[-1][1][1] * ctx.inputs[1].chunks[1]
        j1 = j0 + b.shape[1]
        if sp.issparse(x):
            x = x.tocsr()
            scores = np.asarray(x.astype(np.float64) @ b)
            seen: Any = x[:, j0:j1]
        else:
            x = np.asarray(x, dtype=np.float64)
            scores = x @ b
            seen = x[:, j0:j1] != 0
        return top_n(scores, seen, self.n, offset=j0)

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """Indices, and the scores of real items (padding holds −inf)."""
        n = self.n
        return np.where(out[:, :n] >= 0, out[:, n:], 0.0)


@dataclass(frozen=True)
class MergeTopN:
    """Merge the column panels' top-n of one row panel."""

    n: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return _merge_top([np.asarray(b) for b in blocks], self.n)

    def finite_part(self, out: np.ndarray) -> np.ndarray:
        """As :meth:`ScoreTopN.finite_part`."""
        n = self.n
        return np.where(out[:, :n] >= 0, out[:, n:], 0.0)


def recommend_plan(X: MatrixInput, B: MatrixInput, n: int) -> Lazy:
    """The two stages of a stored recommend: per (user row panel, B column panel) top-n
    candidates, then their merge per row panel; computes to a (users, 2n) matrix."""
    m, items = X.shape
    nb = B.grid[1]
    cb = B.node.chunks[1]
    nx = X.grid[1]
    # A task scores a group of row blocks: B's panel is read once per group, not once
    # per (possibly small: sparse) row block. Groups keep the rows × panel scores (and
    # a dense group of X) near _PANEL_BYTES.
    dense = X.node.block_nbytes is None  # CSR groups stay sparse in the task
    per_row = 8 * (cb + (items if dense else 0))
    group = max(1, _PANEL_BYTES // (per_row * X.node.chunks[0]))
    rows = group * X.node.chunks[0]
    ngroups = -(-X.grid[0] // group)
    tasks = [Task(out=(g, j), reads=(*(r for i in range(g * group, min((g + 1) * group,
                                                                       X.grid[0]))
                                       for r in row_panel_reads(X, 0, i)), (1, (0, j))))
             for g in range(ngroups) for j in range(nb)]
    width = 2 * n
    stage = make_stage("ease/score", ScoreTopN(n, nx), [X.input, B.input], tasks,
                       shape=(m, nb * width), chunks=(rows, width), dtype="float64",
                       params={"n": n},
                       extra_memory=8 * rows * (3 * cb + (items if dense else 0)),
                       keeps_sparse=True)
    plan = X.plan.merge(B.plan).add(stage)
    if nb == 1:
        return Lazy(plan, stage.output, "matrix", label="ease.recommend")
    merge = make_stage("ease/merge", MergeTopN(n), [StageInput(stage.output)],
                       RowPanelTasks(ngroups, ((0, nb),), out_ndim=2),
                       shape=(m, width), chunks=(rows, width), dtype="float64",
                       params={"n": n}, extra_memory=8 * 4 * rows * nb * width)
    return Lazy(plan.add(merge), merge.output, "matrix", label="ease.recommend")


class EASE(SaveMixin, BaseEstimator):  # type: ignore[misc]
    """Embarrassingly Shallow Autoencoder: closed-form item–item recommendations.

    Parameters
    ----------
    l2 : float
        λ ≥ 0, the ridge penalty on B (Steck's λ; a few hundred for counts or binary
        interactions). λ = 0 needs a positive definite XᵀX.
    executor : {"dask", "spark"}
        Engine of the passes over stored matrices.
    work_dir : str, optional
        Directory for temporary arrays (in-memory X, B's column panels while
        recommending); must be reachable by the workers.
    compute_options : dict, optional
        More keywords for :func:`blocklin.compute` (``client``, ``address``,
        ``max_task_memory``...).
    progress : bool, callable or ProgressSink
        Report each pass (see :class:`~blocklin.ml.TruncatedSVD`).

    Attributes
    ----------
    coef_ : ndarray (n_items, n_items)
        B: predicted scores are ``X @ coef_``; zero diagonal.
    gram_ : ndarray (n_items, n_items)
        XᵀX of all rows seen; ``partial_fit`` adds new rows' Gram to it.
    n_features_in_ : int
        Number of items.
    n_samples_seen_ : int
        Number of user rows seen.

    Notes
    -----
    ``fit`` computes XᵀX by column panels of at most 256 MiB (items × panel columns):
    one pass over X for up to 5,792 items, ⌈8n²/256 MiB⌉ passes beyond (12 at
    20,000), each task summing a group of row blocks (about 256 MiB stored; CSR kept
    sparse) into one panel; then the inverse on the driver: Cholesky up to 8,192 items
    (n³ flops, 16·n² bytes: the Gram, kept, and B formed in place of its copy), LU
    beyond (2n³ flops, about 32·n² bytes at the peak: 12.8 GB at the limit; threaded
    OpenBLAS Cholesky crashes on large systems). Up to :data:`EASE_MAX_ITEMS` items
    (20,000); more is refused before any pass. ``partial_fit(X_new)`` reads only the
    new rows and refactors: the earlier rows are never read again.

    References
    ----------
    Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019.

    Examples
    --------
    >>> model = EASE(l2=500.0).fit("interactions.zarr")
    >>> items, scores = model.recommend("interactions.zarr", 10)
    """

    def __init__(self, l2: float = 500.0, *, executor: str = "dask",
                 work_dir: str | None = None, compute_options: dict[str, Any] | None = None,
                 progress: Any = False) -> None:
        self.l2 = l2
        self.executor = executor
        self.work_dir = work_dir
        self.compute_options = compute_options
        self.progress = progress

    def _compute(self, lazy: Lazy, wd: str) -> Any:
        opts = dict(self.compute_options or {})
        opts.setdefault("executor", self.executor)
        opts["work_dir"] = wd
        return compute(lazy, **opts)[0]

    def _check_l2(self) -> float:
        l2 = self.l2
        if isinstance(l2, bool) or not isinstance(l2, int | float | np.integer | np.floating):
            raise InputDtypeError(f"l2 must be a number; got {l2!r}")
        if not np.isfinite(l2) or l2 < 0:
            raise InputValueError(f"l2 must be finite and >= 0; got {l2}")
        if self.compute_options is not None and not isinstance(self.compute_options, dict):
            raise InputDtypeError("compute_options must be a dict of blocklin.compute keywords")
        return float(l2)

    def _scratch(self, prefix: str) -> AbstractContextManager[str]:
        return scratch_folder(self.work_dir if self.work_dir is not None
                              else default_work_dir(), prefix)

    def _gram(self, Xv: Any) -> np.ndarray:
        """XᵀX: in memory for numpy/CSR rows, else one pass over the stored matrix."""
        if sp.issparse(Xv):
            return np.asarray((Xv.T @ Xv).toarray(), dtype=np.float64)
        if isinstance(Xv, np.ndarray):
            return np.asarray(Xv.T @ Xv, dtype=np.float64)
        n = int(Xv.shape[1])
        g = np.empty((n, n))
        width = max(1, min(n, _GRAM_PANEL_BYTES // (8 * n)))
        with self._scratch("ease-") as wd, stored_matrix(Xv, work_dir=wd) as A:
            # One pass per column panel (one in all up to 5,792 items): X is sparse and
            # read again cheaply, where an items × items partial per task would not fit.
            for j0, j1, lazy in gram_panels(as_matrix(A, "X"), width):
                g[:, j0:j1] = self._compute(lazy, wd)
        return g

    @reports("fit")
    def fit(self, X: Any, y: Any = None) -> EASE:
        """Fit on the users × items matrix X (numpy, scipy.sparse, dask, BlockMatrix or
        zarr path, dense or CSR); returns self.

        Raises
        ------
        InputValueError
            For l2 < 0, more than :data:`EASE_MAX_ITEMS` items, or a singular XᵀX
            with l2 = 0 (before writing anything but the Gram).
        """
        l2 = self._check_l2()
        Xv = validate_features(self, X, reset=True, accept_sparse=True)
        _check_items(int(Xv.shape[1]))
        self.gram_ = self._gram(Xv)
        self.n_samples_seen_ = int(Xv.shape[0])
        self.coef_ = ease_weights(self.gram_, l2)
        return self

    @reports("partial_fit")
    def partial_fit(self, X: Any, y: Any = None) -> EASE:
        """Add new users' rows: their Gram (one pass over X only) joins ``gram_`` and B
        is recomputed; fits from scratch when not fitted yet."""
        if not hasattr(self, "gram_"):
            return self.fit(X)
        l2 = self._check_l2()
        Xv = validate_features(self, X, reset=False, accept_sparse=True)
        g = self.gram_ + self._gram(Xv)
        self.coef_ = ease_weights(g, l2)
        self.gram_ = g
        self.n_samples_seen_ += int(Xv.shape[0])
        return self

    @reports("predict")
    def predict(self, X: Any) -> np.ndarray:
        """Scores ``X @ coef_`` of in-memory rows X (users × items; keep X small:
        :meth:`recommend` never forms this matrix)."""
        check_is_fitted(self)
        Xv = validate_features(self, X, reset=False, accept_sparse=True)
        if is_stored(Xv) or not (isinstance(Xv, np.ndarray) or sp.issparse(Xv)):
            raise InputDtypeError("predict scores in-memory rows; for stored users use "
                                  "recommend(X, n), which keeps the top n per row")
        return np.asarray(Xv @ self.coef_)

    @reports("recommend")
    def recommend(self, X: Any, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The n best unseen items of each user row of X.

        Parameters
        ----------
        X : numpy, scipy.sparse, dask, BlockMatrix or zarr path
            Users × items interactions (the rows to score; their nonzero items are
            excluded).
        n : int
            Items per user (1 <= n <= n_items).

        Returns
        -------
        items : ndarray (n_users, n) of int64
            Item indices by descending score (ties by index); −1 where a user has
            fewer than n unseen items.
        scores : ndarray (n_users, n)
            Their scores (−inf for −1).

        Notes
        -----
        Stored X: block tasks, one per (user row block, column panel of B), each
        scoring its rows against one panel and keeping its top n, then one merge task
        per row block. B is written once to the work directory in column panels of
        about 128 MiB; each task holds a row block, one panel of B and the rows ×
        panel scores. X is read once per panel of B. In-memory X is scored by slices
        of 2,048 rows.
        """
        check_is_fitted(self)
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise InputDtypeError(f"n must be an int; got {n!r}")
        items = int(self.coef_.shape[0])
        if not 1 <= n <= items:
            raise InputValueError(f"n must be in [1, {items}] (the number of items); got {n}")
        Xv = validate_features(self, X, reset=False, accept_sparse=True)
        if isinstance(Xv, np.ndarray) or sp.issparse(Xv):
            out = np.concatenate([self._top_rows(Xv[s:s + _MEMORY_ROWS], int(n))
                                  for s in range(0, Xv.shape[0], _MEMORY_ROWS)])
        else:
            out = self._top_stored(Xv, int(n))
        return out[:, :n].astype(np.int64), out[:, n:]

    def _top_rows(self, x: Any, n: int) -> np.ndarray:
        scores = np.asarray(x @ self.coef_, dtype=np.float64)
        return top_n(scores, x if sp.issparse(x) else x != 0, n)

    def _top_stored(self, Xv: Any, n: int) -> np.ndarray:
        items = int(self.coef_.shape[0])
        cb = max(1, min(items, _PANEL_BYTES // (8 * items)))
        with self._scratch("ease-recommend-") as wd, stored_matrix(Xv, work_dir=wd) as A:
            b = from_array(self.coef_, f"{wd}/B.zarr", chunks=(items, cb))
            lazy = recommend_plan(as_matrix(A, "X"), as_matrix(b, "B"), n)
            out: np.ndarray = self._compute(lazy, wd).to_numpy()
        return out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
