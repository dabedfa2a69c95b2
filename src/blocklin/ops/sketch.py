"""Random sketches of block matrices: SA (a tree reduction) and AΩ (a BlockMatrix)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.lazy import Lazy
from blocklin.ops._random import (
    GRANULE_ROWS,
    SIDES,
    SKETCH_KINDS,
    SketchKind,
    SketchSpec,
    sketch_rows,
)
from blocklin.ops._xp import as_dtype, to_dense
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, row_panel_tasks
from blocklin.plan.device import is_sparse, like
from blocklin.plan.graph import TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.types import parse_option

__all__ = ["SKETCH_KINDS", "SketchKind", "sketch"]

Side = Literal["left", "right"]


def dense(x: Any) -> Any:
    """A product's result as a float64 dense array on its device (sparse·sparse products
    come back sparse)."""
    return as_dtype(to_dense(x), "float64")


def as_float64(a: Any) -> Any:
    """A block or panel as float64, dense or CSR as given (no copy when already float64)."""
    if is_sparse(a):
        return a.astype(np.float64) if a.dtype != np.float64 else a
    return as_dtype(a, "float64")


def left_apply(st: Any, a: Any) -> Any:
    """(Sᵀ)ᵀ·A for Sᵀ (r × k) and A (r × n), either of them sparse: a k × n dense array
    on A's device (a host Sᵀ is copied there)."""
    a = as_float64(a)
    st = like(st, a)
    if is_sparse(a):
        if is_sparse(st):
            return dense(st.T @ a)
        # csr.T is CSC: (n × r)·(r × k) without densifying A; cost nnz(A)·k.
        return dense(a.T @ st).T
    if is_sparse(st):
        return dense(st.T @ a)
    return st.T @ a


def right_apply(a: Any, omega: Any) -> Any:
    """A·Ω for A (r × n) and Ω (n × k), either of them sparse: an r × k dense array on
    A's device (a host Ω is copied there)."""
    a = as_float64(a)
    omega = like(omega, a)
    if is_sparse(a):
        return dense(a @ omega)
    if is_sparse(omega):
        # (Ωᵀ·Aᵀ)ᵀ keeps the sparse operand on the left, where scipy multiplies it.
        return dense(omega.T @ a.T).T
    return a @ omega


@dataclass(frozen=True)
class LeftSketchPartial:
    """S[:, rows]·Aᵢ for one row panel; the rows of S are regenerated, not read.

    Sᵀ's rows are drawn on the host from the counter-based stream and copied to the
    panel's device: the same S on every device, by construction.
    """

    spec: SketchSpec
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        start, stop = ctx.row_range(0, ctx.task.reads[0][1])
        return left_apply(sketch_rows(self.spec, start, stop), hstack_panel(blocks))[None, ...]


@dataclass(frozen=True)
class RightSketchPanel:
    """Aᵢ·Ω for one row panel; Ω (n × k) is regenerated in the task (on the host, as
    :class:`LeftSketchPartial` draws S) and copied to the panel's device."""

    spec: SketchSpec
    ncols: int
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return right_apply(hstack_panel(blocks), sketch_rows(self.spec, 0, self.ncols))


def parse_sketch_args(k: Any, kind: Any, seed: Any, s: Any, m: MatrixInput,
                      side: str = "left") -> SketchSpec:
    """Validate sketch arguments into a :class:`SketchSpec` (before any compute)."""
    kind = parse_option("kind", kind, SKETCH_KINDS)
    for name, value in (("k", k), ("seed", seed), ("s", s)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InputDtypeError(f"sketch {name} must be an int; got {value!r}")
    if k < 1:
        raise InputValueError(f"sketch size k must be at least 1; got {k}")
    if seed < 0:
        raise InputValueError(f"seed must be a non-negative int; got {seed}")
    if s < 1:
        raise InputValueError(f"sparse_sign needs s >= 1 nonzeros per column; got {s}")
    if m.dtype.kind not in "fiub":
        raise InputDtypeError(f"sketch needs a real-valued matrix; got {m.dtype}")
    return SketchSpec(kind=kind, k=int(k), seed=int(seed), side=SIDES[side], s=int(s))


def _granule_memory_rows(spec: SketchSpec) -> int:
    """Rows of k floats a task holds while drawing one granule: the granule, plus the
    cached Hadamard rows (srht) or the uniform draws deciding P's nonzeros (fjlt)."""
    return GRANULE_ROWS * (2 if spec.kind in ("srht", "fjlt") else 1)


def _params(spec: SketchSpec) -> dict[str, Any]:
    return {"kind": spec.kind, "k": spec.k, "seed": spec.seed, "s": spec.s,
            "granule": GRANULE_ROWS}


def left_sketch_node(A: Any, k: int, kind: str = "gaussian", seed: int = 0,
                     s: int = 8) -> Lazy:
    """SA as a lazy ``(1, k, n)`` array (the raw reduction output)."""
    m = as_matrix(A)
    spec = parse_sketch_args(k, kind, seed, s, m, "left")
    n, r = m.shape[1], m.node.chunks[0]
    tasks = row_panel_tasks([m])
    # Sᵀ rows of the panel (+ one granule while slicing) and the k × n partial.
    extra = 8 * spec.k * (r + _granule_memory_rows(spec) + n) + (
        m.node.chunk_nbytes * m.grid[1] if m.grid[1] > 1 else 0)
    stage = make_stage("sketch/partial", LeftSketchPartial(spec), [m.input], tasks,
                       shape=(m.grid[0], spec.k, n), chunks=(1, spec.k, n), dtype="float64",
                       params=_params(spec), extra_memory=extra, keeps_sparse=True)
    plan, out = tree_reduce(m.plan.add(stage), stage.output, SumParts(), op="sketch",
                            params=_params(spec))
    return Lazy(plan, out, "small", label=f"sketch[{spec.kind}]")


def sketch(A: Any, k: int, kind: SketchKind = "gaussian", seed: int = 0,
           side: Side = "left", *, s: int = 8, out: str | None = None) -> Lazy:
    """A random sketch of A: SA (``side="left"``) or AΩ (``side="right"``), lazily.

    Parameters
    ----------
    A : BlockMatrix, path, lazy matrix or view, dense or sparse (CSR blocks)
        An m × n matrix.
    k : int
        Sketch size. Errors of sketched products shrink like 1/√k; a subspace
        embedding of d dimensions with distortion ε needs k ≈ d/ε² (gaussian,
        rademacher, srht and fjlt up to log factors, sparse_sign with s ≈ 8) or ≈ d²/ε²
        (countsketch).
    kind : {"gaussian", "rademacher", "sparse_sign", "countsketch", "srht", "fjlt"}
        The random matrix; see :mod:`blocklin.ops._random` for each construction.
        Every kind has E[SᵀS] = I.
    seed : int
        Non-negative seed. The same seed gives the same S on any executor, worker
        count or chunking (the matrix is generated per granule of 4096 rows).
    side : {"left", "right"}
        ``left``: S is k × m and the result SA is a k × n numpy array. ``right``:
        Ω is n × k and the result AΩ is an m × k BlockMatrix with A's row blocks.
    s : int
        Nonzeros per column for ``sparse_sign`` (default 8).
    out : str, optional
        Where to store AΩ (``side="right"`` only; default the work directory).

    Returns
    -------
    Lazy
        Computes to SA (k × n float64 ndarray) or AΩ (BlockMatrix, m × k float64).

    Raises
    ------
    InputValueError
        For an unknown kind or side, k < 1 or a negative seed.
    InputDtypeError
        For non-integer k, seed or s, and in-memory (unstored) A.

    Notes
    -----
    One pass over A. S is never stored: each task regenerates the columns of S
    matching its rows from a counter-based Philox stream keyed by (seed, kind, side,
    granule). Left: each task forms S[:, rows]·Aᵢ (dense kinds by one GEMM, 2kn
    flops per row; sparse kinds s·n per row; sparse A nnz·k), and partials are summed
    in a fixed-order tree of fan-in 8, so results are bitwise identical on every
    executor for a given chunking, and equal to rounding (≈1e-15 relative) across
    chunkings. Per-task memory: a row panel, (rows + 4096) × k for S and k × n
    (another 4096 × k for ``srht``'s Hadamard rows and ``fjlt``'s draws). ``fjlt``
    forms each granule of Sᵀ by a fast Walsh–Hadamard transform of its sparse
    Gaussian factor (4096·k·12 additions); ``srht`` beyond k = 4096 samples the
    rows of a Hadamard matrix of order the next power of two ≥ k.
    Right: each task regenerates Ω (n × k) and writes one m_i × k block.
    Sparse blocks are never densified.

    References
    ----------
    Woodruff, "Sketching as a Tool for Numerical Linear Algebra", 2014.
    Balabanov, Beaupère, Grigori, Lederer, "Block subsampled randomized Hadamard
    transform for low-rank approximation on distributed architectures", 2022.
    Ailon, Chazelle, "The fast Johnson–Lindenstrauss transform and approximate
    nearest neighbors", SIAM J. Comput. 39(1), 2009 (``fjlt``).

    Examples
    --------
    >>> SA = bl.ops.sketch(A, 200, kind="sparse_sign", seed=1).compute()
    >>> Y = bl.ops.sketch(A, 20, side="right").compute()   # BlockMatrix, m × 20
    """
    side = parse_option("side", side, get_args(Side))
    if side == "left":
        if out is not None:
            raise InputValueError("out= stores the right sketch AΩ; SA is a small array")
        lazy = left_sketch_node(A, k, kind, seed, s)
        return Lazy(lazy.plan, lazy.output, "small", lambda p: p[0], label=lazy.label)
    m = as_matrix(A)
    spec = parse_sketch_args(k, kind, seed, s, m, "right")
    n, r = m.shape[1], m.node.chunks[0]
    tasks = row_panel_tasks([m], out_ndim=2)
    extra = 8 * spec.k * (n + _granule_memory_rows(spec)) + (
        m.node.chunk_nbytes * m.grid[1] if m.grid[1] > 1 else 0)
    stage = make_stage("sketch_right/panel", RightSketchPanel(spec, n), [m.input], tasks,
                       shape=(m.shape[0], spec.k), chunks=(r, spec.k), dtype="float64",
                       params=_params(spec), extra_memory=extra, out_url=out,
                       keeps_sparse=True)
    return Lazy(m.plan.add(stage), stage.output, "matrix", label=f"sketch_right[{spec.kind}]")
