"""What a run did, step by step: computes, tasks, passes and wall time.

A pipeline's lazy steps share one compute; its eager steps (randomized SVD,
regression fits) run computes of their own, many for iterative ones. Each is
recorded by wrapping it in :meth:`RunLog.step`, which collects the
:class:`~blocklin.executors.base.RunStats` of every compute finishing inside it
(:func:`~blocklin.executors.base.collect_stats`), so the manifest and report count
every pass and task, wherever it ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from blocklin.executors.base import RunStats, collect_stats

__all__ = ["RunLog", "StepRun"]


@dataclass
class StepRun:
    """One recorded part of a run.

    Attributes
    ----------
    name : str
        The step's name (``plan`` for the lazy steps' shared compute).
    op : str
        The operator(s) it ran.
    kind : str
        ``plan`` (the shared compute), ``eager`` (a step running its own computes),
        ``update`` (a refresh's incremental update) or ``persist`` (refresh state).
    seconds : float
        Wall-clock seconds, driver work between computes included.
    computes : int
        Computes it ran (an iterative step runs one per pass or more).
    stats : RunStats
        Its computes' counters merged: tasks, passes over each source, task seconds.
    details : dict
        What the step reports of itself (JSON values), e.g. a warm-started fit's
        iterations; recorded under ``details`` when not empty.
    """

    name: str
    op: str
    kind: str
    seconds: float = 0.0
    computes: int = 0
    stats: RunStats = field(default_factory=RunStats)
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON record of the manifest's ``step_runs``."""
        s = self.stats
        out = {"name": self.name, "op": self.op, "kind": self.kind,
               "seconds": round(self.seconds, 6), "computes": self.computes,
               "tasks_run": s.tasks_run, "tasks_skipped": s.tasks_skipped,
               "blocks_read": s.blocks_read, "bytes_read": s.bytes_read,
               "task_seconds": round(sum(s.stage_seconds.values()), 6),
               "passes": {k: round(v, 6) for k, v in s.passes.items()}}
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass
class RunLog:
    """The :class:`StepRun` of every part of a run, in the order they ran."""

    steps: list[StepRun] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, op: str, kind: str) -> Iterator[StepRun]:
        """Time the block and count every compute finishing inside it (recorded even
        when the block raises, so a failed run's log says how far it got)."""
        rec = StepRun(name, op, kind)
        t0 = time.perf_counter()
        try:
            with collect_stats() as runs:
                yield rec
        finally:
            rec.seconds = time.perf_counter() - t0
            rec.computes = len(runs)
            for r in runs:
                rec.stats.merge(r)
            rec.stats.executor = next((r.executor for r in runs), "")
            self.steps.append(rec)

    def total(self) -> RunStats:
        """Every step's counters merged."""
        out = RunStats()
        for rec in self.steps:
            out.merge(rec.stats)
            out.executor = out.executor or rec.stats.executor
        return out

    def records(self) -> list[dict[str, Any]]:
        return [rec.record() for rec in self.steps]
