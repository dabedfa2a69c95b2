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

__all__ = ["DEFAULT_FAN_IN", "SumParts", "tree_reduce"]

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
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2; got {fan_in}")
    level = 0
    current = parts
    while current.shape[0] > 1:
        n = current.shape[0]
        m = -(-n // fan_in)
        tasks = TreeTasks(n, fan_in, len(current.shape))
        stage = make_stage(f"{op}/reduce{level}", combine, [StageInput(current)], tasks,
                           shape=(m, *current.shape[1:]), chunks=current.chunks,
                           dtype=current.dtype, params={**(params or {}), "level": level,
                                                        "fan_in": fan_in},
                           extra_memory=extra_memory)
        plan = plan.add(stage)
        current = stage.output
        level += 1
    return plan, current
