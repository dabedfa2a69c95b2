"""One pass over row-aligned X, y and weights: its spec, its lazy plan and its in-memory run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from blocklin.errors import ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.ops.inputs import (
    MatrixInput,
    as_matrix,
    reads_csr,
    row_aligned,
    row_panel_tasks,
)
from blocklin.plan.graph import Kernel, TaskContext, make_stage
from blocklin.plan.reduce import DEFAULT_FAN_IN, tree_reduce


@dataclass(frozen=True)
class PassSpec:
    """One pass: a per-panel kernel, its combine kernel, and the partial's shape."""

    op: str
    kernel: Kernel
    combine: Kernel
    part_shape: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict)
    row_floats: int = 0  # per-row working floats (copies of the panel), for memory projection
    #: The kernel keeps a CSR panel sparse (all passes but TSQR's): a CSR X is projected
    #: at its stored size and no dense m_b × p panel copy is counted.
    keeps_sparse: bool = True
    #: Per-row working floats on a CSR panel when they differ from ``row_floats`` (the
    #: moments' dense copies of ``[X y]`` do not exist there).
    sparse_row_floats: int | None = None
    #: Working bytes per task that do not grow with the panel (chunked temporaries).
    fixed_bytes: int = 0



# --------------------------------------------------------------------------- runners
def _aligned(X: MatrixInput, other: MatrixInput, what: str) -> MatrixInput:
    """``other`` (y or w) in X's row blocks, one column block (see :func:`row_aligned`)."""
    if other.shape[0] != X.shape[0]:
        raise ShapeMismatchError(f"{what} has {other.shape[0]} rows; X has {X.shape[0]}")
    return row_aligned(other, X.node.chunks[0], what)


def build_pass(spec: PassSpec, X: Any, y: Any, w: Any = None) -> Lazy:
    """The lazy result of one pass over row-aligned X, y (and weights w).

    X, y and w are read together, block row by block row, in one stage; partials are
    reduced by a fixed-order tree of fan-in 8.
    """
    xm = as_matrix(X, "X")
    ym = _aligned(xm, as_matrix(y, "y"), "y")
    inputs = [xm.input, ym.input]
    plan = xm.plan.merge(ym.plan)
    wm = None
    if w is not None:
        wm = _aligned(xm, as_matrix(w, "sample_weight"), "sample_weight")
        inputs.append(wm.input)
        plan = plan.merge(wm.plan)
    # y and w are one column block each in X's row blocks: row panels of every input.
    tasks = row_panel_tasks([xm, ym] + ([wm] if wm is not None else []))
    rows, cols = spec.part_shape
    sparse = spec.keeps_sparse and reads_csr(xm)
    if sparse:
        # The joined float64 CSR panel, a weighted copy and per-entry temporaries (three
        # times the stored panel) and the kernel's sparse products (XᵀDX's entries: at
        # most the partial's size, counted twice), never the dense m_b × p panel.
        panel = 3 * int(xm.node.block_nbytes or 0)
        per_row = spec.row_floats if spec.sparse_row_floats is None else spec.sparse_row_floats
        extra = panel + 8 * (2 * rows * cols + xm.node.chunks[0] * per_row) + spec.fixed_bytes
    else:
        extra = 8 * (rows * cols + xm.node.chunks[0] * (xm.shape[1] + spec.row_floats)) \
            + spec.fixed_bytes
    stage = make_stage(f"{spec.op}/partial", spec.kernel, inputs, tasks,
                       shape=(xm.grid[0], rows, cols), chunks=(1, rows, cols), dtype="float64",
                       params=spec.params, extra_memory=extra, keeps_sparse=sparse)
    plan, out = tree_reduce(plan.add(stage), stage.output, spec.combine, op=spec.op,
                            params=spec.params, extra_memory=8 * rows * cols)
    return Lazy(plan, out, "small", lambda v: v[0], label=spec.op)


# In-process runs have no task; the kernels here never look at their context.
_NO_CTX = cast(TaskContext, None)


def run_local(spec: PassSpec, x: Any, y: np.ndarray, w: np.ndarray | None,
              chunk_rows: int) -> np.ndarray:
    """Run a pass on in-memory arrays: the same kernels over fixed row chunks, merged in order.

    ``x`` may be a numpy array or a scipy sparse matrix (its chunks stay sparse in
    every kernel but TSQR's).
    """
    n = x.shape[0]
    parts = []
    for start in range(0, n, chunk_rows):
        sl = slice(start, min(n, start + chunk_rows))
        blocks: list[Any] = [x[sl], y[sl]]
        if w is not None:
            blocks.append(w[sl, None])
        parts.append(spec.kernel(_NO_CTX, blocks))
    # Same fixed fan-in tree as the planned path.
    while len(parts) > 1:
        parts = [spec.combine(_NO_CTX, parts[k:k + DEFAULT_FAN_IN])
                 for k in range(0, len(parts), DEFAULT_FAN_IN)]
    result: np.ndarray = parts[0][0]
    return result

