"""Updating a stored truncated SVD when rows are appended, without touching old data.

The state ``A ≈ U diag(s) Vt`` lives in a zarr group. U is never rewritten: it is
kept as row segments, each a stored basis times a small k × k projection,
``U = [B₁P₁; B₂P₂; …]``. Appending rows C (p × n) is the Zha–Simon / Brand
Rayleigh–Ritz update: with ``C = Q_C R_C`` (TSQR, one pass over C),

    [U S Vᵀ; C] = diag(U, Q_C) · [S Vᵀ; R_C]

and the SVD of the small (k + n) × n middle factor ``= Uₘ Sₘ Wₘᵀ`` gives the new
``s = Sₘ[:k]``, ``Vt = Wₘᵀ[:k]``, old projections ``Pⱼ ← Pⱼ·Uₘ[:k, :k]`` and a new
segment ``Q_C·Uₘ[k:, :k]`` (one more pass over C). Time is proportional to the new
rows plus O(n³ + segments·k³) on the driver; the old rows are never read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.errors import InputDtypeError, InputValueError, ShapeMismatchError
from blocklin.executors.api import compute
from blocklin.executors.lazy import Lazy
from blocklin.ops.tsqr import plan_form_q, plan_tree, row_signs
from blocklin.plan.graph import Task, TaskContext, make_stage
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.stores import join_url

__all__ = ["SVDState", "svd_update", "update_factors"]

_ATTR = "blocklin_svd_state"


@dataclass(frozen=True)
class SVDState:
    """A persisted truncated SVD ``A ≈ U diag(s) Vt`` (see the module docstring).

    Attributes
    ----------
    path : str
        The zarr group holding the state.
    s : ndarray (k,)
    Vt : ndarray (k, n)
    segments : tuple of str
        Row segments of U: paths (relative to ``path``) of stored bases.
    projections : ndarray (nseg, k, k)
        ``U``'s segment j is ``basis_j @ projections[j]``.
    n_rows : int
        Rows of A covered so far.
    version : int
        Incremented by every update.
    """

    path: str
    s: np.ndarray
    Vt: np.ndarray
    segments: tuple[str, ...]
    projections: np.ndarray
    n_rows: int
    version: int

    @property
    def k(self) -> int:
        return int(self.s.size)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, int(self.Vt.shape[1]))

    def basis(self, j: int) -> BlockMatrix:
        return open_matrix(join_url(self.path, self.segments[j]))

    def u_to_numpy(self) -> np.ndarray:
        """U as one in-memory array (m × k): for tests and small problems."""
        return np.vstack([self.basis(j).to_numpy() @ self.projections[j]
                          for j in range(len(self.segments))])

    # -- persistence -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], U: Any, s: Any = None, Vt: Any = None,
               *, overwrite: bool = False) -> SVDState:
        """Persist ``U diag(s) Vt`` at ``path`` (U copied in as the first segment).

        ``U`` may be a BlockMatrix (copied block by block), a numpy array, or a
        :class:`~blocklin.ops.TruncatedSVDResult` (then ``s`` and ``Vt`` may be None).
        """
        import zarr

        if hasattr(U, "u_lazy") and hasattr(U, "Vt"):
            s, Vt, U = U.s, U.Vt, U.U
        s = np.asarray(s, dtype=np.float64).ravel()
        Vt = np.asarray(Vt, dtype=np.float64)
        if Vt.ndim != 2 or Vt.shape[0] != s.size or tuple(U.shape) != (U.shape[0], s.size):
            raise ShapeMismatchError(f"U {tuple(U.shape)}, s {s.shape} and Vt {Vt.shape} do not "
                                     "form a truncated SVD")
        root = os.fspath(path)
        group = zarr.open_group(root, mode="w" if overwrite else "w-")
        seg = "U_0000.zarr"
        src = U.to_dask() if isinstance(U, BlockMatrix) else np.asarray(U, dtype=np.float64)
        chunks = (U.chunks[0], None) if isinstance(U, BlockMatrix) else None
        from_array(src, join_url(root, seg), chunks=chunks)
        state = cls(root, s, Vt, (seg,), np.eye(s.size)[None], int(U.shape[0]), 0)
        state._write(group)
        return state

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SVDState:
        """Load a state persisted by :meth:`create` or :func:`svd_update`."""
        import zarr

        root = os.fspath(path)
        group = zarr.open_group(root, mode="r")
        doc = group.attrs.get(_ATTR)
        if not isinstance(doc, dict):
            raise FileNotFoundError(f"no blocklin SVD state at {root}")
        v = int(doc["version"])
        return cls(root, _read(group, f"s_v{v}"), _read(group, f"Vt_v{v}"),
                   tuple(doc["segments"]), _read(group, f"P_v{v}"), int(doc["n_rows"]), v)

    def _write(self, group: Any) -> None:
        """New arrays first, then the attribute naming them (the commit), then cleanup."""
        v = self.version
        group.create_array(f"s_v{v}", data=self.s, overwrite=True)
        group.create_array(f"Vt_v{v}", data=self.Vt, overwrite=True)
        group.create_array(f"P_v{v}", data=self.projections, overwrite=True)
        group.attrs[_ATTR] = {"version": v, "segments": list(self.segments),
                              "n_rows": self.n_rows, "k": self.k}
        for name in list(group.array_keys()):
            if name.rsplit("_v", 1)[-1] != str(v) and name.split("_v")[0] in ("s", "Vt", "P"):
                del group[name]


def _read(group: Any, name: str) -> np.ndarray:
    import zarr

    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise FileNotFoundError(f"SVD state {name} is not an array")
    return np.asarray(arr[...])


@dataclass(frozen=True, eq=False)
class ConstantFactor:
    """A given (2c+1, c) array whose top-left block is the right factor W of ``Q·W``."""

    values: np.ndarray

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return self.values


def _rows_numpy(rows: Any, n: int) -> np.ndarray | None:
    if isinstance(rows, BlockMatrix | str | os.PathLike):
        return None
    # In-memory sparse rows: p × n with n small enough for the driver's n × n; the R
    # factor is dense anyway.
    c = np.asarray(rows.toarray()) if hasattr(rows, "tocsr") else np.asarray(rows)
    if c.dtype.kind not in "fiub":
        raise InputDtypeError(f"rows must be real-valued; got dtype {c.dtype}")
    if c.ndim != 2 or c.shape[1] != n or c.shape[0] == 0:
        raise ShapeMismatchError(f"rows must have shape (p, {n}); got {c.shape}")
    if not np.isfinite(c).all():
        raise InputValueError("rows hold NaN or infinite values")
    return c.astype(np.float64, copy=False)


def _r_of_stored(C: BlockMatrix, opts: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """R of the stored rows by TSQR (one pass) and the planned tree for forming Q·W."""
    tree = plan_tree([C], with_q=True, op="svd_update")
    c = tree.c
    lazy = Lazy(tree.plan, tree.top, "small", lambda p: np.array(p[0][:c]), label="update.R")
    return compute(lazy, **opts)[0], tree


def _write_segment_stored(tree: Any, w: np.ndarray, url: str, opts: dict[str, Any]) -> None:
    """Second pass over the new rows: their U segment ``Q_C·W``, written at ``url``."""
    c = tree.c
    values = np.zeros((2 * c + 1, c))
    values[:c, : w.shape[1]] = w
    st = make_stage("svd_update/w", ConstantFactor(values), [], [Task(out=(0, 0), reads=())],
                    shape=values.shape, chunks=values.shape, dtype="float64",
                    params={"values": values})
    lazy = plan_form_q(tree, tree.plan.add(st), st.output, op="svd_update", out=url,
                       k=w.shape[1])
    # resume: the R pass's leaves and tree are recorded complete; only Q·W runs.
    compute(lazy, resume=True, **opts)


def svd_update(state: SVDState | str | os.PathLike[str], rows: Any = None, *,
               columns: Any = None, low_rank: tuple[Any, Any] | None = None,
               executor: Any = "dask", address: str | None = None, client: Any = None,
               spark: Any = None, work_dir: str | None = None,
               max_task_memory: int | str | None = None,
               num_workers: int | None = None, device: str = "cpu") -> SVDState:
    """Update a persisted truncated SVD for appended rows, without reading the old rows.

    Parameters
    ----------
    state : SVDState or path
        A state from :meth:`SVDState.create` or an earlier update (reopened from
        zarr after a restart when given a path).
    rows : ndarray, scipy.sparse matrix, BlockMatrix (dense or CSR) or zarr path, (p, n)
        Appended rows. Stored rows are read in two passes (TSQR's R, then their U
        segment); in-memory rows are factored on the driver.
    columns, low_rank
        Appended columns and low-rank modifications: not implemented yet.
    executor, address, client, spark, work_dir, max_task_memory, num_workers, device
        As :func:`blocklin.compute` (used for stored rows).

    Returns
    -------
    SVDState
        The new state, committed to the same zarr group (the old U segments are
        reused; only their k × k projections change).

    Raises
    ------
    ShapeMismatchError
        If the rows do not have n columns.
    NotImplementedError
        For ``columns`` and ``low_rank``.

    Notes
    -----
    Cost: two passes over the new rows (p·n² flops) and an SVD of a (k + n) × n
    matrix on the driver; nothing proportional to the old rows but the
    O(segments·k³) projection updates. Exact when the whole matrix has rank ≤ k;
    otherwise each update truncates to rank k, so the error relative to a full
    recomputation grows with the mass of the discarded tail. The right space is
    kept whole (n × n on the driver), which suits tall-skinny matrices.

    References
    ----------
    Zha & Simon, "On updating problems in latent semantic indexing", SIAM J. Sci.
    Comput. 21 (1999); Brand, "Fast low-rank modifications of the thin singular
    value decomposition", Linear Algebra Appl. 415 (2006).
    """
    if columns is not None or low_rank is not None:
        raise NotImplementedError("svd_update supports appended rows only (columns and "
                                  "low_rank updates are not implemented yet)")
    if rows is None:
        raise InputValueError("svd_update needs rows= (the appended rows)")
    st = state if isinstance(state, SVDState) else SVDState.open(state)
    opts = {"executor": executor, "address": address, "client": client, "spark": spark,
            "work_dir": work_dir, "max_task_memory": max_task_memory, "num_workers": num_workers,
            "device": device}
    return _append_rows(st, rows, opts)


def update_factors(s: np.ndarray, Vt: np.ndarray,
                   r_new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The small Rayleigh–Ritz step of a row append: SVD of ``[diag(s)·Vt; R_new]``.

    Returns ``(Um, s', Vt')`` truncated to k = len(s), signs as scikit-learn's
    ``svd_flip`` on Vt'. ``R_new`` is any factor with ``R_newᵀR_new = CᵀC`` for the
    new rows C (their R from a QR). Old U rows map through ``Um[:k]``, new ones
    (``Q_C``) through ``Um[k:]``.
    """
    k = s.size
    um, sm, wt = np.linalg.svd(np.vstack([s[:, None] * Vt, r_new]), full_matrices=False)
    um, sm, wt = um[:, :k], sm[:k], wt[:k]
    d = row_signs(wt)
    return um * d, sm, wt * d[:, None]


def _append_rows(st: SVDState, rows: Any, opts: dict[str, Any]) -> SVDState:
    import zarr

    k, n = st.k, st.Vt.shape[1]
    c_mem = _rows_numpy(rows, n)
    tree = None
    if c_mem is None:
        C = rows if isinstance(rows, BlockMatrix) else open_matrix(rows)
        if C.shape[1] != n:
            raise ShapeMismatchError(f"rows must have {n} columns; got {C.shape[1]}")
        if C.shape[0] < n:  # too short for TSQR leaves: it is small, factor it here
            c_mem = C.to_numpy().astype(np.float64)
        else:
            r_c, tree = _r_of_stored(C, opts)
    if c_mem is not None:
        q_c, r_c = np.linalg.qr(c_mem)
    um, sm, wt = update_factors(st.s, st.Vt, r_c)
    seg = f"U_{len(st.segments):04d}.zarr"
    url = join_url(st.path, seg)
    if tree is not None:
        _write_segment_stored(tree, um[k:], url, opts)
    else:
        from_array(q_c @ um[k:], url, overwrite=True)
    p = rows.shape[0] if c_mem is None else c_mem.shape[0]
    new = SVDState(st.path, sm, wt, (*st.segments, seg),
                   np.concatenate([st.projections @ um[:k], np.eye(k)[None]]),
                   st.n_rows + int(p), st.version + 1)
    new._write(zarr.open_group(st.path, mode="a"))
    return new
