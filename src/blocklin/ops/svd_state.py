"""The persisted state of an updatable truncated SVD ``A ≈ U diag(s) Vt``.

U is never rewritten. It is a sum of *terms*, each a stored basis placed at a row
offset times a small stored factor, all times one shared k × k factor (Deng et al.'s
``U = U'·U''``):

    U = Σ_t place(B_t at rows [r_t, r_t + m_t)) · F_t · K_u,   B_t: m_t × w_t,  F_t: w_t × k

Row appends add a term at the bottom; column appends and low-rank changes add a
term spanning all rows (Householder: the orthonormal P; sparse, Deng et al.: the new
data X itself, kind ``csr``, placed over its first to last nonzero row). An update
right-multiplies K_u by a k × k matrix (the Rayleigh–Ritz rotation) and stores the
new term's ``F = G_new·K_u⁻¹``: O(k³) and two small arrays written, whatever the
number of terms or rows already seen. Each F_t is written once. When K_u's
condition number passes :data:`FOLD_COND` it is folded into the F_t (rewritten
under new names, O(T·k³)); when the terms pass a budget,
:meth:`SVDState.materialize_u` writes U as one basis (a pass over the bases,
O(m·k)). Bases stay narrow (k, or the width of the appended columns / low-rank
factor), so reading all of U costs O(m·Σw_t).

Layout of the zarr group at ``path``::

    zarr.json          group metadata; attributes["blocklin_svd_state"] names the
                       committed version, its terms and sizes (the commit record)
    U_v00000.zarr ...  the bases (BlockMatrix, dense, or CSR for a ``csr`` term; format
                       5), named by the version adding them
    F_v00000_00000 ... F_t (w_t × k), named by the version writing it and the term
    v<version>/s       (k,)         singular values
    v<version>/Vt      (k, n)       right singular vectors
    v<version>/Ku      (k, k)       the shared factor K_u
    v<version>/x_<name>             small arrays the owner keeps with the state

    log_v00012.npz     one small update (format 4: rows; 5: also columns, low-rank; see below)

V is kept the same way (Deng et al.'s ``V = V'·V''``): ``V = overlay(base, delta)·K_v``,
the base the ``Vt`` of the last *checkpoint* version ``v<c>/``, the delta the base
rows that later updates changed (row ids and rows), K_v a k × k factor. Appended
columns append zero rows to V past its base (:meth:`VFactor.padded`), held in the
delta once an update sets them.

A *checkpoint* writes the new basis, its F and ``v<version>/`` first, then replaces
``zarr.json`` atomically (the commit), then removes the previous checkpoint's
``v<c>/``, the log records and whatever the new version no longer names (folded
factors, materialized bases). A sparse row update of b rows whose changes fit the
budgets instead writes one *log record*
``log_v<version>.npz`` (numpy's non-pickled format, every member CRC-32 checked by
zip on read): s, K_u, K_v, the base rows it changed, the new rows of U (b × k, kept
in memory as a *pending* segment until the next checkpoint writes them as a basis),
the checkpoint it follows and extras when given. A sparse column or low-rank update
(format 5) writes its csr basis first and then a record naming that term with its
factor F (in place of the U rows) and V's new row count. The record's file whole is the
commit: ``zarr.json`` is not rewritten, and opening a state replays the records
``v<c+1>``, ``v<c+2>``, … after its checkpoint. Its cost is O(b·k + changed rows·k)
written, whatever n and the rows before it. A crash at any point before a commit
leaves the previous version readable (a torn last record is an unfinished update;
a bad record followed by another is corruption); the leftovers of a failed attempt
are overwritten by the next one.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse as sp

from blocklin.errors import CorruptChunkError, InputValueError, ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, row_panel_reads, source_node
from blocklin.ops.sketch import left_apply
from blocklin.plan.graph import Plan, StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.meta import METADATA_KEY
from blocklin.storage.npz import npz_arrays, npz_bytes
from blocklin.storage.sparse import CSR, to_scipy
from blocklin.storage.stores import LocalStore, join_url, store_for

__all__ = ["SVDState", "Term", "VFactor"]

_ATTR = "blocklin_svd_state"
_FORMAT = 5
#: K_u is folded into the terms' factors when its condition number passes this (the
#: new terms' ``G·K_u⁻¹`` would carry a relative rounding of about eps times it).
FOLD_COND = 1e4


@dataclass(frozen=True)
class Term:
    """One stored piece of U: basis ``basis`` (``rows`` × ``width``) placed at row ``row``."""

    basis: str
    row: int
    rows: int
    width: int
    factor: str = ""  # the stored F_t ("" until the first commit of a format-2 state)
    kind: str = "dense"  # "csr": the basis is new data kept sparse (format 5)


_NO_IDS = np.zeros(0, dtype=np.int64)
#: Recent delta layers of V kept unmerged (see :class:`VFactor`).
RECENT_LAYERS = 16


@dataclass(frozen=True, eq=False)
class VFactor:
    """Right singular vectors as ``V = overlay(base, delta)·K`` (never mutated).

    ``base`` (n × k) is shared between the versions of a state; the delta replaces
    some of its rows: a merged layer (``ids`` sorted, ``rows``) and up to
    :data:`RECENT_LAYERS` recent layers on top (newest last), so an update that
    changes r rows costs O(r·k) and a merge of the layers O(delta·k) every
    :data:`RECENT_LAYERS` updates (a log-structured merge).
    """

    base: np.ndarray
    K: np.ndarray
    ids: np.ndarray = field(default_factory=lambda: _NO_IDS)
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    recent: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    extra: int = 0  # rows of V past the base (appended columns): zero unless in the delta

    @classmethod
    def of(cls, V: np.ndarray) -> VFactor:
        """V (n × k) itself, K = I."""
        base = np.ascontiguousarray(V, dtype=np.float64)
        return cls(base, np.eye(base.shape[1]), _NO_IDS, np.zeros((0, base.shape[1])))

    @property
    def n(self) -> int:
        """Rows of V (the base's and the appended ones)."""
        return int(self.base.shape[0]) + self.extra

    def padded(self, q: int) -> VFactor:
        """V with ``q`` zero rows appended (the right vectors of appended columns): O(1)."""
        return replace(self, extra=self.extra + q)

    @property
    def delta_rows(self) -> int:
        """Base rows replaced (an upper bound while recent layers overlap)."""
        return int(self.ids.size) + sum(int(i.size) for i, _ in self.recent)

    def _layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.ids, self.rows), *self.recent]

    def gather(self, uid: np.ndarray) -> np.ndarray:
        """Rows ``uid`` of the overlaid base (a copy)."""
        nb = self.base.shape[0]
        if self.extra and uid.size and int(uid.max()) >= nb:  # appended rows start at 0
            out: np.ndarray = np.zeros((uid.size, self.base.shape[1]))
            inside = uid < nb
            out[inside] = self.base[uid[inside]]
        else:
            out = self.base[uid]
        for ids, rows in self._layers():
            if ids.size:
                pos = np.minimum(np.searchsorted(ids, uid), ids.size - 1)
                hit = ids[pos] == uid
                out[hit] = rows[pos[hit]]
        return out

    def full(self) -> np.ndarray:
        """The overlaid base (n × k, a copy): O(n·k)."""
        out = np.array(self.base, dtype=np.float64, order="C")
        if self.extra:
            out = np.vstack([out, np.zeros((self.extra, out.shape[1]))])
        for ids, rows in self._layers():
            if ids.size:
                out[ids] = rows
        return out

    def merged(self, ids: np.ndarray, rows: np.ndarray, K: np.ndarray) -> VFactor:
        """The next version: base rows ``ids`` (sorted, unique) replaced by ``rows``."""
        recent = (*self.recent, (ids, rows))
        if len(recent) <= RECENT_LAYERS:
            return VFactor(self.base, K, self.ids, self.rows, recent, self.extra)
        every = np.unique(np.concatenate([self.ids, *(i for i, _ in recent)]))
        out = np.empty((every.size, self.base.shape[1]))
        for i, r in ((self.ids, self.rows), *recent):
            out[np.searchsorted(every, i)] = r
        return VFactor(self.base, K, every, out, (), self.extra)

    @cached_property
    def matrix(self) -> np.ndarray:
        """V formed (n × k): O(n·k²), once per VFactor."""
        out: np.ndarray = self.full() @ self.K if self.delta_rows or self.extra or \
            not np.array_equal(self.K, np.eye(self.K.shape[0])) else self.base
        return out

    def orthonormal(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rayleigh–Ritz on V's rounding: ``(a, s', Vt')`` with U rotating by a.

        V = Q·R by Cholesky QR (R from VᵀV = Kᵀ·baseᵀbase·K; V is orthonormal to
        rounding, so squaring its conditioning costs nothing), the SVD of diag(s)·Rᵀ
        re-diagonalizes: V' = V·R⁻¹·B. Two n × k × k products (BLAS 3), O(n·k²).
        """
        base = self.full() if self.delta_rows or self.extra else self.base
        g = self.K.T @ (base.T @ base) @ self.K
        try:
            r = scipy.linalg.cholesky((g + g.T) / 2, lower=False)
        except np.linalg.LinAlgError:  # V lost rank: Householder QR instead
            q, r = np.linalg.qr(base @ self.K)
            a, s2, bt = np.linalg.svd(s[:, None] * r.T)
            return a, s2, bt @ q.T
        a, s2, bt = np.linalg.svd(s[:, None] * r.T)
        w = self.K @ scipy.linalg.solve_triangular(r, bt.T)
        vt: np.ndarray = (base @ w).T
        return a, s2, vt


@dataclass(frozen=True, eq=False)
class SVDState:
    """A persisted truncated SVD ``A ≈ U diag(s) Vt`` (see the module docstring).

    Obtain one with :meth:`create` or :meth:`open`; :func:`blocklin.ops.svd_update`
    returns the next one.

    Attributes
    ----------
    path : str
        The zarr group holding the state.
    s : ndarray (k,)
        Singular values, descending.
    V : VFactor
        The right singular vectors, factored (``Vt`` forms them).
    terms : tuple of Term
        U's stored bases and where they sit.
    F : tuple of ndarray
        ``F[t]`` (``terms[t].width`` × k): the stored factor of term t.
    Ku : ndarray (k, k)
        The factor shared by every term: term t's part of U is ``B_t·F_t·Ku``.
    n_rows : int
        Rows of A covered so far (m).
    version : int
        Incremented by every update.
    extras : mapping of str to ndarray
        Small arrays committed with the state (e.g. an estimator's column statistics).
    fresh : frozenset of int
        Terms whose F is not stored yet (written by :meth:`commit`).
    pending : tuple of ndarray
        U's rows appended since the last checkpoint, ``P_i`` (p_i × k, rows
        ``P_i·Ku``), after the terms' rows; written as one basis by the next checkpoint.
    log : tuple of str
        The log records committed since the last checkpoint, in order.
    checkpoint : int
        The version whose ``v<c>/`` holds V's base (and K_u's stored start).
    pending_row : int
        The row of U where the pending rows start.
    log_terms : frozenset of int
        Terms added by log records since the last checkpoint (their F is in the
        record; the next checkpoint stores it).
    """

    path: str
    s: np.ndarray
    V: VFactor
    terms: tuple[Term, ...]
    F: tuple[np.ndarray, ...]
    Ku: np.ndarray
    n_rows: int
    version: int
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    fresh: frozenset[int] = frozenset()
    pending: tuple[np.ndarray, ...] = ()
    log: tuple[str, ...] = ()
    checkpoint: int = -1
    pending_row: int = 0
    log_terms: frozenset[int] = frozenset()
    # Decoded blocks of the bases (never rewritten under their names), shared by the
    # versions of one chain of updates: what u_rows reads again is not decoded again.
    cache: _BlockCache = field(default_factory=lambda: _BlockCache(), repr=False)

    @cached_property
    def _raw_vt(self) -> np.ndarray:
        return self.V.matrix.T

    @cached_property
    def signs(self) -> np.ndarray:
        """Signs (k,) presenting V with scikit-learn's ``svd_flip`` convention.

        A checkpoint stores V sign-fixed; a logged update leaves its rotation's signs
        as they fall (fixing them needs V formed, O(n·k)). ``Vt`` and U are presented
        times these signs, which leaves ``U diag(s) Vt`` unchanged.
        """
        return column_signs(self.V.matrix)

    @property
    def Vt(self) -> np.ndarray:
        """Right singular vectors (k × n), formed from :attr:`V` (O(n·k²), cached)."""
        d = self.signs
        if (d == 1).all():
            return self._raw_vt
        out: np.ndarray = self._raw_vt * d[:, None]
        return out

    @property
    def G(self) -> tuple[np.ndarray, ...]:
        """``G[t] = F[t]·Ku`` (``terms[t].width`` × k): term t's part of U is ``B_t·G_t``."""
        ku = self.Ku * self.signs
        return tuple(f @ ku for f in self.F)

    @property
    def k(self) -> int:
        return int(self.s.size)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.V.n)

    @property
    def pending_rows(self) -> int:
        """Rows of U not yet in a stored basis (:attr:`pending`)."""
        return sum(int(p.shape[0]) for p in self.pending)

    def tail(self) -> np.ndarray:
        """The pending rows of U (``n_rows − stored_rows`` × k), presented."""
        k = self.k
        if not self.pending:
            return np.zeros((0, k))
        out: np.ndarray = np.vstack(self.pending) @ (self.Ku * self.signs)
        return out

    def basis(self, t: int) -> BlockMatrix:
        """The stored basis of term ``t``."""
        return open_matrix(join_url(self.path, self.terms[t].basis))

    def basis_urls(self) -> tuple[str, ...]:
        return tuple(self.basis(t).url for t in range(len(self.terms)))

    def u_to_numpy(self) -> np.ndarray:
        """U as one in-memory array (m × k): for tests and small problems."""
        u = np.zeros((self.n_rows, self.k))
        for t, (term, g) in enumerate(zip(self.terms, self.G, strict=True)):
            b = self.basis(t)
            rows = to_scipy(b) if b.meta.format == CSR else b.to_numpy()
            u[term.row:term.row + term.rows] += rows @ g
        # += : a sparse term spanning the pending rows adds to them
        u[self.pending_row:self.pending_row + self.pending_rows] += self.tail()
        return u

    def u_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (sorted, unique) of the raw U (before :attr:`signs`): O(|ids|·k·T).

        Reads only the bases' row blocks holding those rows (kept decoded in
        :attr:`cache` for the next version's calls) and the pending rows in memory.
        """
        k = self.k
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((ids.size, k))
        for t, term in enumerate(self.terms):
            lo, hi = np.searchsorted(ids, [term.row, term.row + term.rows])
            if lo < hi:
                out[lo:hi] += self._basis_rows(t, ids[lo:hi] - term.row) @ self.F[t]
        row = self.pending_row
        for seg in self.pending:
            lo, hi = np.searchsorted(ids, [row, row + seg.shape[0]])
            out[lo:hi] += seg[ids[lo:hi] - row]
            row += seg.shape[0]
        res: np.ndarray = out @ self.Ku
        return res

    def _basis_rows(self, t: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (sorted) of basis ``t``, dense (|local| × width)."""
        name = self.terms[t].basis
        B = self.cache.matrix(name, lambda: self.basis(t))
        c = B.chunks[0]
        out = np.empty((local.size, self.terms[t].width))
        blocks = local // c
        for i in (int(v) for v in np.unique(blocks)):
            block = self.cache.get((name, i), functools.partial(_whole_block, B, i))
            sel = np.flatnonzero(blocks == i)
            want = local[sel] - i * c
            out[sel] = _csr_rows(block, want) if sp.issparse(block) else block[want]
        return out

    def u_lazy(self, *, out: str | None = None, chunk_rows: int | None = None) -> Lazy:
        """U as a lazy m × k BlockMatrix: one pass over the bases, ``Σ_t B_t·G_t`` per block.

        Parameters
        ----------
        out : str, optional
            Where to store U (default: the run's work directory).
        chunk_rows : int, optional
            Rows per block of U (default: those of the first basis).

        Examples
        --------
        >>> U = state.u_lazy(out="U.zarr").compute()
        """
        c = chunk_rows or self.basis(0).chunks[0]
        return _term_rows(self, None, "u", c, out=out)

    def ut_dot(self, D: Any) -> Lazy:
        """``Uᵀ·D`` for D (m × q) stored row-aligned with A, lazily (a k × q numpy result).

        One pass over D and every basis; D's row blocks need not match the bases'.
        """
        return _term_rows(self, _check_rows(self, D, "D"), "utd")

    # -- persistence -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], U: Any, s: Any = None, Vt: Any = None,
               *, overwrite: bool = False,
               extras: Mapping[str, Any] | None = None) -> SVDState:
        """Persist ``U diag(s) Vt`` at ``path`` (U copied in as the first basis).

        Parameters
        ----------
        path : str or path-like
            A new zarr group (local directory or fsspec URL).
        U : BlockMatrix, ndarray or TruncatedSVDResult
            A BlockMatrix is copied block by block; with a
            :class:`~blocklin.ops.TruncatedSVDResult`, ``s`` and ``Vt`` may be None
            (its U is formed: one more pass over A).
        s, Vt : array-like
            Singular values (k,) and right singular vectors (k, n).
        overwrite : bool
            Replace whatever is at ``path``; otherwise an existing group is an error.
        extras : mapping of str to array-like, optional
            Small arrays kept with the state.

        Raises
        ------
        ShapeMismatchError
            If the shapes do not form a truncated SVD.
        FileExistsError
            If ``path`` is taken and ``overwrite`` is false.
        """
        if hasattr(U, "u_lazy") and hasattr(U, "Vt"):
            s, Vt, U = U.s, U.Vt, U.U
        s = np.asarray(s, dtype=np.float64).ravel()
        Vt = np.asarray(Vt, dtype=np.float64)
        if Vt.ndim != 2 or Vt.shape[0] != s.size or tuple(U.shape) != (U.shape[0], s.size):
            raise ShapeMismatchError(f"U {tuple(U.shape)}, s {s.shape} and Vt {Vt.shape} do not "
                                     "form a truncated SVD")
        root = os.fspath(path)
        store = store_for(root)
        if store.exists(METADATA_KEY) or store.list(""):
            if not overwrite:
                raise FileExistsError(f"{store.url} already exists; pass overwrite=True to "
                                      "replace it")
            store.delete_prefix("")
        name = basis_name(0)
        src = U.to_dask() if isinstance(U, BlockMatrix) else np.asarray(U, dtype=np.float64)
        chunks = (U.chunks[0], None) if isinstance(U, BlockMatrix) else None
        from_array(src, join_url(store.url, name), chunks=chunks)
        m = int(U.shape[0])
        k = s.size
        state = cls(store.url, s, VFactor.of(Vt.T), (Term(name, 0, m, k, factor_name(0, 0)),),
                    (np.eye(k),), np.eye(k), m, 0, _as_extras(extras or {}), frozenset({0}),
                    checkpoint=0)
        state.commit(previous=None)
        return replace(state, fresh=frozenset())

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SVDState:
        """Load the committed version of a state persisted by :meth:`create` or an update.

        Raises
        ------
        FileNotFoundError
            If no state (of this format) is at ``path``.
        CorruptChunkError
            If a log record fails its checksum.
        """
        store = store_for(os.fspath(path))
        raw = store.get(METADATA_KEY)
        doc = json.loads(raw).get("attributes", {}).get(_ATTR) if raw is not None else None
        if not isinstance(doc, dict):
            raise FileNotFoundError(f"no blocklin SVD state at {store.url}")
        fmt = doc.get("format")
        if fmt not in (2, 3, 4, _FORMAT):
            raise FileNotFoundError(f"the SVD state at {store.url} was written by an older "
                                    "blocklin (format without terms); recreate it with "
                                    "SVDState.create")
        v = int(doc["version"])
        c = int(doc.get("checkpoint", v))
        vdir = join_url(store.url, f"v{c}")
        terms = tuple(_term_of(t) for t in doc["terms"])
        # Extras a log record replaced may be absent from the checkpoint.
        extras = {name: _read(vdir, f"x_{name}") for name in doc.get("extras", [])
                  if fmt < 4 or store.exists(f"v{c}/x_{name}/{METADATA_KEY}")}
        s, V = _read(vdir, "s"), VFactor.of(_read(vdir, "Vt").T)
        if fmt == 2:  # the G_t stacked in the version: they become F_t, stored at next commit
            stacked = _read(vdir, "G")
            bounds = np.cumsum([0] + [t.width for t in terms])
            F = tuple(np.array(stacked[a:b]) for a, b in itertools.pairwise(bounds))
            terms = tuple(replace(t, factor=factor_name(v + 1, i)) for i, t in enumerate(terms))
            return cls(store.url, s, V, terms, F, np.eye(s.size), int(doc["n_rows"]), v,
                       extras, frozenset(range(len(terms))), checkpoint=v)
        F = tuple(_read(store.url, t.factor) for t in terms)
        n0 = int(doc["n_rows"])
        state = cls(store.url, s, V, terms, F, _read(vdir, "Ku"), n0, c, extras,
                    checkpoint=c, pending_row=n0)
        while (rec := state._record(store)) is not None:
            state = state._replay(rec)
        return state

    def _record(self, store: Any) -> dict[str, np.ndarray] | None:
        """The next version's log record, or None where there is none (committed).

        A record is committed once its file is whole: a torn or absent last record
        is an update that did not finish (its retry overwrites it); a bad record
        followed by another is corruption.
        """
        name = log_name(self.version + 1)
        raw = store.get(name)
        if raw is None:
            return None
        try:
            rec = npz_arrays(raw)
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as exc:
            if store.get(log_name(self.version + 2)) is None:
                return None
            raise CorruptChunkError(join_url(self.path, name), (0,), str(exc)) from exc
        if int(rec.get("checkpoint", -1)) != self.checkpoint:
            return None  # a leftover of an older checkpoint's log
        rec["name"] = np.asarray(name)
        return rec

    def _replay(self, rec: dict[str, np.ndarray]) -> SVDState:
        """This state with the log record ``rec`` applied (as its update made it)."""
        name = str(rec.pop("name"))
        ex = dict(self.extras)
        if bool(rec["extras_given"]):  # the record holds the whole set
            ex = {key[2:]: value for key, value in rec.items() if key.startswith("x_")}
        V = self.V
        if "n" in rec and int(rec["n"]) > V.n:  # appended columns: V's new rows
            V = V.padded(int(rec["n"]) - V.n)
        V = V.merged(rec["ids"], rec["rows"], rec["Kv"])
        base = replace(self, s=rec["s"], V=V, Ku=rec["Ku"], version=int(rec["version"]),
                       extras=ex, log=(*self.log, name))
        if "term" in rec:  # a column or low-rank update: one more term, F in the record
            t = len(self.terms)
            return replace(base, terms=(*self.terms, _term_of(json.loads(str(rec["term"])))),
                           F=(*self.F, rec["F"]), fresh=self.fresh | {t},
                           log_terms=self.log_terms | {t})
        if "seg" not in rec:  # V, s and the factors only
            return base
        seg = rec["seg"]
        return replace(base, n_rows=self.n_rows + int(seg.shape[0]), pending=(*self.pending, seg))

    def next_basis_url(self) -> str:
        """Where the next update writes its basis (cleared first: a failed attempt's leftover)."""
        url = join_url(self.path, basis_name(self.version + 1))
        store_for(url).delete_prefix("")
        return url

    def _doc(self, **more: Any) -> dict[str, Any]:
        return {"format": _FORMAT, "version": self.version, "n_rows": self.n_rows,
                "k": self.k, "n": self.shape[1], "extras": sorted(self.extras),
                "checkpoint": self.checkpoint,
                "terms": [_term_doc(t) for t in self.terms]} | more

    def _put_doc(self, doc: dict[str, Any]) -> None:
        meta = {"zarr_format": 3, "node_type": "group", "attributes": {_ATTR: doc}}
        store_for(self.path).put(METADATA_KEY, json.dumps(meta, indent=1).encode())

    def flushed(self) -> SVDState:
        """This version with its pending rows written as one basis (a new term, F = I)."""
        if not self.pending:
            return self
        name = rows_basis_name(self.version)
        url = join_url(self.path, name)
        store_for(url).delete_prefix("")
        from_array(np.vstack(self.pending), url)
        term = Term(name, self.pending_row, self.pending_rows, self.k,
                    factor_name(self.version, len(self.terms)))
        return replace(self, terms=(*self.terms, term), F=(*self.F, np.eye(self.k)),
                       fresh=self.fresh | {len(self.terms)}, pending=())

    def commit(self, previous: SVDState | None) -> None:
        """Checkpoint: write this version's small arrays and V, then the commit record,
        then drop ``previous``'s checkpoint, log records and unnamed arrays.

        Pending rows must have been written first (:meth:`flushed`).
        """
        import zarr
        from zarr.codecs import Crc32cCodec

        for t in sorted(self.fresh):  # each F_t once, under a name no committed term uses
            _write(join_url(self.path, self.terms[t].factor), self.F[t])
        vdir = join_url(self.path, f"v{self.version}")
        # Through blocklin's store: it carries the location's storage options.
        group = zarr.open_group(store_for(vdir).zarr_store(), mode="w")  # clears a leftover
        arrays = {"s": self.s, "Vt": self._raw_vt, "Ku": self.Ku}
        arrays |= {f"x_{name}": value for name, value in self.extras.items()}
        for name, value in arrays.items():
            group.create_array(name, data=np.ascontiguousarray(value),
                               compressors=[Crc32cCodec()])
        self._put_doc(self._doc(checkpoint=self.version))  # atomic: the commit
        store = store_for(self.path)
        if previous is not None and previous.version != self.version:
            store.delete_prefix(f"v{previous.checkpoint}")
            for name in (*previous.log, log_name(self.version)):
                store.delete_prefix(name)
            named = {t.basis for t in self.terms} | {t.factor for t in self.terms}
            for old in {t.basis for t in previous.terms} | {t.factor for t in previous.terms}:
                if old and old not in named:  # folded factors, materialized bases
                    store.delete_prefix(old)

    def commit_log(self, ids: np.ndarray, rows: np.ndarray,
                   extras_given: bool, *, adds: str = "rows") -> None:
        """Commit this version as a log record over the last checkpoint: s, K_u, K_v,
        V's rows ``ids`` changed by this update (``rows``), its pending segment (the
        last of :attr:`pending`; ``adds="rows"``) or its new term (the last of
        :attr:`terms`, its basis already written, and its F; ``adds="term"``; or
        nothing, ``adds="none"``), and,
        when ``extras_given``, the extras. One small file written, O(b·k + |ids|·k);
        the file whole is the commit (the group's ``zarr.json`` names the checkpoint,
        and opening reads the records after it, version by version)."""
        name = log_name(self.version)
        arrays = {"version": np.asarray(self.version), "checkpoint": np.asarray(self.checkpoint),
                  "s": self.s, "Ku": self.Ku, "n": np.asarray(self.V.n),
                  "Kv": self.V.K, "ids": ids, "rows": rows}
        if adds == "term":
            t = self.terms[-1]
            arrays |= {"term": np.asarray(json.dumps(_term_doc(t))), "F": self.F[-1]}
        elif adds == "rows":
            arrays["seg"] = self.pending[-1]
        arrays["extras_given"] = np.asarray(extras_given)
        if extras_given:
            arrays |= {f"x_{key}": value for key, value in self.extras.items()}
        data = npz_bytes(arrays)
        store = store_for(self.path)
        if isinstance(store, LocalStore):
            # Written in place, not renamed: a torn file is an unfinished update
            # (zip's directory and CRC-32s find it), so no rename is needed.
            with open(store.root / name, "wb") as fh:
                fh.write(data)
        else:  # object stores: a put is whole or absent
            store.put(name, data)

    def updated(self, rotation: np.ndarray, s: np.ndarray, V: np.ndarray | VFactor,
                new_term: Term | None, new_g: np.ndarray | None,
                extras: Mapping[str, Any] | None, n_rows: int,
                new_rows: np.ndarray | None = None) -> SVDState:
        """The next version: every G_t times ``rotation`` (k × k, relative to the raw,
        unsigned U), plus an optional new term with ``G = new_g`` or new pending rows
        ``new_rows`` (actual rows of U, p × k). O(k³ + w·k²) (w the new term's width);
        O(T·k³) more when K_u is folded into the T factors (condition number past
        :data:`FOLD_COND`), which leaves fresh factors to write (a checkpoint)."""
        v = self.version + 1
        ku = self.Ku @ rotation
        F, terms, fresh = list(self.F), list(self.terms), set(self.fresh)
        pending = list(self.pending)
        lu = scipy.linalg.lu_factor(ku, check_finite=False)
        # LAPACK's 1-norm condition estimate from the LU: O(k²).
        rcond = scipy.linalg.lapack.dgecon(lu[0], np.abs(ku).sum(axis=0).max())[0]
        folded = not rcond > 1.0 / FOLD_COND
        if folded:  # new names: the committed version keeps reading its own factors
            F = [f @ ku for f in F]
            pending = [p @ ku for p in pending]
            terms = [replace(t, factor=factor_name(v, i)) for i, t in enumerate(terms)]
            fresh = set(range(len(terms)))
            ku = np.eye(ku.shape[0])

        def relative(g: np.ndarray) -> np.ndarray:
            out: np.ndarray = g if folded else scipy.linalg.lu_solve(lu, g.T, trans=1).T
            return out

        if new_term is not None and new_g is not None:
            F.append(relative(new_g))
            terms.append(replace(new_term, factor=factor_name(v, len(terms))))
            fresh.add(len(terms) - 1)
        row = self.pending_row if self.pending else self.n_rows
        if new_rows is not None:
            pending.append(relative(new_rows))
        ex = self.extras if extras is None else _as_extras(extras)
        vf = V if isinstance(V, VFactor) else VFactor.of(V.T)
        return SVDState(self.path, s, vf, tuple(terms), tuple(F), ku, n_rows, v, ex,
                        frozenset(fresh), tuple(pending), self.log, self.checkpoint, row,
                        self.log_terms, self.cache)

    def closed(self) -> SVDState:
        """This version as a checkpoint stores it: V re-orthonormalized (Rayleigh–Ritz,
        O(n·k²)) and sign-fixed, U rotated alike through K_u, pending rows flushed."""
        a, s2, vt = self.V.orthonormal(self.s)
        v = np.ascontiguousarray(vt.T)
        d = column_signs(v)
        out = replace(self, s=s2, V=VFactor.of(v * d), Ku=self.Ku @ (a * d),
                      log=(), checkpoint=self.version, log_terms=frozenset())
        return out.flushed()

    def as_checkpoint(self) -> SVDState:
        """This version, pending rows flushed, to be committed as a checkpoint."""
        return replace(self, log=(), checkpoint=self.version,
                       log_terms=frozenset()).flushed()

    def materialize_u(self, run: Callable[[Lazy], Any], *,
                      chunk_rows: int | None = None) -> SVDState:
        """Write U as one basis and commit it as the next version (one term, F = Ku = I).

        One pass over every basis (O(m·Σw_t) read, m·k written), run by ``run`` (e.g.
        ``lambda lazy: lazy.compute()``); later reads of U touch one array. The old
        bases and factors are removed after the commit.
        """
        v = self.version + 1
        url = join_url(self.path, basis_name(v))
        store_for(url).delete_prefix("")
        run(self.u_lazy(out=url, chunk_rows=chunk_rows))
        k = self.k
        new = SVDState(self.path, self.s, VFactor.of(self.Vt.T),
                       (Term(basis_name(v), 0, self.n_rows, k, factor_name(v, 0)),),
                       (np.eye(k),), np.eye(k), self.n_rows, v, self.extras, frozenset({0}),
                       checkpoint=v, cache=self.cache)
        new.commit(previous=self)
        return replace(new, fresh=frozenset())


def _term_doc(t: Term) -> dict[str, Any]:
    doc: dict[str, Any] = {"basis": t.basis, "row": t.row, "rows": t.rows, "width": t.width,
                           "factor": t.factor}
    if t.kind != "dense":
        doc["kind"] = t.kind
    return doc


def _term_of(doc: Mapping[str, Any]) -> Term:
    kind = str(doc.get("kind", "dense"))
    if kind not in ("dense", CSR):
        raise FileNotFoundError(f"an SVD state term of unknown kind {kind!r} (written by a "
                                "newer blocklin)")
    return Term(str(doc["basis"]), int(doc["row"]), int(doc["rows"]), int(doc["width"]),
                str(doc.get("factor", "")), kind)


def _whole_block(B: BlockMatrix, i: int) -> Any:
    """Row block ``i`` of B: CSR as stored, dense with its column blocks joined."""
    if B.meta.format == CSR:
        return sp.csr_matrix(B.block(i, 0))
    parts = [B.block(i, j) for j in range(B.nblocks[1])]
    return parts[0] if len(parts) == 1 else np.hstack(parts)


def _csr_rows(x: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of CSR ``x`` as a dense array, from its arrays: O(their nnz + |rows|)
    (scipy's row indexing costs more in overhead than the few rows it gathers)."""
    starts, ends = x.indptr[rows], x.indptr[rows + 1]
    counts = ends - starts
    out = np.zeros((rows.size, x.shape[1]))
    total = int(counts.sum())
    if total:
        first = np.cumsum(counts) - counts  # where each row's run starts in the gather
        pos = np.arange(total) + np.repeat(starts - first, counts)
        out[np.repeat(np.arange(rows.size), counts), x.indices[pos]] = x.data[pos]
    return out


#: Bytes of decoded basis blocks an SVD state chain keeps (:attr:`SVDState.cache`).
BLOCK_CACHE_BYTES = 1 << 28


class _BlockCache:
    """Decoded blocks by key, oldest evicted first past :data:`BLOCK_CACHE_BYTES`."""

    def __init__(self) -> None:
        self._items: dict[Any, tuple[Any, int]] = {}
        self._bytes = 0
        self._open: dict[str, BlockMatrix] = {}

    def matrix(self, name: str, load: Callable[[], BlockMatrix]) -> BlockMatrix:
        """The opened basis ``name`` (its metadata read once)."""
        if name not in self._open:
            self._open[name] = load()
        return self._open[name]

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        hit = self._items.get(key)
        if hit is not None:
            return hit[0]
        value = load()
        size = int(value.data.nbytes + value.indices.nbytes + value.indptr.nbytes
                   if sp.issparse(value) else value.nbytes)
        while self._items and self._bytes + size > BLOCK_CACHE_BYTES:
            old = next(iter(self._items))
            self._bytes -= self._items.pop(old)[1]
        if size <= BLOCK_CACHE_BYTES:
            self._items[key] = (value, size)
            self._bytes += size
        return value


def column_signs(v: np.ndarray) -> np.ndarray:
    """:func:`~blocklin.ops.tsqr.row_signs` of ``v.T``, read down V's (n × k) columns."""
    d: np.ndarray = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    d[d == 0] = 1.0
    return d


def rows_basis_name(version: int) -> str:
    """The basis a checkpoint writes for the pending rows (beside a new term's)."""
    return f"U_v{version:05d}_rows.zarr"


def log_name(version: int) -> str:
    return f"log_v{version:05d}.npz"


def basis_name(version: int) -> str:
    return f"U_v{version:05d}.zarr"


def factor_name(version: int, term: int) -> str:
    return f"F_v{version:05d}_{term:05d}"


def _write(url: str, value: np.ndarray) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec

    store = store_for(url)
    store.delete_prefix("")
    zarr.create_array(store.zarr_store(), data=np.ascontiguousarray(value),
                      compressors=[Crc32cCodec()])


def _as_extras(extras: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in extras.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InputValueError(f"extras names must be identifiers; got {name!r}")
        out[name] = np.asarray(value)
    return out


def _read(vdir: str, name: str) -> np.ndarray:
    import zarr

    arr = zarr.open_array(store_for(join_url(vdir, name), read_only=True).zarr_store(), mode="r")
    return np.asarray(arr[...])


def _check_rows(state: SVDState, D: Any, what: str) -> MatrixInput:
    d = as_matrix(D, what)
    if d.shape[0] != state.n_rows:
        raise ShapeMismatchError(f"{what} must have the state's {state.n_rows} rows; got "
                                 f"{d.shape[0]}")
    return d


# -- one pass over the bases ---------------------------------------------------------------
@dataclass(frozen=True)
class _Piece:
    """Rows of one term inside one output block: reads, slab slice, output offset."""

    term: int
    nread: int
    col_blocks: int
    lo: int
    hi: int
    out_lo: int


@dataclass(frozen=True, eq=False)
class TermRows:
    """One row block of U (``Σ_t B_t[rows]·G_t``), or with D (mode ``utd``) ``Uᵢᵀ·Dᵢ``."""

    mode: str
    layout: tuple[tuple[_Piece, ...], ...]
    G: tuple[np.ndarray, ...]
    rows: tuple[int, ...]
    nd: int
    tail: np.ndarray  # the state's pending rows of U (presented), from row tail_row
    tail_row: int
    chunk: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        i = ctx.task.out[0]
        u = np.zeros((self.rows[i], self.G[0].shape[1]))
        a = i * self.chunk
        lo, hi = max(a, self.tail_row), min(a + self.rows[i], self.tail_row + len(self.tail))
        if lo < hi:
            u[lo - a:hi - a] = self.tail[lo - self.tail_row:hi - self.tail_row]
        pos = self.nd
        for p in self.layout[i]:
            own = blocks[pos:pos + p.nread]
            pos += p.nread
            parts = [hstack_panel(own[j:j + p.col_blocks])
                     for j in range(0, p.nread, p.col_blocks)]
            # A csr term (new data kept sparse) stays sparse: its rows times G are dense.
            slab: Any = sp.vstack(parts, format="csr") if any(sp.issparse(b) for b in parts) \
                else np.vstack([np.asarray(b) for b in parts])
            u[p.out_lo:p.out_lo + p.hi - p.lo] += slab[p.lo:p.hi] @ self.G[p.term]
        if self.mode == "u":
            return u
        return left_apply(u, hstack_panel(blocks[:self.nd]))[None]


def _layout(state: SVDState, bases: Sequence[BlockMatrix], c: int, first_pos: int
            ) -> tuple[list[tuple[_Piece, ...]], list[tuple[tuple[int, tuple[int, ...]], ...]]]:
    """Per output row block of ``c`` rows: the pieces of each term it overlaps and their reads."""
    layout, reads = [], []
    for a in range(0, state.n_rows, c):
        b = min(a + c, state.n_rows)
        pieces, rd = [], []
        for t, (term, B) in enumerate(zip(state.terms, bases, strict=True)):
            lo, hi = max(a, term.row) - term.row, min(b, term.row + term.rows) - term.row
            if lo >= hi:
                continue
            ct, ncb = B.chunks[0], B.nblocks[1]
            j0, j1 = lo // ct, (hi - 1) // ct
            got: list[tuple[int, tuple[int, ...]]] = [
                (first_pos + t, (j, jj)) for j in range(j0, j1 + 1) for jj in range(ncb)]
            rd.extend(got)
            pieces.append(_Piece(t, len(got), ncb, lo - j0 * ct, hi - j0 * ct,
                                 term.row + lo - a))
        layout.append(tuple(pieces))
        reads.append(tuple(rd))
    return layout, reads


def _term_rows(state: SVDState, d: MatrixInput | None, mode: str, chunk_rows: int = 0,
               out: str | None = None) -> Lazy:
    """Plan one pass over every basis (and D), one task per row block of the output."""
    bases = [state.basis(t) for t in range(len(state.terms))]
    c = d.node.chunks[0] if d is not None else chunk_rows
    nd = d.grid[1] if d is not None else 0
    layout, reads = _layout(state, bases, c, 1 if d is not None else 0)
    nblocks = len(layout)
    rows = tuple(min(c, state.n_rows - i * c) for i in range(nblocks))
    inputs = ([d.input] if d is not None else []) + [StageInput(source_node(B)) for B in bases]
    tail = state.tail()
    kernel = TermRows(mode, tuple(layout), state.G, rows, nd, tail, state.pending_row, c)
    k = state.k
    q = d.shape[1] if d is not None else k
    params = {"mode": mode, "G": list(state.G), "chunk_rows": c, "tail": tail,
              "terms": [[t.row, t.rows, t.width] for t in state.terms]}
    # U's row block and the term slabs (at most a block more than c rows each).
    extra = 3 * c * k * 8
    own = [tuple(row_panel_reads(d, 0, i)) if d is not None else () for i in range(nblocks)]
    tasks_reads = [own[i] + reads[i] for i in range(nblocks)]
    plan = d.plan if d is not None else Plan()
    if mode == "utd":
        tasks = [Task(out=(i, 0, 0), reads=r) for i, r in enumerate(tasks_reads)]
        st = make_stage("svd_state/ut_dot", kernel, inputs, tasks, shape=(nblocks, k, q),
                        chunks=(1, k, q), dtype="float64", params=params, extra_memory=extra)
        base = st.output
        full, top = tree_reduce(plan.add(st), base, SumParts(), op="svd_state/ut")
        return Lazy(full, top, "small", lambda p: np.array(p[0]), label="svd_state.ut_dot")
    tasks = [Task(out=(i, 0), reads=r) for i, r in enumerate(tasks_reads)]
    st = make_stage("svd_state/u", kernel, inputs, tasks, shape=(state.n_rows, k), chunks=(c, k),
                    dtype="float64", params=params, extra_memory=extra, out_url=out)
    return Lazy(plan.add(st), st.output, "matrix", label="svd_state.u")
