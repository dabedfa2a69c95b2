"""Fixed-order tree reductions over block index.

Partial results live in an array of shape ``(nparts, *s)`` with one part per chunk.
Each level combines consecutive runs of ``fan_in`` parts, always in index order, so
the floating-point result is bitwise identical whatever executor, worker count or
task completion order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from blocklin.plan.graph import ArrayNode, Kernel, Plan, StageInput, TaskContext, TreeTasks, make_stage

__all__ = ["DEFAULT_FAN_IN", "SumParts", "tree_levels", "tree_reduce"]

DEFAULT_FAN_IN = 8


class SumParts:
    """Combine kernel: sum of parts in index order (for Gram, XᵀY, gradients)."""

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        acc = np.array(blocks[0], copy=True)
        for b in blocks[1:]:
            acc += b
        return acc


def tree_reduce(plan: Plan, parts: ArrayNode, combine: Kernel, *, op: str,
                params: dict[str, Any] | None = None, fan_in: int = DEFAULT_FAN_IN,
                extra_memory: int = 0) -> tuple[Plan, ArrayNode]:
    """Append the levels reducing ``parts`` to one part; return the plan and that array.

    The result has shape ``(1, *s)``. With a single part no stage is added. Each
    level is a rule (:class:`~blocklin.plan.graph.TreeTasks`), not a task list, and
    keeps ``fan_in`` at any size: ``ceil(log_fan_in(nparts))`` levels, 7 for 10⁶
    parts at the default fan-in of 8.
    """
    plan, levels = tree_levels(plan, parts, combine, op=op,
                               params={**(params or {}), "fan_in": fan_in}, fan_in=fan_in,
                               extra_memory=extra_memory)
    return plan, levels[-1] if levels else parts


def tree_levels(plan: Plan, parts: ArrayNode, combine: Kernel, *, op: str,
                params: dict[str, Any] | None = None, fan_in: int = DEFAULT_FAN_IN,
                extra_memory: int = 0, part_shape: tuple[int, ...] | None = None,
                level_name: str = "reduce") -> tuple[Plan, tuple[ArrayNode, ...]]:
    """The levels of :func:`tree_reduce`, each level's array returned (none for one part).

    ``part_shape`` is the shape of a combined part where it differs from an input
    part's (a TSQR level carries its children's Q factors beside R); stages are named
    ``{op}/{level_name}{level}`` and their parameters are ``params`` and the level.
    """
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2; got {fan_in}")
    levels: list[ArrayNode] = []
    current = parts
    while current.shape[0] > 1:
        n = current.shape[0]
        m = -(-n // fan_in)
        part = current.shape[1:] if part_shape is None else part_shape
        chunks = current.chunks if part_shape is None else (current.chunks[0], *part_shape)
        tasks = TreeTasks(n, fan_in, len(current.shape))
        stage = make_stage(f"{op}/{level_name}{len(levels)}", combine, [StageInput(current)],
                           tasks, shape=(m, *part), chunks=chunks, dtype=current.dtype,
                           params={**(params or {}), "level": len(levels)},
                           extra_memory=extra_memory)
        plan = plan.add(stage)
        current = stage.output
        levels.append(current)
    return plan, tuple(levels)
