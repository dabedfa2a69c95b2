"""``EASE``: the closed-form item–item recommender of Steck (2019) from one pass's Gram.

EASE fits the item–item weights B (zero diagonal) minimizing ‖X − XB‖²_F + λ‖B‖²_F,
whose solution is B = I − P·diag(1/diag P) with P = (XᵀX + λI)⁻¹. XᵀX is exact,
computed by block tasks over a stored interaction matrix (dense or CSR row blocks) in
column panels (:func:`gram_panels`: one pass up to 5,792 items); the n_items × n_items
inverse is taken on the driver, in place: the driver holds two n × n float64 arrays
(the Gram and B), 6.4 GB at 20,000 items, and refuses larger catalogues than its
memory allows before any pass.
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

from blocklin.config import default_work_dir, machine_memory, parse_memory
from blocklin.errors import InputDtypeError, InputValueError, PlanMemoryError
from blocklin.executors.api import compute
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import OptionsLike
from blocklin.ml._estimator import estimator_options
from blocklin.ml._progress import reports
from blocklin.ml._validation import is_stored, stored_matrix, validate_features
from blocklin.ml.persist import SaveMixin
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, row_panel_reads
from blocklin.plan.graph import RowPanelTasks, StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.storage.blockmatrix import from_array
from blocklin.storage.leases import scratch_folder

__all__ = ["EASE", "FIT_COPIES", "PARTIAL_FIT_COPIES", "driver_bytes", "ease_weights", "top_n"]

#: Copies of an n × n float64 matrix the driver holds at the peak of ``fit``: the Gram
#: (kept for partial_fit) and B, computed in place of a copy of it (LAPACK's in-place
#: factorization and inverse). ``partial_fit`` holds one more: the new Gram beside the
#: kept one while B is recomputed (in the old B's buffer).
FIT_COPIES = 2
PARTIAL_FIT_COPIES = 3
#: Share of the machine's memory (:func:`blocklin.config.machine_memory`, a container's
#: limit where lower) the driver's n × n arrays may take when ``driver_memory`` is not
#: given: the rest is for the interpreter, the executor's threads and the OS.
_DRIVER_FRACTION = 0.8
#: Bytes of B read by one recommend task: B is cut into column panels of this size.
_PANEL_BYTES = 128 * 2**20
#: Rows of an in-memory user matrix scored at once (bounds the rows × items scores).
_MEMORY_ROWS = 2048
#: Bytes of one column panel of the Gram (items × panel columns), per task and part.
_GRAM_PANEL_BYTES = 256 * 2**20
#: Largest n inverted by Cholesky (dpotrf/dpotri). Threaded OpenBLAS dpotrf segfaults
#: from n = 16,000 on 2 threads with both the scipy and numpy wheels' OpenBLAS (measured
#: here; OpenBLAS issues #2562 and #2821: its parallel syrk inside potrf); larger
#: systems go through LU (dgetrf/dgetri: 2n³ flops instead of n³), in place too.
_CHOLESKY_MAX_ITEMS = 8192


def driver_bytes(n_items: int, copies: int = FIT_COPIES) -> int:
    """Driver memory of an EASE fit over ``n_items`` items: ``copies`` n × n float64
    arrays, one Gram column panel (at most 256 MiB) and LAPACK's inverse workspace."""
    n = int(n_items)
    return copies * 8 * n * n + min(8 * n * n, _GRAM_PANEL_BYTES) + 8 * 64 * n


def _driver_budget(driver_memory: int | str | None) -> int:
    if driver_memory is None:
        return int(_DRIVER_FRACTION * machine_memory())
    return parse_memory(driver_memory)


def _check_items(n: int, budget: int, copies: int) -> None:
    need = driver_bytes(n, copies)
    if need > budget:
        # Largest n within the budget, to name it in the message.
        top = int(np.sqrt(max(budget - _GRAM_PANEL_BYTES, 0) / (8 * copies)))
        while top > 0 and driver_bytes(top, copies) > budget:
            top -= 1
        raise PlanMemoryError(
            "ease/inverse", need, budget, limit="driver_memory",
            hint=(f"EASE holds {copies} {n} × {n} float64 arrays on the driver (the Gram "
                  f"and B{', and the new rows Gram' if copies > FIT_COPIES else ''}); "
                  f"{top} items fit in this budget. Reduce the catalogue (e.g. drop items "
                  "with few interactions) or raise driver_memory on a larger driver: "
                  "blocklin has no blocked inverse"))


def ease_weights(g: np.ndarray, l2: float, *, overwrite_g: bool = False) -> np.ndarray:
    """B = I − P·diag(1/diag P), P = (G + λI)⁻¹, with a zero diagonal.

    Parameters
    ----------
    g : ndarray (n, n)
        The Gram matrix XᵀX (symmetric positive semidefinite).
    l2 : float
        λ > 0 (or 0 when G is positive definite).
    overwrite_g : bool
        Compute B in g's own buffer (float64, C- or Fortran-contiguous, writeable;
        else a copy is made) and return it: no n × n array is allocated. g's contents
        are then lost, also when an error is raised.

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
    Memory: one n × n array (g's copy, or g itself with ``overwrite_g``) and LAPACK's
    workspace (64·n floats): the factorization, the inverse and B are formed in place.
    Up to 8,192 items: Cholesky (``dpotrf``/``dpotri``, n³ flops); beyond, LU
    (``dgetrf``/``dgetri``, 2n³ flops), because threaded OpenBLAS ``dpotrf`` crashes on
    large systems.
    """
    n = g.shape[0]
    own = (overwrite_g and g.dtype == np.float64 and g.flags.writeable
           and (g.flags.c_contiguous or g.flags.f_contiguous))
    m = g if own else np.array(g, dtype=np.float64, order="F", copy=True)
    # LAPACK works in place on a Fortran-ordered array; a C-ordered m is its transpose,
    # so LAPACK inverts mᵀ there, and m ends up holding (mᵀ)⁻¹ᵀ = m⁻¹.
    f = m if m.flags.f_contiguous else m.T
    f[np.diag_indices(n)] += l2
    if n <= _CHOLESKY_MAX_ITEMS:
        _inverse_cholesky(f)
    else:
        _inverse_lu(f)
    d = np.diagonal(m).copy()
    if not np.all(d > 0):
        raise InputValueError("XᵀX + l2·I is not positive definite; use l2 > 0")
    m /= -d[None, :]
    m[np.diag_indices(n)] = 0.0
    return m


def _inverse_cholesky(f: np.ndarray) -> None:
    """Invert the symmetric positive definite Fortran-ordered f in place (its upper
    triangle read)."""
    n = f.shape[0]
    c, info = lapack.dpotrf(f, lower=False, overwrite_a=True, clean=False)
    if info > 0:
        raise InputValueError(
            f"XᵀX + l2·I is not positive definite (leading minor {info} of {n}); use l2 > 0")
    p, info = lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:  # pragma: no cover - dpotrf succeeded, so the factor is invertible
        raise InputValueError(f"the inverse of XᵀX + l2·I failed (LAPACK info {info})")
    _same_buffer(p, f)
    # dpotri fills the upper triangle: mirror it by column panels (temporaries of
    # 256 × 256 floats).
    step = 256
    for j in range(0, n, step):
        f[j:j + step, :j] = f[:j, j:j + step].T
        blk = f[j:j + step, j:j + step]
        blk[...] = np.triu(blk) + np.triu(blk, 1).T


def _inverse_lu(f: np.ndarray) -> None:
    """Invert the Fortran-ordered f in place by LU with partial pivoting."""
    n = f.shape[0]
    lu, piv, info = lapack.dgetrf(f, overwrite_a=True)
    if info > 0:
        raise InputValueError("XᵀX + l2·I is singular (not positive definite); use l2 > 0")
    lwork, _ = lapack.dgetri_lwork(n)
    p, info = lapack.dgetri(lu, piv, lwork=int(lwork), overwrite_lu=True)
    if info != 0:  # pragma: no cover - dgetrf succeeded, so U is invertible
        raise InputValueError(f"the inverse of XᵀX + l2·I failed (LAPACK info {info})")
    _same_buffer(p, f)


def _same_buffer(out: np.ndarray, f: np.ndarray) -> None:
    """LAPACK's wrappers copy silently when they cannot work in place: a copy here
    would double the driver's memory and leave f unchanged, so refuse it."""
    if not np.shares_memory(out, f):  # pragma: no cover - f is Fortran float64
        raise RuntimeError("LAPACK did not work in place on the EASE matrix")


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


class EASE(SaveMixin, BaseEstimator):
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
    compute_options : ComputeOptions or dict, optional
        How and where the passes run (:class:`blocklin.ComputeOptions`); ``executor``
        and ``work_dir`` fill the fields it leaves unset.
    progress : bool, callable or ProgressSink
        Report each pass (see :class:`~blocklin.ml.TruncatedSVD`).
    driver_memory : int or str, optional
        Memory the driver's n × n arrays may take (``"16GiB"``); by default 80 % of
        this machine's (or container's) memory. A catalogue whose arrays would not fit
        is refused before any pass (:func:`driver_bytes`).

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
    sparse) into one panel (in-memory CSR: by column panels of the same size); then
    the inverse on the driver, in place (:func:`ease_weights`): Cholesky up to 8,192
    items (n³ flops), LU beyond (2n³ flops; threaded OpenBLAS Cholesky crashes on large
    systems).

    Driver memory at the peak of ``fit``: :data:`FIT_COPIES` = 2 n × n float64 arrays,
    16·n² bytes (the Gram, kept for ``partial_fit``, and B formed in place of its
    copy: 6.4 GB at 20,000 items, 1.6 GB at 10,000), plus one Gram column panel
    (≤ 256 MiB) and LAPACK's 64·n-float workspace. A refit first drops the previous
    fit's arrays. ``partial_fit(X_new)`` reads only the new rows (the earlier rows are
    never read again) and holds :data:`PARTIAL_FIT_COPIES` = 3 (the kept Gram, the new
    one and B, recomputed in the old B's buffer): 9.6 GB at 20,000 items. The largest
    catalogue is the n with :func:`driver_bytes` within ``driver_memory``: 35,297
    items for ``fit`` and 28,822 for ``partial_fit`` on a 23.5 GiB machine's default
    18.8 GiB (an LU inverse of 2n³ flops: about 18 minutes on 2 cores at 35,000); more
    is refused before any pass with :class:`PlanMemoryError` naming the bytes needed
    and the largest n that fits. blocklin has no blocked or distributed inverse.
    Measured at 20,000 items (100,000 users, ``benchmarks/bench_recommend.py``): fit
    and recommend in 7.8 GiB peak RSS, against 12.1 GiB for numpy.linalg.inv.

    ``recommend`` holds on the driver the model (its two n × n arrays) and, per block
    task, one column panel of B (≤ 128 MiB) and the scores of a group of user rows
    against it (≤ 128 MiB; see :meth:`recommend`).

    References
    ----------
    Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019.

    Examples
    --------
    >>> model = EASE(l2=500.0).fit("interactions.zarr")
    >>> items, scores = model.recommend("interactions.zarr", 10)
    """

    def __init__(self, l2: float = 500.0, *, executor: str = "dask",
                 work_dir: str | None = None, compute_options: OptionsLike = None,
                 progress: Any = False, driver_memory: int | str | None = None) -> None:
        self.l2 = l2
        self.executor = executor
        self.work_dir = work_dir
        self.compute_options = compute_options
        self.progress = progress
        self.driver_memory = driver_memory

    def _compute(self, lazy: Lazy, wd: str) -> Any:
        return compute(lazy, compute_options=estimator_options(self).replace(work_dir=wd))[0]

    def _check_l2(self) -> float:
        l2 = self.l2
        if isinstance(l2, bool) or not isinstance(l2, int | float | np.integer | np.floating):
            raise InputDtypeError(f"l2 must be a number; got {l2!r}")
        if not np.isfinite(l2) or l2 < 0:
            raise InputValueError(f"l2 must be finite and >= 0; got {l2}")
        estimator_options(self)  # a bad option is refused before any pass
        return float(l2)

    def _scratch(self, prefix: str) -> AbstractContextManager[str]:
        return scratch_folder(estimator_options(self).work_dir or default_work_dir(), prefix)

    def _gram(self, Xv: Any) -> np.ndarray:
        """XᵀX: in memory for numpy/CSR rows, else one pass over the stored matrix."""
        if isinstance(Xv, np.ndarray):
            return np.asarray(Xv.T @ Xv, dtype=np.float64)
        n = int(Xv.shape[1])
        g = np.empty((n, n))
        width = max(1, min(n, _GRAM_PANEL_BYTES // (8 * n)))
        if sp.issparse(Xv):
            # By column panels (≤ 256 MiB and ≤ 1/16 of the Gram): a sparse XᵀX whole
            # can hold n² entries at 12 bytes each beside its dense copy, 2.5 Grams.
            xc = sp.csc_matrix(Xv, dtype=np.float64)
            width = max(1, min(width, -(-n // 16)))
            for j0 in range(0, n, width):
                g[:, j0:j0 + width] = (xc.T @ xc[:, j0:j0 + width]).toarray()
            return g
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
            For l2 < 0, or a singular XᵀX with l2 = 0 (before writing anything but
            the Gram).
        PlanMemoryError
            Before any pass, when the driver's arrays (:func:`driver_bytes`) exceed
            ``driver_memory``.
        """
        l2 = self._check_l2()
        budget = _driver_budget(self.driver_memory)
        Xv = validate_features(self, X, reset=True, accept_sparse=True)
        _check_items(int(Xv.shape[1]), budget, FIT_COPIES)
        # A refit's previous arrays would double the driver's peak.
        for name in ("coef_", "gram_"):
            self.__dict__.pop(name, None)
        gram = self._gram(Xv)
        coef = ease_weights(gram, l2)
        self.gram_, self.coef_ = gram, coef
        self.n_samples_seen_ = int(Xv.shape[0])
        return self

    @reports("partial_fit")
    def partial_fit(self, X: Any, y: Any = None) -> EASE:
        """Add new users' rows: their Gram (one pass over X only) joins ``gram_`` and B
        is recomputed; fits from scratch when not fitted yet.

        The driver holds :data:`PARTIAL_FIT_COPIES` n × n arrays at the peak: the kept
        Gram, the updated one and B (recomputed in the old B's buffer). If the inverse
        fails (l2 set to 0 since the fit, on a singular Gram), ``gram_`` and
        ``n_samples_seen_`` are left as they were and ``coef_`` is removed (its buffer
        was overwritten): set l2 > 0 and call ``partial_fit`` again.
        """
        if not hasattr(self, "gram_"):
            return self.fit(X)
        l2 = self._check_l2()
        budget = _driver_budget(self.driver_memory)
        Xv = validate_features(self, X, reset=False, accept_sparse=True)
        _check_items(int(self.gram_.shape[0]), budget, PARTIAL_FIT_COPIES)
        g = self._gram(Xv)
        g += self.gram_
        coef = getattr(self, "coef_", None)
        reuse = (isinstance(coef, np.ndarray) and coef.dtype == np.float64
                 and coef.shape == g.shape and coef.flags.writeable
                 and (coef.flags.c_contiguous or coef.flags.f_contiguous))
        out: np.ndarray = coef if reuse and isinstance(coef, np.ndarray) else np.empty_like(g)
        np.copyto(out, g)
        try:
            self.coef_ = ease_weights(out, l2, overwrite_g=True)
        except InputValueError:
            # The Gram only grows with rows, so this fails only for an l2 set since the
            # fit that the kept Gram fails too: no B is left to restore.
            del self.coef_
            raise
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
        Stored X: block tasks, one per (group of user row blocks, column panel of B),
        each scoring its rows against one panel and keeping its top n, then one merge
        task per group. B is written once to the work directory in column panels of
        about 128 MiB (cb = 128 MiB / 8n columns); a group holds about 128 MiB of
        rows × cb scores. A score task's projected memory (what ``max_task_memory``,
        4 GiB by default, is checked against before any task runs) is: the panel of
        B decoded and encoded (≤ 256 MiB), the group's row blocks (CSR: twice their
        stored size), three rows × cb float64 arrays (the scores, their copy with the
        seen items masked, the top-n selection: ≤ 384 MiB) and its (rows, 2n) output;
        a merge task its group's candidates read and merged, 5 × rows × panels × 2n floats.
        At 100,000 users × 20,000 items (239 CSR blocks): 120 score tasks of 689 MB
        and 6 merge tasks of 384 MB. X is read once per panel of B. The driver holds
        the model (2 n × n arrays) meanwhile. In-memory X is scored by slices of
        2,048 rows (2,048 × n scores).
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
