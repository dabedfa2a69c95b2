"""Turning operator arguments into plan inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.lazy import Lazy
from blocklin.ops._xp import concat
from blocklin.plan.graph import (
    Affine,
    ArrayNode,
    Plan,
    RowPanelTasks,
    StageInput,
    Task,
    TaskSet,
)
from blocklin.storage.blockmatrix import BlockMatrix, Transposed, open_matrix
from blocklin.types import BlockIndex

__all__ = ["MatrixInput", "MatrixView", "as_matrix", "reads_csr"]


@dataclass(frozen=True)
class MatrixView:
    """A stored or planned matrix seen through a lazy per-column affine transform."""

    plan: Plan
    node: ArrayNode
    transform: Affine | None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.node.shape[0], self.node.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype("float64")

    @property
    def chunks(self) -> tuple[int, int]:
        return (self.node.chunks[0], self.node.chunks[1])


@dataclass(frozen=True)
class MatrixInput:
    """A matrix operand: the plan producing it (empty for stored ones) and how it is read."""

    plan: Plan
    input: StageInput

    @property
    def node(self) -> ArrayNode:
        return self.input.array

    @property
    def shape(self) -> tuple[int, int]:
        return (self.node.shape[0], self.node.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        if self.input.transform is not None:
            return np.dtype("float64")
        return np.dtype(self.node.dtype)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.node.grid
        return (g[0], g[1])


def source_node(A: BlockMatrix) -> ArrayNode:
    return ArrayNode.from_meta(A.meta, A.fingerprint)


def as_matrix(x: Any, what: str = "A") -> MatrixInput:
    """Accept a BlockMatrix, a zarr path, a lazy matrix result or a view.

    Raises
    ------
    InputDtypeError
        For in-memory arrays (store them with ``bl.from_array`` first) and other types.
    """
    if isinstance(x, str | os.PathLike):
        x = open_matrix(x)
    if isinstance(x, BlockMatrix):
        return MatrixInput(Plan(), StageInput(source_node(x)))
    if isinstance(x, MatrixView):
        return MatrixInput(x.plan, StageInput(x.node, x.transform))
    if isinstance(x, Lazy):
        if x.kind != "matrix" or len(x.shape) != 2:
            raise InputDtypeError(f"{what} must be a matrix; got a small result of shape {x.shape}")
        return MatrixInput(x.plan, StageInput(x.output))
    if isinstance(x, Transposed):
        raise InputValueError(f"{what} is a transpose; only matmul(A.T, B) reads A transposed")
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        raise InputDtypeError(f"{what} is an in-memory {type(x).__name__}; store it first with "
                              "bl.from_array(x, path)")
    raise InputDtypeError(f"{what} must be a BlockMatrix, a zarr path or a lazy matrix; "
                          f"got {type(x).__name__}")


def reads_csr(m: MatrixInput) -> bool:
    """Whether m's blocks reach kernels as CSR: a stored sparse matrix read without a
    transform (a centering or scaling view densifies each block as read)."""
    return m.node.block_nbytes is not None and m.input.transform is None


def row_panel_reads(m: MatrixInput, position: int, row_block: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Reads of every column block of one row block (a row panel)."""
    return tuple((position, (row_block, j)) for j in range(m.grid[1]))


def row_panel_tasks(ms: Sequence[MatrixInput], out_ndim: int = 3) -> RowPanelTasks:
    """One task per row block of ``ms[0]``, reading that row panel of each of ``ms``
    (input positions in order), by rule: no task is built until it is asked for."""
    return RowPanelTasks(ms[0].grid[0], tuple((p, m.grid[1]) for p, m in enumerate(ms)),
                         out_ndim)


def hstack_panel(blocks: Any) -> Any:
    """Join the column blocks of a row panel (no copy for a single block); sparse stays
    sparse; on the blocks' device (numpy, CuPy or any array namespace)."""
    return concat(blocks, axis=1)


@dataclass(frozen=True, eq=True)
class RowRangeTasks(TaskSet):
    """Task ``i`` writes row block ``i`` (of ``out_rows`` rows) of a one-column-block
    output, reading every column block of the input's row blocks (of ``in_rows`` rows)
    that overlap its rows: a rule, so a plan holds no per-block task list."""

    nrows: int
    out_rows: int
    in_rows: int
    ncol_blocks: int

    def __len__(self) -> int:
        return -(-self.nrows // self.out_rows)

    def _span(self, pos: int) -> range:
        lo, hi = pos * self.out_rows, min((pos + 1) * self.out_rows, self.nrows)
        return range(lo // self.in_rows, (hi - 1) // self.in_rows + 1)

    def task(self, pos: int) -> Task:
        return Task((pos, 0), tuple((0, (j, c)) for j in self._span(pos)
                                    for c in range(self.ncol_blocks)))

    def position(self, out: BlockIndex) -> int | None:
        ok = len(out) == 2 and out[1] == 0 and 0 <= out[0] < len(self)
        return int(out[0]) if ok else None

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        nblocks = -(-self.nrows // self.in_rows)
        return {names[0]: nblocks * self.ncol_blocks} if self.nrows else {}

    def every_task_reads(self) -> bool:
        return True


@dataclass(frozen=True)
class RowSlice:
    """Kernel of :func:`row_aligned`: the rows of one output block, cut from the input's
    row blocks (all their column blocks) that overlap them."""

    def __call__(self, ctx: Any, blocks: Sequence[Any]) -> Any:
        start, stop = _out_rows(ctx)
        first = ctx.task.reads[0][1][0]
        in_rows = ctx.inputs[0].chunks[0]
        ncol_blocks = ctx.inputs[0].grid[1]
        panels = [hstack_panel(blocks[i:i + ncol_blocks])
                  for i in range(0, len(blocks), ncol_blocks)]
        joined = panels[0] if len(panels) == 1 else np.vstack([np.asarray(p) for p in panels])
        offset = start - first * in_rows
        return np.ascontiguousarray(np.asarray(joined, dtype=ctx.output.dtype)
                                    [offset:offset + stop - start])


def _out_rows(ctx: Any) -> tuple[int, int]:
    rows = ctx.output.chunks[0]
    start = ctx.task.out[0] * rows
    return start, min(start + rows, ctx.output.shape[0])


def row_aligned(m: MatrixInput, rows: int, what: str) -> MatrixInput:
    """``m`` read in row blocks of ``rows`` rows and one column block.

    A narrow operand (a label or weight column) stored with other row blocks than X's
    (``from_array`` picks each array's block rows from its own width) is copied into
    X's row blocks by a stage of one task per X row block, each reading the few blocks
    it overlaps: one extra read of the narrow operand, none of X. An operand already in
    those blocks is returned as it is.

    Raises
    ------
    InputValueError
        When ``m`` is stored as sparse blocks, or an aligned block would exceed 64 MiB.
    """
    from blocklin.plan.graph import make_stage

    node = m.node
    if node.chunks[0] == rows and m.grid[1] == 1:
        return m
    if node.block_nbytes is not None:
        raise InputValueError(f"{what} is stored as sparse blocks; store it with X's row "
                              f"blocks (chunks=({rows}, None))")
    itemsize = np.dtype(m.dtype).itemsize
    if rows * m.shape[1] * itemsize > 64 * 2**20:
        raise InputValueError(f"{what} is too wide to re-block on the fly into X's row "
                              f"blocks of {rows} rows; store it with chunks=({rows}, None)")
    in_rows = node.chunks[0]
    tasks = RowRangeTasks(m.shape[0], rows, in_rows, m.grid[1])
    stage = make_stage("realign_rows", RowSlice(), [m.input], tasks,
                       shape=m.shape, chunks=(rows, m.shape[1]), dtype=m.dtype,
                       params={"rows": rows},
                       extra_memory=2 * (rows + 2 * in_rows) * m.shape[1] * itemsize)
    return MatrixInput(m.plan.add(stage), StageInput(stage.output))
