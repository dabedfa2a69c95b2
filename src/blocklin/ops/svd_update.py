"""Updating a stored truncated SVD for appended rows, appended columns or a low-rank change.

The state ``A ≈ U diag(s) Vt`` is an :class:`~blocklin.ops.svd_state.SVDState`: U a
sum of stored bases times small factors G_t, never rewritten. Every update is a
Rayleigh–Ritz projection onto the old factors plus an orthonormal basis of what is
new (Zha & Simon; Brand), followed by an SVD of a small middle matrix:

* rows C (p × n): ``[U S Vᵀ; C] = diag(U, Q_C)·[S Vᵀ; R_C]``; only R_C (any factor
  with ``R_CᵀR_C = CᵀC``) enters the small SVD, and the new rows' U segment
  ``Q_C·Uₘ[k:]`` equals ``C·V'·diag(1/s')``. The *gram* path gets R_C from CᵀC (one
  pass) and writes that segment (one more); the *qr* path gets R_C by TSQR; the
  *sparse* path (Deng et al.) never forms the n-wide residual ``H = C − CVVᵀ``:
  it factors ``HHᵀ = CCᵀ − LLᵀ`` (L = CV) from C's nonzeros, in batches of rows,
  with V kept as ``base·K_v`` so a batch changes only K_v and the base rows at its
  nonzero columns.
* columns D (m × q) and low-rank changes ``A + XYᵀ``: one Householder TSQR of
  ``[U X]`` (U formed from its bases in the same plan) splits
  ``X = U·M_X + P·R_X`` with P orthonormal and orthogonal to U (stored as a new
  all-rows term); Y is split alike against V in memory; the middle is
  ``[[S, 0], [0, 0]] + [M_X; R_X][M_Y; R_Y]ᵀ``. Appended columns are the change
  ``[A 0] + D·[0 I]`` with V padded by zero rows. The *sparse* path (Deng et al.,
  :mod:`blocklin.ops.svd_columns`) never forms U or the residual: ``L = UᵀX`` from
  U's rows at X's nonzero rows, the residual's Gram ``XᵀX − LᵀL`` factored, the
  middle's SVD, then ``U' = U·F + X·T_X`` (F into the shared factor, X kept as a
  sparse term) and V changed at Y's nonzero rows only (appended columns: the q new
  rows of V).

Old rows are never read by a row append, and U's terms share one k × k factor
K_u (:mod:`blocklin.ops.svd_state`), so an update's cost on the U side is O(k³)
whatever the rows and terms before it. Householder column and low-rank updates read
U's bases once (O(m·(k + q)), the new data's size when bases are narrow); sparse
ones read U's row blocks where the new data are nonzero.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal, get_args

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from blocklin.errors import InputDtypeError, InputValueError, ShapeMismatchError
from blocklin.executors.api import compute
from blocklin.executors.base import RunStats
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import ComputeOptions, OptionsLike, eager_options
from blocklin.executors.progress import operation
from blocklin.ops.svd_columns import as_csc, lowrank_sparse
from blocklin.ops.svd_rows import (
    GRAM_MAX_COLUMNS,
    ConstantFactor,
    NewRows,
    RowStep,
    Runner,
    parse_rows,
    rows_gram,
    rows_qr,
    rows_sparse,
    update_factors,
)
from blocklin.ops.svd_state import SVDState, Term, _as_extras, basis_name, log_name
from blocklin.ops.tsqr import plan_form_q, plan_tree, row_signs
from blocklin.plan.graph import Task, make_stage
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.sparse import CSR, to_scipy
from blocklin.storage.stores import join_url, store_for
from blocklin.types import parse_option

__all__ = ["UPDATE_METHODS", "SVDState", "UpdateMethod", "svd_update", "update_factors"]

UpdateMethod = Literal["auto", "gram", "qr", "sparse"]
UPDATE_METHODS: tuple[str, ...] = get_args(UpdateMethod)

_INCOMING = "incoming.zarr"  # in-memory X or D, stored for the pass over U's bases
#: Sparse row updates logged since the last checkpoint before the next one is taken
#: (opening a state replays them: one small file read each).
MAX_LOG = 1024
#: U's rows held in the log (in memory, p × k each) before a checkpoint writes them
#: as one basis.
MAX_PENDING_ROWS = 1 << 14


def svd_update(state: SVDState | str | os.PathLike[str], rows: Any = None, *,
               columns: Any = None, low_rank: tuple[Any, Any] | None = None,
               method: UpdateMethod = "auto", batch: int = 512, max_terms: int = 64,
               max_delta: int | None = None, extras: Mapping[str, Any] | None = None,
               row_gram: np.ndarray | None = None, stats: RunStats | None = None,
               compute_options: OptionsLike = None, **options: Any) -> SVDState:
    """Update a persisted truncated SVD for appended rows or columns or a low-rank change.

    Parameters
    ----------
    state : SVDState or path
        A state from :meth:`SVDState.create` or an earlier update (reopened from
        zarr after a restart when given a path).
    rows : ndarray, scipy.sparse matrix, BlockMatrix (dense or CSR) or zarr path, (p, n)
        Appended rows ``[A; C]``. The old rows and U's stored bases are not read.
    columns : ndarray, scipy.sparse matrix, BlockMatrix or zarr path, (m, q)
        Appended columns ``[A D]``, row-aligned with A (any row blocks); q <= m − k.
        In-memory D is written next to the state for the Householder pass (and
        removed); the sparse path reads D's nonzeros on the driver (CSC is taken as
        it is, so its nonzero rows cost O(nnz); CSR is converted).
    low_rank : (X, Y)
        The change ``A + X·Yᵀ``: X (m × r) as ``columns``; Y (n × r) in memory (or
        a small BlockMatrix; sparse kept sparse); r <= min(m, n) − k.
    method : {"auto", "gram", "qr", "sparse"}
        Row appends: ``gram``: CᵀC in one pass over C, R_C = Λ^½Qᵀ from its
        eigendecomposition, then the new rows' U segment ``C·V'·diag(1/s')`` in a
        second pass; about p·n² + 2pnk flops. ``qr``: Householder TSQR of C (two
        passes, ~4pn² flops), accurate whatever C's conditioning. ``sparse``:
        Deng et al.'s update in batches of ``batch`` rows from C's nonzeros (on
        the driver; V kept as base × k × k factor between batches), never forming
        an n-wide dense matrix. ``auto``: ``sparse`` for
        sparse C or n > 8192, else ``gram``. Column appends and low-rank changes:
        ``qr``: the Householder path (a pass over U's bases writing U, a TSQR of
        ``[U X]``); ``sparse``: Deng et al.'s update from X's (and Y's) nonzeros,
        committed as a log record like the sparse row path (see Notes); ``auto``:
        ``sparse`` for sparse D / X (scipy.sparse or a CSR BlockMatrix), else ``qr``.
        ``gram`` is refused for them.
    batch : int
        Rows per batch of the sparse path (consecutive rows, whatever C's row
        blocks). A batch of p rows with nnz nonzeros costs O(nnz·k + (k + p)³),
        independent of n and of the rows already absorbed; the call adds one
        O(n·k²) re-orthonormalization of V. Smaller batches are cheaper in all but
        truncate to rank k more often: with data of rank > k the result depends
        (slightly) on the batch size, as any sequence of Zha–Simon updates does.
    max_terms : int
        U's budget of stored terms: when an update leaves more, U is materialized
        as one basis (:meth:`SVDState.materialize_u`: one pass over the bases,
        O(m·k)), so opening the state and forming U stay O(m·k) and the commit
        stays small. 1 materializes after every update.
    max_delta : int, optional
        V's budget on the sparse path (default n // 2): V is kept as the stored base
        of the last checkpoint, the base rows later updates changed (the *delta*)
        and a k × k factor, and an update whose delta stays within this many rows
        commits a log record (its changed rows, the new rows of U, the small
        factors: O((b + changed rows)·k) written) instead of V; so does a sparse
        column or low-rank update (V's rows at Y's nonzero rows, or the q appended
        rows, count as changed). Past it, or when the
        factors need folding, the update is a checkpoint: V formed and
        re-orthonormalized (O(n·k²)) and stored (n·k written), the logged rows of U
        written as one basis. 0 checkpoints every update.
    extras : mapping of str to array-like, optional
        Small arrays committed with the new version (default: keep the current ones).
    row_gram : ndarray (n, n), optional
        CᵀC of the appended rows when the caller already has it (formed in a pass it
        shared with other statistics): the ``gram`` path then skips its own pass.
    stats : RunStats, optional
        Filled with the counters of every pass the update makes (blocks and arrays
        read), e.g. to check that the old bases were not read.
    compute_options : ComputeOptions or dict, optional
        Where and how the passes over stored data run
        (:class:`~blocklin.executors.options.ComputeOptions`); its ``progress`` reports
        each pass, as :func:`blocklin.ops.randomized_svd`'s.
    **options
        Fields of ComputeOptions replacing those of ``compute_options``.

    Returns
    -------
    SVDState
        The new state, committed to the same zarr group: every G_t rotated by a
        k × k matrix, one new stored term (the new rows' segment, p × k, the
        orthonormal basis P of the new column space, m × q or m × r, or on the
        sparse column / low-rank path X itself as CSR), or on the sparse paths
        within ``max_delta`` one log record (the new rows of U pending until the
        next checkpoint writes them as a basis; a sparse column or low-rank
        update's new term named in it).

    Raises
    ------
    InputValueError
        For none or several of rows/columns/low_rank, a bad method or batch, NaN or
        infinite values (found before anything is written).
    ShapeMismatchError
        If the new data's shape does not fit the state's (m, n).
    InputDtypeError
        For non-real data.

    Notes
    -----
    Row appends cost a pass or two over C plus O(n³ + k³) on the driver (gram and
    qr paths; sparse path: O(Σ_b (nnz_b·k + (k + p_b)³) + n·k²), reading C's
    nonzeros on the driver); nothing proportional to the old rows or terms, and a
    commit of s, Vt, K_u and the new term's factor (O(n·k) written). A sparse call
    of one batch within ``max_delta`` costs O(nnz·k + (k + p)³ + changed rows·k)
    and writes one log record of O((p + changed rows)·k): independent of n and of
    the rows absorbed; a checkpoint (past the budget) adds O(n·k²) and n·k written,
    once per about ``max_delta`` / (columns a call touches) calls. Householder
    (``qr``) column and low-rank updates run one plan:
    a pass over U's bases writing U (m × k, an intermediate), then TSQR of
    ``[U X]``: its R pass and its Q pass (writing P) each read U and X once,
    ~4m(k + r)² flops; driver work O((k + r)³ + n·(k + r)²).

    Sparse column appends and low-rank changes (Deng et al.; all on the driver, no
    plan run) cost O(nnz(X)·k + nnz(Y)·k + (k + r)³ + k³) (for appended columns
    nnz(Y) = q), plus reading U's row blocks that hold X's nonzero rows (kept
    decoded in the state's block cache, bounded, for the next calls), plus writing
    X's rows from its first to its last nonzero row as CSR (O(nnz) values and an
    8-byte row pointer per row of that span) and one log record of O((r + changed
    rows of V)·k): nothing proportional to m or n is computed or formed. Each adds
    a term to U (X, never multiplied out), so U's terms reach ``max_terms`` after
    that many calls and are then materialized (one O(m·k) pass). Within a call
    memory is O(nnz·k + (k + r)² + the blocks of U read).

    Accuracy: exact (to rounding) when the updated matrix has rank <= k; otherwise
    each update truncates to rank k, so the error relative to a recomputation grows
    with the mass of the discarded tail. The gram and sparse paths square the data:
    singular values below about sqrt(eps)·s₁ lose relative accuracy, and residual
    directions of the new rows below sqrt(eps)·‖C‖ are dropped. The gram path is
    used only while eps·(‖C‖₂/s'ₖ)² <= 1e-8, i.e. the orthogonality it costs U stays
    under 1e-8; otherwise (ill-conditioned or rank-deficient data with k > rank,
    where s'ₖ ~ 0 and ``1/s'`` would blow up) it falls back to the qr path, at two
    more passes over C. Column and low-rank updates orthogonalize by Householder
    reflections, so U' stays orthonormal to rounding even when X lies (nearly)
    inside span(U). The sparse column / low-rank path, like the sparse row path,
    goes through the residual's Gram ``XᵀX − LᵀL``: it squares the residual, so
    residual directions below about sqrt(eps)·‖X‖ are dropped (X inside span(U) to
    that level adds no term) and U's orthogonality degrades to about
    eps·(‖X‖/σ_min(residual))² per update (a checkpoint re-orthonormalizes V, not
    U; measured 1e-13 on unit-scale data). Every path is exact: Deng et al.'s
    approximate modes (a Golub–Kahan–Lanczos or randomized power-iteration basis of
    the residual) are not
    offered, as measured through IncSVD they did not improve the top directions'
    accuracy against the time they save (issue 17).

    Costs in the paper's terms (p new rows or q new columns, r the rank of a
    low-rank change, nnz the new data's nonzeros): sparse row append
    O(nnz·k + Σ_b (k + p_b)³) per call plus O(n·k²) once; column append and
    low-rank change O(m·(k + q)²) in two passes over U's bases and the new data,
    plus O((k + q)³ + n·(k + q)²) on the driver (``qr``), or
    O(nnz·k + (k + q)³ + k³) plus U's rows at the new data's nonzero rows
    (``sparse``); U's side of any update O(k³).

    References
    ----------
    Zha & Simon, "On updating problems in latent semantic indexing", SIAM J. Sci.
    Comput. 21 (1999); Brand, "Fast low-rank modifications of the thin singular
    value decomposition", Linear Algebra Appl. 415 (2006); Deng, Song, Li, Zhou,
    "Fast updating truncated SVD for representation learning with sparse matrices",
    ICLR 2024.

    Examples
    --------
    >>> state = SVDState.create("svd.zarr", bl.ops.randomized_svd(A, 50))
    >>> state = svd_update(state, rows=B)                 # appended rows
    >>> state = svd_update("svd.zarr", columns=D)         # after a restart
    >>> state = svd_update(state, columns=D_csc)          # sparse: Deng et al.
    >>> state = svd_update(state, low_rank=(X_csc, Y_csc), method="sparse")
    """
    opts, progress = eager_options(compute_options, options)
    with operation("svd_update", progress):
        return _update(state, rows, columns, low_rank, method, batch, max_terms, max_delta,
                       extras, row_gram, opts, stats)


def _update(state: SVDState | str | os.PathLike[str], rows: Any, columns: Any,
            low_rank: tuple[Any, Any] | None, method: str, batch: int, max_terms: int,
            max_delta: int | None, extras: Mapping[str, Any] | None,
            row_gram: np.ndarray | None, opts: ComputeOptions,
            stats: RunStats | None) -> SVDState:
    """The body of :func:`svd_update` (its arguments checked here, before any pass)."""
    if isinstance(max_terms, bool) or not isinstance(max_terms, int | np.integer) \
            or max_terms < 1:
        raise InputValueError(f"max_terms must be a positive int; got {max_terms!r}")
    if max_delta is not None and (isinstance(max_delta, bool) or not isinstance(
            max_delta, int | np.integer) or max_delta < 0):
        raise InputValueError(f"max_delta must be a non-negative int or None; got "
                              f"{max_delta!r}")
    new = _one_update(state, rows, columns, low_rank, method, batch, extras, row_gram, opts,
                      stats, max_delta)
    if len(new.terms) > max_terms:
        run = _runner(opts, stats)
        new = new.materialize_u(lambda lazy: run(lazy))
    return new


def _one_update(state: SVDState | str | os.PathLike[str], rows: Any, columns: Any,
                low_rank: tuple[Any, Any] | None, method: str, batch: int,
                extras: Mapping[str, Any] | None, row_gram: np.ndarray | None,
                opts: ComputeOptions, stats: RunStats | None,
                max_delta: int | None = None) -> SVDState:
    st = state if isinstance(state, SVDState) else SVDState.open(state)
    given = [name for name, v in (("rows", rows), ("columns", columns),
                                  ("low_rank", low_rank)) if v is not None]
    if len(given) != 1:
        raise InputValueError(f"svd_update takes exactly one of rows=, columns=, low_rank=; "
                              f"got {given or 'none'}. Apply several updates one after another")
    chosen = parse_option("method", method, UPDATE_METHODS)
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
        raise InputValueError(f"batch must be a positive int; got {batch!r}")
    if chosen == "gram" and rows is None:
        raise InputValueError("method='gram' applies to row appends; column and low-rank "
                              "updates take 'qr' (Householder TSQR), 'sparse' or 'auto'")
    ex = None if extras is None else _as_extras(extras)
    run = _runner(opts, stats)
    if rows is not None:
        c = parse_rows(rows, st.shape[1])
        if row_gram is not None and np.shape(row_gram) != (st.shape[1], st.shape[1]):
            raise ShapeMismatchError(f"row_gram must be {st.shape[1]} x {st.shape[1]}; "
                                     f"got {np.shape(row_gram)}")
        return _append_rows(st, c, chosen, int(batch), ex, run, row_gram, max_delta)
    if row_gram is not None:
        raise InputValueError("row_gram applies to row appends (rows=)")
    if columns is not None:
        D = _parse_side(columns, st.n_rows, st.k, None, "columns")
        if _sparse_side(chosen, D):
            return _lowrank_logged(st, as_csc(D, "columns"), None, ex, max_delta)
        return _append_columns(st, D, ex, run)
    if not isinstance(low_rank, tuple | list) or len(low_rank) != 2:
        raise InputValueError("low_rank must be a pair (X, Y) meaning A + X·Yᵀ")
    Y = _parse_y(low_rank[1], st.shape[1], st.k)
    X = _parse_side(low_rank[0], st.n_rows, st.k, Y.shape[1], "low_rank X")
    if _sparse_side(chosen, X):
        return _lowrank_logged(st, as_csc(X, "low_rank X"), as_csc(Y, "low_rank Y"), ex,
                               max_delta)
    return _change(st, X, np.asarray(Y.toarray() if sp.issparse(Y) else Y), ex, run)


def _runner(opts: ComputeOptions, stats: RunStats | None) -> Runner:
    def run(*results: Lazy, resume: bool = False, keep: bool | None = None) -> tuple[Any, ...]:
        one = RunStats()
        out = compute(*results, compute_options=opts, resume=resume, stats=one,
                      keep_intermediates=keep)
        if stats is not None:
            stats.merge(one)
        return out

    return run


# -- rows -----------------------------------------------------------------------------------
def _choose(method: str, c: NewRows) -> str:
    if method != "auto":
        return method
    return "sparse" if c.sparse or c.shape[1] > GRAM_MAX_COLUMNS else "gram"


def _append_rows(st: SVDState, c: NewRows, method: str, batch: int,
                 extras: Mapping[str, Any] | None, run: Runner,
                 row_gram: np.ndarray | None = None, max_delta: int | None = None,
                 max_log: int = MAX_LOG) -> SVDState:
    chosen = _choose(method, c)
    if chosen == "sparse":
        return _append_sparse(st, c, batch, extras, max_delta, max_log)
    url = st.next_basis_url()
    step: RowStep | None = None
    if chosen == "gram":
        step = rows_gram(st.s, st.Vt, c, url, run, row_gram)
    if step is None:  # qr, or gram refused for the data's conditioning
        step = rows_qr(st.s, st.Vt, c, url, run)
    k = st.k
    term = Term(basis_name(st.version + 1), st.n_rows, step.rows, k)
    # The step rotates the presented U (signs applied); K_u holds the raw one.
    new = st.updated(st.signs[:, None] * step.rotation, step.s, step.Vt, term, np.eye(k),
                     extras, st.n_rows + step.rows).as_checkpoint()
    new.commit(previous=st)
    return replace(new, fresh=frozenset())


def _append_sparse(st: SVDState, c: NewRows, batch: int, extras: Mapping[str, Any] | None,
                   max_delta: int | None, max_log: int) -> SVDState:
    """Deng et al.'s update, committed as a log record while it fits the budgets.

    A checkpoint (V formed, re-orthonormalized and stored; the pending rows of U
    written as a basis) is taken when V's base was replaced, its delta passes
    ``max_delta`` rows, the pending rows of U pass :data:`MAX_PENDING_ROWS`, the log
    passes ``max_log`` records, or K_u was folded (its factors rewritten).
    """
    step = rows_sparse(st.s, st.V, c, batch)
    p = int(step.seg.shape[0])
    new = st.updated(step.rotation, step.s, step.V, None, None, extras, st.n_rows + p,
                     new_rows=step.seg)
    n = st.shape[1]
    budget = max(1, n // 2) if max_delta is None else max_delta
    # Fresh factors other than logged terms' (K_u folded): only a checkpoint stores them.
    if (step.whole or new.fresh - new.log_terms or new.V.delta_rows > budget
            or len(st.log) >= max_log or new.pending_rows > MAX_PENDING_ROWS):
        new = new.closed()
        new.commit(previous=st)
        return replace(new, fresh=frozenset())
    new = replace(new, log=(*st.log, log_name(new.version)))
    new.commit_log(step.ids, step.rows, extras is not None)
    return new


# -- columns and low-rank changes -----------------------------------------------------------
def _sparse_side(method: str, x: Any) -> bool:
    """Whether a column or low-rank update takes the sparse path (``auto``: sparse X)."""
    if method != "auto":
        return method == "sparse"
    return bool(sp.issparse(x) or (isinstance(x, BlockMatrix) and x.meta.format == CSR))


def _lowrank_logged(st: SVDState, x: sp.csc_matrix, y: sp.csc_matrix | None,
                    extras: Mapping[str, Any] | None, max_delta: int | None,
                    max_log: int = MAX_LOG) -> SVDState:
    """Deng et al.'s column (``y`` None) or low-rank update, committed as a log record
    while it fits the budgets (as :func:`_append_sparse`): X's nonzero rows kept as a
    new CSR term, then one small record; a checkpoint past the budgets."""
    step = lowrank_sparse(st, x, y)
    term = None
    if step.basis is not None:
        url = st.next_basis_url()
        # CSR on disk, one row block, whole before the record names it.
        from_array(step.basis, url, chunks=(int(step.basis.shape[0]), None))
        term = Term(basis_name(st.version + 1), step.row0, int(step.basis.shape[0]),
                    int(step.basis.shape[1]), kind=CSR)
    new = st.updated(step.rotation, step.s, step.V, term, None if term is None else step.g,
                     extras, st.n_rows)
    t_new = frozenset({len(st.terms)}) if term is not None else frozenset()
    n = new.shape[1]
    budget = max(1, n // 2) if max_delta is None else max_delta
    if (step.whole or new.fresh - new.log_terms - t_new or new.V.delta_rows > budget
            or len(st.log) >= max_log):
        new = new.closed()
        new.commit(previous=st)
        return replace(new, fresh=frozenset())
    new = replace(new, log=(*st.log, log_name(new.version)), log_terms=new.log_terms | t_new)
    new.commit_log(step.ids, step.rows, extras is not None,
                   adds="term" if term is not None else "none")
    return new


def _parse_side(x: Any, m: int, k: int, r: int | None, what: str) -> Any:
    """A row-aligned X (m × r) or D (m × q): stored as given, or checked in memory."""
    if isinstance(x, str | os.PathLike):
        x = open_matrix(x)
    if isinstance(x, BlockMatrix):
        shape = x.shape
    else:
        x = x if sp.issparse(x) else np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise InputDtypeError(f"{what} must be real-valued; got dtype {x.dtype}")
        if x.ndim != 2:
            raise ShapeMismatchError(f"{what} must be 2-D; got shape {x.shape}")
        if not np.isfinite(x.data if sp.issparse(x) else x).all():
            raise InputValueError(f"{what} holds NaN or infinite values")
        shape = (int(x.shape[0]), int(x.shape[1]))
    want = "q" if r is None else str(r)
    if shape[0] != m or (r is not None and shape[1] != r) or shape[1] == 0:
        raise ShapeMismatchError(f"{what} must have shape ({m}, {want}) to match the state; "
                                 f"got {shape}")
    if shape[1] > m - k:
        # [U X] must be tall for its TSQR: at most m − k new columns per update.
        raise InputValueError(f"{what} has {shape[1]} columns; with {m} rows and k = {k} add at "
                              f"most {m - k} at a time")
    return x


def _parse_y(y: Any, n: int, k: int) -> Any:
    """Y (n × r) in memory: sparse kept sparse (the sparse path reads its nonzeros)."""
    if isinstance(y, str | os.PathLike | BlockMatrix):
        y = (open_matrix(y) if not isinstance(y, BlockMatrix) else y)
        y = to_scipy(y) if y.meta.format == CSR else y.to_numpy()
    y = y if sp.issparse(y) else np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise InputDtypeError(f"low_rank Y must be real-valued; got dtype {y.dtype}")
    if y.ndim != 2 or y.shape[0] != n or y.shape[1] == 0 or y.shape[1] > n - k:
        raise ShapeMismatchError(f"low_rank Y must have shape ({n}, r) with 1 <= r <= n - k = "
                                 f"{n - k}; got {y.shape}")
    if not np.isfinite(y.data if sp.issparse(y) else y).all():
        raise InputValueError("low_rank Y holds NaN or infinite values")
    return y.astype(np.float64, copy=False)


def _stored(st: SVDState, x: Any) -> tuple[BlockMatrix, str | None]:
    """X as a BlockMatrix: stored inputs as they are, in-memory ones written next to the state."""
    if isinstance(x, BlockMatrix):
        return x, None
    if sp.issparse(x):
        x = sp.csr_matrix(x)
    url = join_url(st.path, _INCOMING)
    return from_array(x, url, chunks=(st.basis(0).chunks[0], None), overwrite=True), url


def _split_against_u(st: SVDState, X: BlockMatrix, url: str,
                     run: Runner) -> tuple[np.ndarray, np.ndarray]:
    """Householder TSQR of ``[U X] = [Q₁ Q₂]·[[R₁₁, R₁₂], [0, R₂₂]]`` in one plan.

    Then ``X = U·M + P·R₂₂`` with ``M = R₁₁⁻¹R₁₂`` and ``P = Q₂`` written at ``url``.
    Householder keeps P orthogonal to U to rounding even when X is (nearly) inside
    span(U), where Gram–Schmidt's ``X − U·UᵀX`` would be cancellation noise.
    """
    k, q = st.k, X.shape[1]
    tree = plan_tree([st.u_lazy(chunk_rows=X.chunks[0]), X], with_q=True, op="svd_update")
    c = tree.c
    r_lazy = Lazy(tree.plan, tree.top, "small", lambda p: np.array(p[0][:c]), label="update.R")
    values = np.zeros((2 * c + 1, c))
    values[k:c, :q] = np.eye(q)  # Q·[0; I] = Q₂
    w = make_stage("svd_update/w", ConstantFactor(values), [], [Task(out=(0, 0), reads=())],
                   shape=values.shape, chunks=values.shape, dtype="float64",
                   params={"values": values})
    p_lazy = plan_form_q(tree, tree.plan.add(w), w.output, op="svd_update", out=url, k=q)
    r = np.triu(np.asarray(run(r_lazy, p_lazy)[0]))
    if not np.isfinite(r).all():
        store_for(url).delete_prefix("")
        raise InputValueError("the new data hold NaN or infinite values; nothing was committed")
    m = scipy.linalg.solve_triangular(r[:k, :k], r[:k, k:])
    return m, r[k:, k:]


def _append_columns(st: SVDState, D: Any, extras: Mapping[str, Any] | None,
                    run: Runner) -> SVDState:
    k = st.k
    V = st.Vt.T

    def right(w: np.ndarray) -> np.ndarray:
        # [V 0; 0 I]·W: the old right vectors, padded with the new columns' rows.
        return np.vstack([V @ w[:k], w[k:]])

    q = D.shape[1]
    return _brand(st, D, np.zeros((k, q)), np.eye(q), right, extras, run)


def _change(st: SVDState, X: Any, Y: np.ndarray, extras: Mapping[str, Any] | None,
            run: Runner) -> SVDState:
    k = st.k
    V = st.Vt.T
    # Y = V·M_Y + Q_Y·R_Y from the Householder QR of [V Y] (n × (k + r), in memory).
    q, r = np.linalg.qr(np.hstack([V, Y]))
    my = scipy.linalg.solve_triangular(r[:k, :k], r[:k, k:])
    qy, ry = q[:, k:], r[k:, k:]

    def right(w: np.ndarray) -> np.ndarray:
        return np.asarray(V @ w[:k] + qy @ w[k:])

    return _brand(st, X, my, ry, right, extras, run)


def _brand(st: SVDState, x: Any, my: np.ndarray, ry: np.ndarray,
           right: Callable[[np.ndarray], np.ndarray], extras: Mapping[str, Any] | None,
           run: Runner) -> SVDState:
    """Brand's update for ``A + X·Yᵀ`` given Y's split ``Y = V·M_Y + Q_Y·R_Y`` (``right``
    maps the middle's right vectors W to ``[V Q_Y]·W``)."""
    url = st.next_basis_url()
    X, tmp = _stored(st, x)
    try:
        mx, rx = _split_against_u(st, X, url, run)
    finally:
        if tmp is not None:
            store_for(tmp).delete_prefix("")
    k, r = st.k, rx.shape[0]
    mid = np.zeros((k + r, k + r))
    mid[:k, :k] = np.diag(st.s)
    mid += np.vstack([mx, rx]) @ np.vstack([my, ry]).T
    uk, sk, wkt = np.linalg.svd(mid)
    uk, sk, w = uk[:, :k], sk[:k], wkt[:k].T
    vt = right(w).T
    d = row_signs(vt)
    term = Term(basis_name(st.version + 1), 0, st.n_rows, r)
    # The middle rotates the presented U (signs applied); K_u holds the raw one.
    new = st.updated(st.signs[:, None] * (uk[:k] * d), sk, vt * d[:, None], term, uk[k:] * d,
                     extras, st.n_rows).as_checkpoint()
    new.commit(previous=st)
    return replace(new, fresh=frozenset())
