"""What every executor shares: pending-task selection for resume, block dependencies.

An executor receives an :class:`ExecutionPlan`: the groups' runtimes and the list of
pending group tasks with the group tasks each depends on. It maps
:func:`blocklin.plan.run_task` over them with its engine, respecting dependencies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from blocklin.plan.finalize import FinalPlan
from blocklin.plan.graph import Task
from blocklin.plan.runtime import GroupRuntime, TaskMetrics
from blocklin.storage.blockcache import content_token
from blocklin.storage.meta import METADATA_KEY
from blocklin.storage.records import clear_records, done_blocks
from blocklin.storage.stores import store_for

__all__ = ["ExecutionPlan", "Executor", "RunStats", "TaskBatch", "TaskJob", "cache_tokens",
           "prepare", "reset_outputs"]

TaskCallback = Callable[[TaskMetrics], None]


@dataclass(frozen=True)
class TaskBatch:
    """Member tasks of one group task (None where that member's block is complete)."""

    tasks: tuple[Task | None, ...]


@dataclass(frozen=True)
class TaskJob:
    group: int
    pos: int
    batch: TaskBatch
    deps: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ExecutionPlan:
    final: FinalPlan
    runtimes: tuple[GroupRuntime, ...]
    jobs: tuple[TaskJob, ...]
    skipped: int
    work_dir: str

    def key(self, group: int, pos: int) -> tuple[str, int]:
        return (self.runtimes[group].name, pos)


@dataclass
class RunStats:
    """Counters of one compute: tasks run and skipped, blocks read, per-stage seconds.

    ``blocks_read``, ``bytes_read`` and ``array_reads`` count reads from storage;
    blocks served by the block cache count as ``cache_hits`` instead, and
    ``cache_misses`` are the storage reads of cacheable blocks. ``cache_bytes`` is the
    per-process cache budget the compute ran with (0: no cache).
    """

    executor: str = ""
    tasks_run: int = 0
    tasks_skipped: int = 0
    blocks_read: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_tasks: dict[str, int] = field(default_factory=dict)
    passes: dict[str, float] = field(default_factory=dict)
    array_reads: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bytes: int = 0

    def merge(self, other: RunStats) -> None:
        """Add the counters of another run (several computes reported as one)."""
        self.tasks_run += other.tasks_run
        self.tasks_skipped += other.tasks_skipped
        self.blocks_read += other.blocks_read
        self.bytes_read += other.bytes_read
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses
        self.cache_bytes = max(self.cache_bytes, other.cache_bytes)
        self.seconds += other.seconds
        for mine, theirs in ((self.stage_seconds, other.stage_seconds),
                             (self.passes, other.passes)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0.0) + v
        for k, c in other.stage_tasks.items():
            self.stage_tasks[k] = self.stage_tasks.get(k, 0) + c
        for k, r in other.array_reads.items():
            self.array_reads[k] = self.array_reads.get(k, 0) + r

    def add(self, metrics: TaskMetrics, label: str) -> None:
        self.tasks_run += 1
        self.blocks_read += int(metrics.get("blocks_read", 0))
        self.bytes_read += int(metrics.get("bytes_read", 0))
        self.cache_hits += int(metrics.get("cache_hits", 0))
        self.cache_misses += int(metrics.get("cache_misses", 0))
        for url, n in metrics.get("array_reads", {}).items():
            self.array_reads[url] = self.array_reads.get(url, 0) + int(n)
        self.stage_seconds[label] = self.stage_seconds.get(label, 0.0) + float(metrics["seconds"])
        self.stage_tasks[label] = self.stage_tasks.get(label, 0) + 1


class Executor(Protocol):
    """Runs the pending tasks of an execution plan on an engine."""

    name: str

    def check(self, xplan: ExecutionPlan) -> None:
        """Check the engine against the plan (e.g. worker memory) before anything runs."""

    def execute(self, xplan: ExecutionPlan, on_task_done: TaskCallback) -> None:
        """Run every job, calling ``on_task_done`` on the driver as each finishes."""

    def cache_budget(self, final: FinalPlan, wanted: int | None) -> int:
        """Block-cache bytes for each process running the plan's tasks.

        ``wanted`` (None: the configured default, see
        :func:`blocklin.config.default_block_cache_bytes`) lowered so that the cache
        plus the plan's per-task memory for each of a process's threads fits its memory
        bound (:func:`blocklin.plan.memory.fit_cache_budget`); 0 where no cache could
        outlive the compute or the caller asked for none.
        """


def reset_outputs(xplan: ExecutionPlan) -> None:
    """Forget earlier runs' blocks before a run without ``resume``.

    Completion records of intermediates are cleared; an explicit output is removed
    whole, so an old result can never mix with new blocks.
    """
    for rt in xplan.runtimes:
        for mr in rt.members:
            store = store_for(mr.output_meta.url)
            if mr.output.out_url is not None:
                store.delete_prefix("")
            else:
                clear_records(store)


def cache_tokens(final: FinalPlan) -> dict[str, str]:
    """Content tokens of the plan's cacheable inputs: source arrays whose fingerprint
    witnesses their chunks (see :func:`blocklin.storage.blockcache.content_token`).

    Reads each such array's ``zarr.json`` once (on the driver), so blocks cached under
    an older content of the same URL never match.
    """
    out: dict[str, str] = {}
    for g in final.groups:
        for stage in g.members:
            for inp in stage.inputs:
                node = inp.array
                if node.name in out or node.url is None or node.fingerprint is None:
                    continue
                if node.format == "dense" and node.codec is None:
                    continue  # read through zarr's codecs: its fingerprint lists chunks only
                out[node.name] = content_token(node.fingerprint,
                                               store_for(node.url).get(METADATA_KEY))
    return out


def prepare(final: FinalPlan, work_dir: str, resume: bool, blas_threads: int = 1,
            cache_bytes: int = 0) -> ExecutionPlan:
    """Resolve locations and select pending tasks (all of them unless ``resume``).

    ``cache_bytes`` is the per-process block-cache budget (from the executor's
    ``cache_budget``). Reads completion records (and, with a cache, the sources'
    metadata) only; it writes nothing (see :func:`reset_outputs`).
    """
    tokens = cache_tokens(final) if cache_bytes > 0 else {}
    run = uuid.uuid4().hex if cache_bytes > 0 else ""
    runtimes = tuple(GroupRuntime.build(g, work_dir, blas_threads, cache_bytes, run, tokens)
                     for g in final.groups)
    # Where each array's blocks come from: array name -> (group, {out block -> task pos}).
    producers: dict[str, tuple[int, dict[tuple[int, ...], int]]] = {}
    for gi, g in enumerate(final.groups):
        for m in g.members:
            producers[m.output.name] = (gi, {t.out: p for p, t in enumerate(m.tasks)})
    jobs: list[TaskJob] = []
    pending: set[tuple[int, int]] = set()
    skipped = 0
    for gi, (g, rt) in enumerate(zip(final.groups, runtimes, strict=True)):
        done_per_member = [set(done_blocks(store_for(mr.output_meta.url))) if resume else set()
                           for mr in rt.members]
        for pos in range(g.ntasks):
            member_tasks = tuple(None if m.tasks[pos].out in done else m.tasks[pos]
                                 for m, done in zip(g.members, done_per_member, strict=True))
            if all(t is None for t in member_tasks):
                skipped += 1
                continue
            deps: set[tuple[int, int]] = set()
            for m, t in zip(g.members, member_tasks, strict=True):
                if t is None:
                    continue
                for p, index in t.reads:
                    prod = producers.get(m.inputs[p].array.name)
                    if prod is not None:
                        deps.add((prod[0], prod[1][index]))
                for par in m.param_arrays:
                    prod = producers.get(par.name)
                    if prod is not None:
                        deps.update((prod[0], q) for q in prod[1].values())
            deps &= pending
            jobs.append(TaskJob(gi, pos, TaskBatch(member_tasks), tuple(sorted(deps))))
            pending.add((gi, pos))
    return ExecutionPlan(final, runtimes, tuple(jobs), skipped, work_dir)
