"""The persisted state of an updatable truncated SVD ``A ≈ U diag(s) Vt``.

U is never rewritten. It is a sum of *terms*, each a stored basis placed at a row
offset times a small stored factor, all times one shared k × k factor (Deng et al.'s
``U = U'·U''``):

    U = Σ_t place(B_t at rows [r_t, r_t + m_t)) · F_t · K_u,   B_t: m_t × w_t,  F_t: w_t × k

Row appends add a term at the bottom; column appends and low-rank changes add a
term spanning all rows. An update right-multiplies K_u by a k × k matrix (the
Rayleigh–Ritz rotation) and stores the new term's ``F = G_new·K_u⁻¹``: O(k³) and
two small arrays written, whatever the number of terms or rows already seen. Each
F_t is written once. When K_u's condition number passes :data:`FOLD_COND` it is
folded into the F_t (rewritten under new names, O(T·k³)); when the terms pass a
budget, :meth:`SVDState.materialize_u` writes U as one basis (a pass over the
bases, O(m·k)). Bases stay narrow (k, or the width of the appended columns /
low-rank factor), so reading all of U costs O(m·Σw_t).

Layout of the zarr group at ``path``::

    zarr.json          group metadata; attributes["blocklin_svd_state"] names the
                       committed version, its terms and sizes (the commit record)
    U_v00000.zarr ...  the bases (BlockMatrix, dense), named by the version adding them
    F_v00000_00000 ... F_t (w_t × k), named by the version writing it and the term
    v<version>/s       (k,)         singular values
    v<version>/Vt      (k, n)       right singular vectors
    v<version>/Ku      (k, k)       the shared factor K_u
    v<version>/x_<name>             small arrays the owner keeps with the state

An update writes the new basis, its F and ``v<version+1>/`` first, then replaces
``zarr.json`` atomically (the commit), then removes ``v<version>/`` and whatever
the new version no longer names (folded factors, materialized bases). A crash at any
point before the commit leaves the previous version readable; the leftovers of a
failed attempt are overwritten by the next one.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from blocklin.errors import InputValueError, ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops._inputs import MatrixInput, as_matrix, hstack_panel, row_panel_reads, source_node
from blocklin.ops.sketch import left_apply
from blocklin.plan.graph import Plan, StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.meta import METADATA_KEY
from blocklin.storage.stores import join_url, store_for

__all__ = ["SVDState", "Term"]

_ATTR = "blocklin_svd_state"
_FORMAT = 3
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
    Vt : ndarray (k, n)
        Right singular vectors (rows).
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
    """

    path: str
    s: np.ndarray
    Vt: np.ndarray
    terms: tuple[Term, ...]
    F: tuple[np.ndarray, ...]
    Ku: np.ndarray
    n_rows: int
    version: int
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    fresh: frozenset[int] = frozenset()

    @property
    def G(self) -> tuple[np.ndarray, ...]:
        """``G[t] = F[t]·Ku`` (``terms[t].width`` × k): term t's part of U is ``B_t·G_t``."""
        return tuple(f @ self.Ku for f in self.F)

    @property
    def k(self) -> int:
        return int(self.s.size)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, int(self.Vt.shape[1]))

    def basis(self, t: int) -> BlockMatrix:
        """The stored basis of term ``t``."""
        return open_matrix(join_url(self.path, self.terms[t].basis))

    def basis_urls(self) -> tuple[str, ...]:
        return tuple(self.basis(t).url for t in range(len(self.terms)))

    def u_to_numpy(self) -> np.ndarray:
        """U as one in-memory array (m × k): for tests and small problems."""
        u = np.zeros((self.n_rows, self.k))
        for t, (term, g) in enumerate(zip(self.terms, self.G, strict=True)):
            u[term.row:term.row + term.rows] += self.basis(t).to_numpy() @ g
        return u

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
        state = cls(store.url, s, Vt, (Term(name, 0, m, k, factor_name(0, 0)),), (np.eye(k),),
                    np.eye(k), m, 0, _as_extras(extras or {}), frozenset({0}))
        state.commit(previous=None)
        return state

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SVDState:
        """Load the committed version of a state persisted by :meth:`create` or an update.

        Raises
        ------
        FileNotFoundError
            If no state (of this format) is at ``path``.
        """
        store = store_for(os.fspath(path))
        raw = store.get(METADATA_KEY)
        doc = json.loads(raw).get("attributes", {}).get(_ATTR) if raw is not None else None
        if not isinstance(doc, dict):
            raise FileNotFoundError(f"no blocklin SVD state at {store.url}")
        fmt = doc.get("format")
        if fmt not in (2, _FORMAT):
            raise FileNotFoundError(f"the SVD state at {store.url} was written by an older "
                                    "blocklin (format without terms); recreate it with "
                                    "SVDState.create")
        v = int(doc["version"])
        vdir = join_url(store.url, f"v{v}")
        terms = tuple(Term(str(t["basis"]), int(t["row"]), int(t["rows"]), int(t["width"]),
                           str(t.get("factor", ""))) for t in doc["terms"])
        extras = {name: _read(vdir, f"x_{name}") for name in doc.get("extras", [])}
        s, Vt = _read(vdir, "s"), _read(vdir, "Vt")
        if fmt == 2:  # the G_t stacked in the version: they become F_t, stored at next commit
            stacked = _read(vdir, "G")
            bounds = np.cumsum([0] + [t.width for t in terms])
            F = tuple(np.array(stacked[a:b]) for a, b in itertools.pairwise(bounds))
            terms = tuple(replace(t, factor=factor_name(v + 1, i)) for i, t in enumerate(terms))
            return cls(store.url, s, Vt, terms, F, np.eye(s.size), int(doc["n_rows"]), v,
                       extras, frozenset(range(len(terms))))
        F = tuple(_read(store.url, t.factor) for t in terms)
        return cls(store.url, s, Vt, terms, F, _read(vdir, "Ku"), int(doc["n_rows"]), v, extras)

    def next_basis_url(self) -> str:
        """Where the next update writes its basis (cleared first: a failed attempt's leftover)."""
        url = join_url(self.path, basis_name(self.version + 1))
        store_for(url).delete_prefix("")
        return url

    def commit(self, previous: SVDState | None) -> None:
        """Write this version's small arrays, then the commit record, then drop ``previous``'s."""
        import zarr
        from zarr.codecs import Crc32cCodec

        for t in sorted(self.fresh):  # each F_t once, under a name no committed term uses
            _write(join_url(self.path, self.terms[t].factor), self.F[t])
        vdir = join_url(self.path, f"v{self.version}")
        # Through blocklin's store: it carries the location's storage options.
        group = zarr.open_group(store_for(vdir).zarr_store(), mode="w")  # clears a leftover
        arrays = {"s": self.s, "Vt": self.Vt, "Ku": self.Ku}
        arrays |= {f"x_{name}": value for name, value in self.extras.items()}
        for name, value in arrays.items():
            group.create_array(name, data=np.ascontiguousarray(value),
                               compressors=[Crc32cCodec()])
        doc = {"format": _FORMAT, "version": self.version, "n_rows": self.n_rows,
               "k": self.k, "n": int(self.Vt.shape[1]), "extras": sorted(self.extras),
               "terms": [{"basis": t.basis, "row": t.row, "rows": t.rows, "width": t.width,
                          "factor": t.factor} for t in self.terms]}
        meta = {"zarr_format": 3, "node_type": "group", "attributes": {_ATTR: doc}}
        store = store_for(self.path)
        store.put(METADATA_KEY, json.dumps(meta, indent=1).encode())  # atomic: the commit
        if previous is not None and previous.version != self.version:
            store.delete_prefix(f"v{previous.version}")
            named = {t.basis for t in self.terms} | {t.factor for t in self.terms}
            for old in {t.basis for t in previous.terms} | {t.factor for t in previous.terms}:
                if old and old not in named:  # folded factors, materialized bases
                    store.delete_prefix(old)

    def updated(self, rotation: np.ndarray, s: np.ndarray, Vt: np.ndarray,
                new_term: Term | None, new_g: np.ndarray | None,
                extras: Mapping[str, Any] | None, n_rows: int) -> SVDState:
        """The next version: every G_t times ``rotation`` (k × k), plus an optional new term
        with ``G = new_g``. O(k³ + w·k²) (w the new term's width); O(T·k³) more when
        K_u is folded into the T factors (condition number past :data:`FOLD_COND`)."""
        v = self.version + 1
        ku = self.Ku @ rotation
        F, terms, fresh = list(self.F), list(self.terms), set(self.fresh)
        lu = scipy.linalg.lu_factor(ku, check_finite=False)
        # LAPACK's 1-norm condition estimate from the LU: O(k²).
        rcond = scipy.linalg.lapack.dgecon(lu[0], np.abs(ku).sum(axis=0).max())[0]
        folded = not rcond > 1.0 / FOLD_COND
        if folded:  # new names: the committed version keeps reading its own factors
            F = [f @ ku for f in F]
            terms = [replace(t, factor=factor_name(v, i)) for i, t in enumerate(terms)]
            fresh = set(range(len(terms)))
            ku = np.eye(ku.shape[0])
        if new_term is not None and new_g is not None:
            f_new = new_g if folded else scipy.linalg.lu_solve(lu, new_g.T, trans=1).T
            F.append(f_new)
            terms.append(replace(new_term, factor=factor_name(v, len(terms))))
            fresh.add(len(terms) - 1)
        ex = self.extras if extras is None else _as_extras(extras)
        return SVDState(self.path, s, Vt, tuple(terms), tuple(F), ku, n_rows, v, ex,
                        frozenset(fresh))

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
        new = SVDState(self.path, self.s, self.Vt,
                       (Term(basis_name(v), 0, self.n_rows, k, factor_name(v, 0)),),
                       (np.eye(k),), np.eye(k), self.n_rows, v, self.extras, frozenset({0}))
        new.commit(previous=self)
        return new


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

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        i = ctx.task.out[0]
        u = np.zeros((self.rows[i], self.G[0].shape[1]))
        pos = self.nd
        for p in self.layout[i]:
            own = blocks[pos:pos + p.nread]
            pos += p.nread
            slab = np.vstack([np.asarray(hstack_panel(own[j:j + p.col_blocks]))
                              for j in range(0, p.nread, p.col_blocks)])
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
    kernel = TermRows(mode, tuple(layout), state.G, rows, nd)
    k = state.k
    q = d.shape[1] if d is not None else k
    params = {"mode": mode, "G": list(state.G), "chunk_rows": c,
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
