"""Deferred results: what operators return and ``compute`` evaluates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from blocklin.plan.finalize import PlanReport, finalize
from blocklin.plan.graph import ArrayNode, Plan

__all__ = ["Lazy"]

ResultKind = Literal["small", "matrix"]


class Lazy:
    """A lazily computed result: a plan, the array holding the answer, and how to present it.

    ``kind="small"`` results come back as numpy arrays (or what ``present`` makes of
    the stored array); ``kind="matrix"`` results come back as a
    :class:`~blocklin.BlockMatrix`.
    """

    def __init__(self, plan: Plan, output: ArrayNode, kind: ResultKind,
                 present: Callable[[np.ndarray], Any] | None = None, label: str = "") -> None:
        self.plan = plan
        self.output = output
        self.kind = kind
        self.present = present
        self.label = label or output.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.output.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.output.dtype)

    def explain(self, max_task_memory: int | str | None = None) -> PlanReport:
        """Stages, tasks, passes over each input, projected per-task memory, bytes moved,
        and the intermediate arrays the compute writes in the work directory (and
        removes once it succeeds).

        Raises
        ------
        PlanMemoryError
            If a stage is over ``max_task_memory``.
        """
        from blocklin.config import default_max_task_memory, parse_memory

        limit = parse_memory(max_task_memory) if max_task_memory else default_max_task_memory()
        return finalize(self.plan, limit).report(results=[self.output])

    def compute(self, **kwargs: Any) -> Any:
        """Run the plan (see :func:`blocklin.compute` for the options) and return the value."""
        from blocklin.executors.api import compute

        return compute(self, **kwargs)[0]

    def __repr__(self) -> str:
        return f"Lazy({self.label}, kind={self.kind}, shape={self.shape}, stages={len(self.plan.stages)})"
