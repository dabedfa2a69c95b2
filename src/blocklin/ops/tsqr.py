"""Tall-skinny QR (TSQR): Householder QR per row block, then a fixed-order tree of QRs.

The tree combines the R factors of consecutive leaves in index order (fan-in 8), so
R is bitwise identical on every executor. Q is never formed by ``A R⁻¹`` (which
loses orthogonality as ``eps·cond(A)``): a second pass recomputes each leaf's
Householder Q and multiplies it by its path of small tree factors, so
``‖QᵀQ − I‖`` stays at a few ulps times n whatever the conditioning.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import scipy.linalg
from array_api_compat import is_cupy_namespace

from blocklin.errors import InputValueError, ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops import _lapack as lapack
from blocklin.ops._xp import as_dtype, concat, triu
from blocklin.ops.inputs import (
    MatrixInput,
    as_matrix,
    hstack_panel,
    reads_csr,
)
from blocklin.ops.sketch import dense, right_apply
from blocklin.plan.device import is_sparse, like, namespace, sparse_module
from blocklin.plan.graph import (
    ArrayNode,
    Plan,
    RowPanelTasks,
    StageInput,
    Task,
    TaskContext,
    TaskSet,
    make_stage,
)
from blocklin.plan.reduce import tree_levels
from blocklin.types import BlockIndex

__all__ = ["QR", "SVDFactors", "svd", "tsqr", "tsqr_r"]

FAN_IN = 8


class QR(NamedTuple):
    """Lazy TSQR factors; ``Q, R = bl.compute(*bl.ops.tsqr(A))`` runs both in one plan."""

    Q: Lazy
    R: Lazy

    def compute(self, **kwargs: Any) -> tuple[Any, np.ndarray]:
        """Run both factors (options as :func:`blocklin.compute`): (BlockMatrix, numpy)."""
        from blocklin.executors.api import compute

        q, r = compute(self.Q, self.R, **kwargs)
        return q, r


class SVDFactors(NamedTuple):
    """Lazy thin SVD factors ``A = U diag(s) Vt``; compute them together with ``bl.compute``."""

    U: Lazy
    s: Lazy
    Vt: Lazy

    def compute(self, **kwargs: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        """Run all three factors in one plan: (BlockMatrix, numpy, numpy)."""
        from blocklin.executors.api import compute

        u, s, vt = compute(self.U, self.s, self.Vt, **kwargs)
        return u, s, vt


# -- kernels --------------------------------------------------------------------------
def _panel(blocks: Sequence[Any], widths: tuple[int, ...], nrow_blocks: int) -> Any:
    """Stack the row panels of every input (``widths[k]`` column blocks each).

    Dense blocks give a float64 array on their device; if any block is sparse (CSR)
    the panel stays CSR, for a product with the right factor that keeps it sparse.
    """
    rows = []
    pos = 0
    for _ in range(nrow_blocks):
        parts = []
        for w in widths:
            parts.append(hstack_panel(blocks[pos:pos + w]))
            pos += w
        rows.append(concat(parts, axis=1))
    a = concat(rows, axis=0)
    if is_sparse(a):
        return sparse_module(a).csr_matrix(a, dtype=np.float64)
    return as_dtype(a, "float64")


def _device_qr(a: Any, mode: str) -> Any:
    """R (``mode="r"``) or Q (``"q"``) of the reduced QR of a dense array off the host:
    cuSOLVER's Householder ``geqrf`` (+ ``orgqr``) on a GPU, the namespace's
    ``linalg.qr`` otherwise. Both passes of TSQR call it alike, so a leaf's Q and R
    come from one factorization rule."""
    xp = namespace(a)
    if is_cupy_namespace(xp):
        import cupy

        # cupy's mode="r" skips forming Q (orgqr) where only R is wanted.
        return cupy.linalg.qr(a, mode="r") if mode == "r" else cupy.linalg.qr(a)[0]
    qr = xp.linalg.qr(a)
    return qr[0] if mode == "q" else qr[1]


#: Column block of LAPACK's compact-WY Householder QR (``dgeqrt``), whose panels factor
#: recursively with BLAS-3 products: on panels at least this wide it runs 2-4x faster
#: than ``dgeqrf`` (scipy's ``qr``), which factors 32-column panels, and everything
#: narrower than its crossover of 128 columns, one column at a time with BLAS-2 (16,384 x
#: 502 on one core: 0.46-0.51 s against 0.96-1.19 s; 65,536 x 64: 0.13 s against 0.35 s).
#: 48 to 128 measured alike. Narrower panels keep ``dgeqrf`` and its exact rounding.
QR_BLOCK = 48


def _blocked(a: np.ndarray) -> bool:
    """Whether :func:`householder_r` and :func:`_q_times` factor ``a`` by ``dgeqrt``."""
    return bool(min(a.shape) >= QR_BLOCK)


def _geqrt(a: np.ndarray, overwrite: bool) -> tuple[np.ndarray, np.ndarray]:
    """LAPACK ``dgeqrt`` of a (without the GIL, :mod:`blocklin.ops._lapack`): reflectors
    below the diagonal and R on and above it (Fortran order), and the block reflector
    factors T. With ``overwrite`` a Fortran-ordered float64 ``a`` is factored in place,
    otherwise a copy is."""
    f = a if overwrite and a.dtype == np.float64 and a.flags.f_contiguous \
        and a.flags.writeable else np.array(a, dtype=np.float64, order="F")
    return lapack.dgeqrt(f, min(QR_BLOCK, *a.shape))


def householder_r(a: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Upper-trapezoidal Householder R (min(m, n) × n) of a nonempty ``a``: LAPACK
    ``dgeqrt`` when both sides are at least ``QR_BLOCK``, ``dgeqrf`` otherwise.

    With ``overwrite`` a Fortran-ordered float64 ``a`` may be factored in place (the
    caller's buffer is then garbage); otherwise ``a`` is left as it is.
    """
    k = min(a.shape)
    if type(a) is not np.ndarray:  # a GPU (or test-namespace) panel
        r: np.ndarray = triu(_device_qr(a, "r")[:k, ...])  # the namespace's array
        return r
    if _blocked(a):
        return np.triu(_geqrt(a, overwrite)[0][:k])
    # LAPACK dgeqrf with its optimal workspace, as scipy's ``qr`` calls it (the same
    # bits), without the full m × n copy of R that ``qr(mode="r")`` returns.
    f = a if overwrite and a.dtype == np.float64 and a.flags.f_contiguous \
        else np.array(a, dtype=np.float64, order="F")
    geqrf = scipy.linalg.lapack.dgeqrf
    lwork = int(geqrf(f, lwork=-1)[2][0])
    qr, _, _, info = geqrf(f, lwork=max(lwork, 1), overwrite_a=1)
    if info != 0:
        raise ValueError(f"LAPACK dgeqrf failed (info={info}) on a {a.shape} panel")
    return np.triu(qr[:k])


def _r_factor(a: np.ndarray) -> np.ndarray:
    """Householder R (n × n; callers guarantee m ≥ n) by the same LAPACK routine as
    :func:`_q_times`, so both passes of TSQR factor a leaf alike."""
    return householder_r(a)


def _q_times(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``Q @ m`` (m: n × k) for the Householder QR of ``a`` (the routine of
    :func:`_r_factor`), applied by LAPACK ``dgemqrt`` or ``dormqr``: Q is never formed
    on the host (a GPU panel forms its reduced Q and multiplies)."""
    if type(a) is not np.ndarray:
        qm: np.ndarray = _device_qr(a, "q") @ like(m, a)  # the namespace's array
        return qm
    if not _blocked(a):
        y: np.ndarray = scipy.linalg.qr_multiply(a, m, mode="left")[0]
        return y
    vr, t = _geqrt(a, overwrite=False)
    c = np.zeros((a.shape[0], m.shape[1]), order="F")
    c[: m.shape[0]] = m
    return lapack.dgemqrt(vr, t, c)


def _q_and_r(a: Any) -> tuple[Any, Any]:
    """Thin Householder Q (rows × c) and R of a leaf panel, by the reflectors that
    :func:`_r_factor` and :func:`_q_times` use, from one factorization."""
    c = a.shape[1]
    if type(a) is not np.ndarray:
        return _device_qr(a, "q"), triu(_device_qr(a, "r")[:c, ...])
    if not _blocked(a):
        q, r = scipy.linalg.qr(a, mode="economic", check_finite=False)
        return q, r
    vr, t = _geqrt(a, overwrite=False)
    eye = np.zeros((a.shape[0], c), order="F")
    eye[np.arange(c), np.arange(c)] = 1.0
    return lapack.dgemqrt(vr, t, eye), np.triu(vr[:c])


def _qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, r = scipy.linalg.qr(a, mode="economic", check_finite=False)
    return q, r


@dataclass(frozen=True, eq=False)
class LeafInput:
    """How a leaf builds its panel: inputs' column-block counts and an optional ``A X - 1μᵀ``."""

    widths: tuple[int, ...]
    right: np.ndarray | None = None
    shift: np.ndarray | None = None

    def panel(self, blocks: Sequence[Any], nrow_blocks: int) -> Any:
        a = _panel(blocks, self.widths, nrow_blocks)
        if self.right is not None:
            a = right_apply(a, self.right)
        elif is_sparse(a):
            a = a.toarray()
        if self.shift is not None:
            a = a - like(self.shift, a)
        return a


@dataclass(frozen=True, eq=False)
class LeafR:
    """R of one leaf (one or more consecutive row blocks), as a (1, c, c) part."""

    leaf: LeafInput
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        nrb = len(blocks) // sum(self.leaf.widths)
        return _r_factor(self.leaf.panel(blocks, nrb))[None, ...]


@dataclass(frozen=True, eq=False)
class LeafProject:
    """R of one leaf's ``Y = (A − 1μᵀ)·right`` and the projection ``Qᵀ(A − 1μᵀ)`` of its
    rows on the leaf's Householder Q, as a (1, c + n, c) part: rows ``[0, c)`` R, rows
    ``[c, c + n)`` the transposed projection ``(A − 1μᵀ)ᵀQ``."""

    leaf: LeafInput
    mean: np.ndarray | None
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        nrb = len(blocks) // sum(self.leaf.widths)
        a = _panel(blocks, self.leaf.widths, nrb)
        y = right_apply(a, self.leaf.right)
        if self.leaf.shift is not None:
            y = y - like(self.leaf.shift, y)
        q, r = _q_and_r(y)
        wt = a.T @ q
        if self.mean is not None:
            wt = wt - like(self.mean, q)[:, None] * q.sum(axis=0)[None, :]
        return concat([r, dense(wt)], axis=0)[None, ...]


@dataclass(frozen=True)
class TreeQR:
    """QR of stacked R parts; with ``with_q`` the part also carries the stacked Q factor.

    Output part layout: rows ``[0, c)`` hold R; rows ``[c(1+p), c(2+p))`` hold the
    block of Q multiplying input part p.
    """

    c: int
    with_q: bool
    project: int = 0

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        c, n = self.c, self.project
        stacked = np.vstack([b[0][:c] for b in blocks])
        if not self.with_q:
            return _r_factor(stacked)[None]
        q, r = _qr(stacked)
        out = np.zeros(((FAN_IN + 1) * c + n, c))
        out[:c] = r
        out[c:c + q.shape[0]] = q
        if n:
            # The projections below the children's R: Σ_p Wₚᵀ·Qₚ, in child order.
            wt = out[(FAN_IN + 1) * c:]
            for p, b in enumerate(blocks):
                wt += b[0][-n:] @ q[p * c:(p + 1) * c]
        return out[None]


@dataclass(frozen=True, eq=False)
class Finish:
    """From the top R: the right factor W applied to Q, and R (qr) or s, Vt (svd).

    Layout ``(2c+1, c)``: rows ``[0, c)`` W, ``[c, 2c)`` R or Vt, row ``2c`` s. In svd
    mode signs follow scikit-learn's ``svd_flip(u_based_decision=False)`` on the
    right singular vectors ``Vt·rightᵀ``, so results are deterministic.
    """

    c: int
    mode: str
    right: np.ndarray | None = None
    project: int = 0

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        c = self.c
        if self.mode == "project":
            return self._project(blocks[0][0])
        r = blocks[0][0][:c]
        out = np.zeros((2 * c + 1, c))
        if self.mode == "svd":
            ur, s, vt = np.linalg.svd(r)
            d = row_signs(vt if self.right is None else vt @ self.right.T)
            out[:c], out[c:2 * c], out[2 * c] = ur * d, vt * d[:, None], s
        else:
            d = _signs(r)
            out[:c] = np.diag(d)
            out[c:2 * c] = d[:, None] * r
        return out

    def _project(self, part: np.ndarray) -> np.ndarray:
        """SVD of the projection ``B = QᵀA`` (c × n) carried up the tree: rows ``[0, c)``
        its left vectors (Q's right factor, for U), row c the values, rows below Vtᵀ."""
        c, n = self.c, self.project
        b = part[-n:].T
        ub, s, vt = np.linalg.svd(b, full_matrices=False)
        d = row_signs(vt)
        out = np.zeros((c + 1 + n, c))
        out[:c, :ub.shape[1]] = ub * d
        out[c, :s.size] = s
        out[c + 1:, :vt.shape[0]] = (vt * d[:, None]).T
        return out


def row_signs(v: np.ndarray) -> np.ndarray:
    """Signs making each row's largest-magnitude entry positive (scikit-learn's svd_flip)."""
    d: np.ndarray = np.sign(v[np.arange(v.shape[0]), np.argmax(np.abs(v), axis=1)])
    d[d == 0] = 1.0
    return d


def _signs(r: np.ndarray) -> np.ndarray:
    """Signs making R's diagonal nonnegative (the unique QR of a full-rank matrix)."""
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    return d


@dataclass(frozen=True, eq=False)
class FormQ:
    """One row block of Q·W: recompute its leaf's Householder Q, apply the tree path and W."""

    leaf: LeafInput
    c: int
    leaves: Leaves
    chunk_rows: int
    levels: int
    k: int
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        c = self.c
        i = ctx.task.out[0]
        g = self.leaves.of(i)
        lo, hi = self.leaves[g]
        nread = (hi - lo) * sum(self.leaf.widths)
        # The small factor first (tree path times W: c × k), then the leaf's Householder
        # reflectors applied to it (LAPACK ormqr): Q itself (rows × c) is never formed.
        m = blocks[nread + self.levels][:c, :self.k]
        for level in reversed(range(self.levels)):
            p = (g // FAN_IN**level) % FAN_IN
            m = blocks[nread + level][0, c * (1 + p):c * (2 + p), :] @ m
        y = _q_times(self.leaf.panel(blocks[:nread], hi - lo), m)
        start = (i - lo) * self.chunk_rows
        return y[start:min(start + self.chunk_rows, y.shape[0]), ...]


# -- planning -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tree:
    """A planned TSQR: leaves (row-block ranges), tree levels, and the top part."""

    plan: Plan
    inputs: tuple[MatrixInput, ...]
    leaf: LeafInput
    c: int
    leaves: Leaves
    levels: tuple[ArrayNode, ...]
    top: ArrayNode
    project: int = 0


@dataclass(frozen=True)
class Leaves(Sequence[tuple[int, int]]):
    """TSQR's leaves: consecutive row-block ranges of ``per`` blocks (the last one
    takes the rest, or joins its predecessor when it would hold fewer than c rows, so
    every leaf R is c × c). A rule, not a list: a plan of a million blocks holds four
    integers, and the leaf of a block is a division.
    """

    nblocks: int
    per: int
    size: int

    @classmethod
    def plan(cls, nblocks: int, chunk_rows: int, nrows: int, c: int) -> Leaves:
        per = -(-c // chunk_rows)
        size = -(-nblocks // per)
        if size > 1 and nrows - (size - 1) * per * chunk_rows < c:
            size -= 1
        return cls(nblocks, per, size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, g: Any) -> Any:
        if isinstance(g, slice):
            return [self[k] for k in range(self.size)[g]]
        if not 0 <= g < self.size:
            raise IndexError(f"leaf {g} of {self.size}")
        return (g * self.per, self.nblocks if g == self.size - 1 else (g + 1) * self.per)

    def of(self, i: int) -> int:
        """The leaf holding row block ``i``."""
        return min(i // self.per, self.size - 1)

    def max_blocks(self) -> int:
        last = self.nblocks - (self.size - 1) * self.per
        return max(last, min(self.per, self.nblocks))

    def describe(self) -> dict[str, int]:
        """What names a plan (content names, provenance)."""
        return {"nblocks": self.nblocks, "per": self.per, "count": self.size}


def _panel_reads(panels: tuple[tuple[int, int], ...], lo: int,
                 hi: int) -> tuple[tuple[int, BlockIndex], ...]:
    """Every column block of row blocks lo..hi-1 of each input, row by row."""
    return tuple((p, (i, j)) for i in range(lo, hi) for p, n in panels for j in range(n))


@dataclass(frozen=True, eq=True)
class LeafTasks(TaskSet):
    """Leaf g reads the row panels of its row blocks and writes R block (g, 0, 0)."""

    leaves: Leaves
    panels: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.leaves)

    def task(self, pos: int) -> Task:
        return Task(out=(pos, 0, 0), reads=_panel_reads(self.panels, *self.leaves[pos]))

    def position(self, out: BlockIndex) -> int | None:
        ok = len(out) == 3 and 0 <= out[0] < len(self) and not any(out[1:])
        return int(out[0]) if ok else None

    def _one_block_each(self) -> bool:
        return self.leaves.per == 1 and len(self.leaves) == self.leaves.nblocks

    def signature(self, names: Sequence[str]) -> Hashable:
        if self._one_block_each():  # as row panels: fuses with other one-pass stages
            return RowPanelTasks(len(self), self.panels).signature(names)
        widths = sorted({names[p]: n for p, n in self.panels}.items())
        return ("leaf-panels", self.leaves.describe()["per"], self.leaves.nblocks,
                len(self), tuple(widths))

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for p, n in self.panels:
            out[names[p]] = max(out.get(names[p], 0), n * self.leaves.nblocks)
        return out

    def every_task_reads(self) -> bool:
        return any(n for _, n in self.panels)


@dataclass(frozen=True, eq=True)
class FormQTasks(TaskSet):
    """Row block i of Q reads its leaf's row panels, the tree parts on its leaf's path
    (inputs ``ninputs + level``) and the finish block, and writes block (i, 0)."""

    leaves: Leaves
    panels: tuple[tuple[int, int], ...]
    levels: int

    def __len__(self) -> int:
        return self.leaves.nblocks

    def task(self, pos: int) -> Task:
        g = self.leaves.of(pos)
        n = len(self.panels)
        reads = _panel_reads(self.panels, *self.leaves[g])
        reads += tuple((n + lv, (g // FAN_IN**(lv + 1), 0, 0)) for lv in range(self.levels))
        reads += ((n + self.levels, (0, 0)),)
        return Task(out=(pos, 0), reads=reads)

    def position(self, out: BlockIndex) -> int | None:
        ok = len(out) == 2 and 0 <= out[0] < len(self) and out[1] == 0
        return int(out[0]) if ok else None

    def signature(self, names: Sequence[str]) -> Hashable:
        return ("form-q", self.leaves.describe()["per"], self.leaves.nblocks, len(self.leaves),
                self.levels, tuple(names[p] for p, _ in self.panels),
                tuple(names[len(self.panels):]))

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        n = len(self.panels)
        out: dict[str, int] = {}
        for p, w in self.panels:
            out[names[p]] = max(out.get(names[p], 0), w * self.leaves.nblocks)
        parts = len(self.leaves)
        for lv in range(self.levels):
            parts = -(-parts // FAN_IN)
            out[names[n + lv]] = parts
        out[names[n + self.levels]] = 1
        return out

    def every_task_reads(self) -> bool:
        return True


def _check_inputs(mats: Sequence[Any]) -> tuple[MatrixInput, ...]:
    ms = tuple(as_matrix(a, "A" if k == 0 else f"matrix {k}") for k, a in enumerate(mats))
    first = ms[0]
    for k, m in enumerate(ms[1:], 1):
        if m.shape[0] != first.shape[0] or m.node.chunks[0] != first.node.chunks[0]:
            raise ShapeMismatchError(
                f"tsqr: matrix {k} must have A's rows and row blocks ({first.shape[0]} rows in "
                f"blocks of {first.node.chunks[0]}); got {m.shape[0]} in blocks of "
                f"{m.node.chunks[0]}. Store it with bl.from_array(x, path, "
                f"chunks=({first.node.chunks[0]}, None))")
    return ms


def _panels(ms: Sequence[MatrixInput]) -> tuple[tuple[int, int], ...]:
    """(input position, column blocks) of each input, as row panels are read."""
    return tuple((p, m.grid[1]) for p, m in enumerate(ms))


def _keeps_sparse(ms: Sequence[MatrixInput], right: np.ndarray | None) -> bool:
    """Leaves keep CSR panels sparse when every input is read as CSR and a right factor
    is applied (``A·right``); otherwise the panel is densified for LAPACK."""
    return right is not None and all(reads_csr(m) for m in ms)


def plan_tree(mats: Sequence[Any], *, with_q: bool, right: np.ndarray | None = None,
              shift: np.ndarray | None = None, op: str = "tsqr", project: bool = False,
              mean: np.ndarray | None = None) -> _Tree:
    """Plan the R pass and the tree for the column-concatenation of ``mats`` (times ``right``).

    With ``project`` (and ``right``; ``mean`` μ with ``shift = μᵀ·right``) every part
    also carries the projection ``Qᵀ(A − 1μᵀ)`` of the rows below it on its Q, so the top
    holds ``QᵀA`` for the whole of A: the range finder's ``B`` in the same pass as R
    (:func:`plan_finish` mode ``"project"``).
    """
    ms = _check_inputs(mats)
    nrows = ms[0].shape[0]
    ncols = sum(m.shape[1] for m in ms)
    c = ncols if right is None else right.shape[1]
    if right is not None and right.shape[0] != ncols:
        raise ShapeMismatchError(f"{op}: right factor has {right.shape[0]} rows; A has {ncols} "
                                 "columns")
    if nrows < c:
        raise InputValueError(f"{op} needs a tall matrix (rows >= columns); got {nrows} x {c}. "
                              "Factor the transpose instead")
    chunk_rows = ms[0].node.chunks[0]
    leaves = Leaves.plan(ms[0].grid[0], chunk_rows, nrows, c)
    leaf = LeafInput(tuple(m.grid[1] for m in ms), right, shift)
    tasks = LeafTasks(leaves, _panels(ms))
    # LAPACK's working copy of the panel (or of A·right) and R: rows × (n + 2c) at most;
    # CSR panels times ``right`` stay sparse (their blocks are counted as read).
    sparse = _keeps_sparse(ms, right)
    leaf_rows = leaves.max_blocks() * chunk_rows
    wide = ncols if project else 0
    if project and right is None:
        raise InputValueError(f"{op}: a projecting TSQR needs a right factor")
    # With a projection the leaf also holds its thin Q (rows × c) and (A − 1μᵀ)ᵀQ.
    panel_bytes = leaf_rows * ((0 if sparse else ncols) + (3 if project else 2) * c) * 8 \
        + 2 * wide * c * 8
    plan = Plan().merge(*(m.plan for m in ms))
    params = {"c": c, "right": right, "shift": shift, "leaves": leaves.describe(),
              **({"project": True, "mean": mean} if project else {})}
    kernel = LeafProject(leaf, mean) if project else LeafR(leaf)
    stage = make_stage(f"{op}/leaf_r", kernel, [m.input for m in ms], tasks,
                       shape=(len(leaves), c + wide, c), chunks=(1, c + wide, c),
                       dtype="float64", params=params, extra_memory=panel_bytes,
                       keeps_sparse=sparse)
    plan = plan.add(stage)
    if project and not with_q:
        raise InputValueError(f"{op}: a projecting TSQR keeps the tree's Q")
    rows = ((FAN_IN + 1) * c if with_q else c) + wide
    plan, levels = tree_levels(plan, stage.output, TreeQR(c, with_q, wide), op=op,
                               params={**params, "with_q": with_q}, fan_in=FAN_IN,
                               extra_memory=3 * (FAN_IN + 1) * c * c * 8 + 2 * rows * c * 8,
                               part_shape=(rows, c), level_name="tree")
    top = levels[-1] if levels else stage.output
    return _Tree(plan, ms, leaf, c, leaves, levels, top, wide)


def plan_finish(tree: _Tree, mode: str, op: str = "tsqr") -> tuple[Plan, ArrayNode]:
    """Append the one-task stage deriving W and R (or s, Vt) from the top R.

    Mode ``"project"`` (a tree planned with ``project``) takes the SVD of the carried
    ``B = QᵀA`` instead: layout ``(c + 1 + n, c)``, rows ``[0, c)`` W (B's left
    vectors), row c the singular values, rows below ``Vtᵀ`` (n × c).
    """
    c, n = tree.c, tree.project
    if (mode == "project") != bool(n):
        raise InputValueError(f"{op}: finish mode {mode!r} does not match the planned tree")
    rows = c + 1 + n if n else 2 * c + 1
    st = make_stage(f"{op}/finish", Finish(c, mode, tree.leaf.right, n), [StageInput(tree.top)],
                    [Task(out=(0, 0), reads=((0, (0, 0, 0)),))], shape=(rows, c),
                    chunks=(rows, c), dtype="float64",
                    params={"mode": mode, "top": tree.top.name},
                    extra_memory=6 * c * c * 8 + 4 * n * c * 8)
    return tree.plan.add(st), st.output


def plan_form_q(tree: _Tree, plan: Plan, finish: ArrayNode, op: str = "tsqr",
                out: str | None = None, k: int | None = None) -> Lazy:
    """Append the pass forming Q·W[:, :k] block by block (W from the finish stage)."""
    ms, c = tree.inputs, tree.c
    k = c if k is None else k
    chunk_rows = ms[0].node.chunks[0]
    tasks = FormQTasks(tree.leaves, _panels(ms), len(tree.levels))
    kernel = FormQ(tree.leaf, c, tree.leaves, chunk_rows, len(tree.levels), k)
    inputs = [m.input for m in ms] + [StageInput(lv) for lv in tree.levels] + [StageInput(finish)]
    ncols = sum(m.shape[1] for m in ms)
    leaf_rows = tree.leaves.max_blocks() * chunk_rows
    sparse = _keeps_sparse(ms, tree.leaf.right)
    st = make_stage(f"{op}/form_q", kernel, inputs, tasks, shape=(ms[0].shape[0], k),
                    chunks=(chunk_rows, k), dtype="float64",
                    params={"leaves": tree.leaves.describe(), "right": tree.leaf.right, "k": k,
                            "shift": tree.leaf.shift, "finish": finish.name},
                    extra_memory=leaf_rows * ((0 if sparse else ncols) + 3 * c) * 8,
                    out_url=out, keeps_sparse=sparse)
    return Lazy(plan.add(st), st.output, "matrix", label=f"{op}.Q")


def tsqr(A: Any, *, out: str | None = None) -> QR:
    """Tall-skinny QR ``A = Q R`` by a tree of Householder QRs, lazily.

    Parameters
    ----------
    A : BlockMatrix, path, lazy matrix or view (``center``/``standardize``)
        An m × n matrix with m ≥ n; n × n must fit in a task's memory.
    out : str, optional
        Where to store Q (default: the run's work directory).

    Returns
    -------
    QR
        ``(Q, R)`` lazy results: Q an m × n BlockMatrix with A's row blocks and
        orthonormal columns, R an n × n upper-triangular numpy array with a
        nonnegative diagonal. ``Q, R = bl.compute(*bl.ops.tsqr(A))``.

    Raises
    ------
    InputValueError
        If A is wider than tall.

    Notes
    -----
    Two passes over A. Pass 1 computes the R of each leaf (consecutive row blocks
    holding at least n rows) by Householder QR (LAPACK ``geqrf``); a fixed-order
    tree of fan-in 8 factors the stacked R's, keeping each level's small Q factors.
    Pass 2 recomputes each leaf's Householder Q and multiplies it by its path of
    tree factors, so ``‖QᵀQ − I‖`` is O(eps·n) even for condition numbers near
    1e12 (unlike CholeskyQR or ``A R⁻¹``). Per-task memory: a leaf panel, its Q
    and the tree path (``levels`` n × n blocks).

    References
    ----------
    Demmel, Grigori, Hoemmen, Langou, "Communication-optimal parallel and sequential
    QR and LU factorizations", SIAM J. Sci. Comput. 34 (2012).

    Examples
    --------
    >>> Q, R = bl.compute(*bl.ops.tsqr(A))
    """
    tree = plan_tree([A], with_q=True)
    plan, finish = plan_finish(tree, "qr")
    q = plan_form_q(tree, plan, finish, out=out)
    c = tree.c
    r = Lazy(plan, finish, "small", lambda f: np.array(f[c:2 * c]), label="tsqr.R")
    return QR(q, r)


def tsqr_r(A: Any, *others: Any) -> Lazy:
    """R of the tall-skinny QR of ``[A, *others]`` (column concatenation), in one pass.

    Parameters
    ----------
    A : BlockMatrix, path, lazy matrix or view
        An m × n₀ matrix.
    *others : same kinds
        More m-row matrices with A's row blocks (e.g. the label column y), joined
        to A's columns inside each task: ``tsqr_r(X, y)`` factors ``[X y]`` without
        writing it.

    Returns
    -------
    Lazy
        Computes to the n × n upper-triangular R (n = total columns) with a
        nonnegative diagonal; ``RᵀR = [A …]ᵀ[A …]`` to working precision.

    Notes
    -----
    One pass over the inputs plus a tree of small QRs on the R factors. Unlike
    the Gram matrix, R carries the conditioning of ``[A …]`` rather than its
    square, which is what least-squares solvers need. Per-task memory: a leaf
    panel (consecutive row blocks holding at least n rows) and a copy.

    Examples
    --------
    >>> R = bl.ops.tsqr_r(X, y).compute()
    """
    tree = plan_tree([A, *others], with_q=False)
    c = tree.c

    def present(p: np.ndarray) -> np.ndarray:
        r = np.triu(np.asarray(p)[0][:c])
        out: np.ndarray = _signs(r)[:, None] * r
        return out

    return Lazy(tree.plan, tree.top, "small", present, label="tsqr_r")


def svd(A: Any, *, out: str | None = None) -> SVDFactors:
    """Exact thin SVD ``A = U diag(s) Vt`` of a tall-skinny matrix, through TSQR.

    Parameters
    ----------
    A : BlockMatrix, path, lazy matrix or view
        An m × n matrix with m ≥ n; n × n must fit in a task's memory.
    out : str, optional
        Where to store U (default: the run's work directory).

    Returns
    -------
    SVDFactors
        Lazy ``(U, s, Vt)``: U m × n BlockMatrix, s (n,) descending, Vt n × n.

    Notes
    -----
    Two passes over A (TSQR's R pass, then the pass forming ``U = Q·U_R``);
    computing only ``s`` and ``Vt`` takes one pass. The SVD of the n × n R factor
    runs on one task (LAPACK ``gesdd``); accuracy is that of a backward-stable SVD
    of A: singular values to ``eps·σ₁`` absolute, unlike Gram-based ones which lose
    small singular values to ``eps·σ₁²/σ``.

    Examples
    --------
    >>> U, s, Vt = bl.compute(*bl.ops.svd(A))
    """
    tree = plan_tree([A], with_q=True, op="svd")
    plan, finish = plan_finish(tree, "svd", op="svd")
    u = plan_form_q(tree, plan, finish, op="svd", out=out)
    c = tree.c
    s = Lazy(plan, finish, "small", lambda f: np.array(f[2 * c]), label="svd.s")
    vt = Lazy(plan, finish, "small", lambda f: np.array(f[c:2 * c]), label="svd.Vt")
    return SVDFactors(u, s, vt)
