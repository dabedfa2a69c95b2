"""What every executor shares: pending-task selection for resume, block dependencies.

An executor receives an :class:`ExecutionPlan`: the groups' runtimes and the list of
pending group tasks with the group tasks each depends on. It maps
:func:`blocklin.plan.run_task` over them with its engine, respecting dependencies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from blocklin.plan.device import GPU_TASKS
from blocklin.plan.finalize import FinalPlan
from blocklin.plan.graph import Stage, Task, TaskSet
from blocklin.plan.runtime import GroupRuntime, TaskMetrics, run_task, task_inputs_digest
from blocklin.storage.blockcache import content_token
from blocklin.storage.chunkio import block_ident, crc_ident
from blocklin.storage.meta import METADATA_KEY, ArrayMeta, metadata_bytes
from blocklin.storage.records import clear_records, read_records
from blocklin.storage.stores import store_for
from blocklin.types import BlockIndex

__all__ = ["ExecutionPlan", "Executor", "Jobs", "RunStats", "TaskBatch", "TaskJob", "cache_tokens",
           "collect_stats", "prepare", "record_run", "reset_outputs", "run_block_task",
           "unseal_pending", "verified_blocks"]

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
    """The groups' runtimes and what is pending, ready for an executor.

    ``jobs`` is generated on demand in topological order, so an executor streams a
    plan of a million tasks in bounded batches; nothing here lists tasks.
    ``done[g][k]`` holds the output blocks of member ``k`` of group ``g`` that a
    resumed run skips (empty without ``resume``), ``pending[g]`` the number of group
    tasks of ``g`` that will run.
    """

    final: FinalPlan
    runtimes: tuple[GroupRuntime, ...]
    done: tuple[tuple[frozenset[BlockIndex], ...], ...]
    pending: tuple[int, ...]
    skipped: int
    work_dir: str

    @property
    def jobs(self) -> Jobs:
        """The pending group tasks with their dependencies, generated on demand."""
        return Jobs(self)

    def key(self, group: int, pos: int) -> tuple[str, int]:
        return (self.runtimes[group].name, pos)


class Jobs:
    """The jobs of an execution plan: iterable (again and again), sized, never stored.

    Each job lists the pending jobs of earlier groups that write a block it reads
    (for a transform's parameter array: every pending job writing it).
    """

    def __init__(self, xplan: ExecutionPlan) -> None:
        self.xplan = xplan

    def __len__(self) -> int:
        return sum(self.xplan.pending)

    def __iter__(self) -> Iterator[TaskJob]:
        xp = self.xplan
        producers: dict[str, tuple[int, TaskSet]] = {}
        for gi, g in enumerate(xp.final.groups):
            for m in g.members:
                producers[m.output.name] = (gi, m.tasks)
        resumed = any(d for per_group in xp.done for d in per_group)

        def pending(gi: int, pos: int) -> bool:
            if not resumed:
                return True
            members = xp.final.groups[gi].members
            return any(m.tasks.out(pos) not in d
                       for m, d in zip(members, xp.done[gi], strict=True))

        for gi, g in enumerate(xp.final.groups):
            if not xp.pending[gi]:
                continue
            for pos in range(g.ntasks):
                member_tasks = tuple(None if resumed and m.tasks.out(pos) in d else m.tasks[pos]
                                     for m, d in zip(g.members, xp.done[gi], strict=True))
                if all(t is None for t in member_tasks):
                    continue
                deps: set[tuple[int, int]] = set()
                for m, t in zip(g.members, member_tasks, strict=True):
                    if t is not None:
                        deps.update(_task_deps(m, t, producers))
                yield TaskJob(gi, pos, TaskBatch(member_tasks),
                              tuple(sorted(d for d in deps if pending(*d))))


def _task_deps(stage: Stage, task: Task,
               producers: dict[str, tuple[int, TaskSet]]) -> Iterator[tuple[int, int]]:
    """The (group, position) of every task writing a block ``task`` reads."""
    for p, index in task.reads:
        prod = producers.get(stage.inputs[p].array.name)
        if prod is not None:
            q = prod[1].position(index)
            if q is None:
                raise ValueError(f"stage {stage.op} reads block {index} of "
                                 f"{stage.inputs[p].array.name}, which no task writes")
            yield prod[0], q
    for par in stage.param_arrays:
        prod = producers.get(par.name)
        if prod is not None:  # a small array: its few tasks
            yield from ((prod[0], q) for q in range(len(prod[1])))


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

    def copy(self) -> RunStats:
        """An independent copy (its dicts are not shared)."""
        return replace(self, stage_seconds=dict(self.stage_seconds),
                       stage_tasks=dict(self.stage_tasks), passes=dict(self.passes),
                       array_reads=dict(self.array_reads))

    def since(self, before: RunStats) -> RunStats:
        """The counters one compute added to this object, ``before`` being its copy taken
        as that compute started (a ``stats=`` object reused across computes keeps
        adding to its running totals; the per-compute fields are this compute's)."""
        def minus(now: Mapping[str, float], then: Mapping[str, float]) -> dict[str, float]:
            return {k: v - then.get(k, 0) for k, v in now.items() if v != then.get(k, 0)}

        return replace(self.copy(), tasks_run=self.tasks_run - before.tasks_run,
                       blocks_read=self.blocks_read - before.blocks_read,
                       bytes_read=self.bytes_read - before.bytes_read,
                       cache_hits=self.cache_hits - before.cache_hits,
                       cache_misses=self.cache_misses - before.cache_misses,
                       stage_seconds=minus(self.stage_seconds, before.stage_seconds),
                       stage_tasks={k: int(v) for k, v in
                                    minus(self.stage_tasks, before.stage_tasks).items()},
                       array_reads={k: int(v) for k, v in
                                    minus(self.array_reads, before.array_reads).items()})

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


#: The lists that :func:`collect_stats` blocks active in this context append to.
_COLLECTORS: ContextVar[tuple[list[RunStats], ...]] = ContextVar("blocklin_run_stats",
                                                                 default=())


@contextmanager
def collect_stats() -> Iterator[list[RunStats]]:
    """Collect the :class:`RunStats` of every compute that finishes inside the block.

    Iterative algorithms (randomized SVD passes, L-BFGS, estimators' fits) run many
    computes of their own; a caller that wants their tasks and passes counted (a
    pipeline's run report) wraps them in this block instead of threading ``stats=``
    through every layer. Blocks nest: each active one gets every compute.

    Yields
    ------
    list of RunStats
        One entry per finished compute, in order; merge them with
        :meth:`RunStats.merge`.

    Examples
    --------
    >>> with collect_stats() as runs:
    ...     TruncatedSVD(5).fit(A)
    >>> total = RunStats(); [total.merge(r) for r in runs]
    """
    runs: list[RunStats] = []
    token = _COLLECTORS.set((*_COLLECTORS.get(), runs))
    try:
        yield runs
    finally:
        _COLLECTORS.reset(token)


def record_run(run: RunStats) -> None:
    """Hand one finished compute's counters to every active :func:`collect_stats` block."""
    for runs in _COLLECTORS.get():
        runs.append(run.copy())


class Executor(Protocol):
    """Runs the pending tasks of an execution plan on an engine."""

    name: str

    def check(self, xplan: ExecutionPlan) -> None:
        """Check the engine against the plan (e.g. worker memory) before anything runs."""

    def execute(self, xplan: ExecutionPlan, on_task_done: TaskCallback) -> None:
        """Run every job, calling ``on_task_done`` on the driver as each finishes."""

    def close(self) -> None:
        """Release what the executor opened for this compute (a cluster connection);
        handles the caller gave stay open. Optional: compute calls it where defined."""

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

    Completion records and metadata of intermediates are cleared; an explicit output
    is removed whole, so an old result can never mix with new blocks.
    """
    for rt in xplan.runtimes:
        for mr in rt.members:
            store = store_for(mr.output_meta.url)
            if mr.output.out_url is not None:
                store.delete_prefix("")
            else:
                clear_records(store)
                store.delete_prefix(METADATA_KEY)


def unseal_pending(xplan: ExecutionPlan) -> None:
    """Before a resumed run rewrites blocks of an array, remove its ``zarr.json``.

    A result sealed by an earlier run must not stay readable while some of its
    blocks are being replaced: until the run seals it again, opening it fails.
    """
    for rt, g, done in zip(xplan.runtimes, xplan.final.groups, xplan.done, strict=True):
        for mr, d in zip(rt.members, done, strict=True):
            if len(d) < g.ntasks:  # some block of this array will be rewritten
                store_for(mr.output_meta.url).delete_prefix(METADATA_KEY)


def cache_tokens(final: FinalPlan) -> dict[str, str]:
    """Content tokens of the plan's cacheable inputs: source arrays whose blocks have
    an identity to check a hit by (see :func:`blocklin.storage.blockcache.content_token`).

    Reads each such array's ``zarr.json`` (v2: ``.zarray`` and ``.zattrs``) once (on
    the driver), so blocks cached under an older content of the same URL never match.
    """
    out: dict[str, str] = {}
    for g in final.groups:
        for stage in g.members:
            for inp in stage.inputs:
                node = inp.array
                if node.name in out or node.url is None or node.fingerprint is None:
                    continue
                if node.format == "dense" and node.codec is None and node.foreign is None:
                    continue  # no chunk grid of zarr's to stat: no identity to check hits by
                # Foreign arrays: a hit is checked by the stat tokens of its chunks.
                out[node.name] = content_token(node.fingerprint,
                                               metadata_bytes(store_for(node.url)))
    return out


def prepare(final: FinalPlan, work_dir: str, resume: bool, blas_threads: int = 1,
            cache_bytes: int = 0, device: str = "cpu",
            device_tasks: int = GPU_TASKS) -> ExecutionPlan:
    """Resolve locations and select pending tasks (all of them unless ``resume``).

    ``cache_bytes`` is the per-process block-cache budget (from the executor's
    ``cache_budget``); ``device`` where device kernels compute, ``device_tasks`` how
    many tasks may share one GPU (:mod:`blocklin.plan.device`). Reads completion
    records (and, with a cache, the sources' metadata) only; it writes nothing (see
    :func:`reset_outputs`).

    With ``resume`` a block is skipped only when its record (see
    :mod:`blocklin.storage.records`) is readable, names the same stage, matches the
    checksum of the chunk now stored, and the inputs it was computed from are the
    inputs now stored (:func:`blocklin.plan.runtime.task_inputs_digest`, recomputed
    from storage); a block reading any block that will be recomputed is recomputed
    too. Cost, paid only with ``resume``: per run, one listing of each output's
    records; per recorded block, one read of its record and one 4-byte read of its
    chunk's checksum trailer; per distinct source block those records read, one
    4-byte read (sparse blocks: three; arrays read through zarr: one ``stat``), all
    issued 16 at a time. Nothing is decoded. Without ``resume`` nothing is read and
    no task is listed: the cost is per stage, and the jobs are generated as the
    executor submits them (:class:`Jobs`).
    """
    tokens = cache_tokens(final) if cache_bytes > 0 else {}
    run = uuid.uuid4().hex if cache_bytes > 0 else ""
    runtimes = tuple(GroupRuntime.build(g, work_dir, blas_threads, cache_bytes, run, tokens,
                                        device, device_tasks)
                     for g in final.groups)
    if not resume:
        # A fresh run: everything is pending, and nothing is listed (see Jobs).
        none: tuple[tuple[frozenset[BlockIndex], ...], ...] = tuple(
            tuple(frozenset() for _ in g.members) for g in final.groups)
        return ExecutionPlan(final, runtimes, none, tuple(g.ntasks for g in final.groups), 0,
                             work_dir)
    done = tuple(tuple(frozenset(d) for d in per_group)
                 for per_group in verified_blocks(runtimes, final))
    pending = []
    skipped = 0
    for g, per_member in zip(final.groups, done, strict=True):
        # A group task is skipped when every member's block is: start from the first
        # member's verified blocks (the records read), never from the whole grid.
        first, rest = g.members[0], list(zip(g.members[1:], per_member[1:], strict=True))
        n = 0
        for out in per_member[0]:
            pos = first.tasks.position(out)
            if pos is not None and all(m.tasks.out(pos) in d for m, d in rest):
                n += 1
        skipped += n
        pending.append(g.ntasks - n)
    return ExecutionPlan(final, runtimes, done, tuple(pending), skipped, work_dir)


def verified_blocks(runtimes: tuple[GroupRuntime, ...],
                    final: FinalPlan) -> list[list[set[BlockIndex]]]:
    """Per group and member, the output blocks a resumed run may skip (see :func:`prepare`)."""
    members = [mr for rt in runtimes for mr in rt.members]
    produced = {mr.output_meta.url: mr.output.name for mr in members}
    records = _io_map(lambda mr: read_records(store_for(mr.output_meta.url)), members)
    # The checksum trailer of every recorded chunk, and the identity of every source
    # block (and transform parameter block) those records' tasks read.
    tails: list[tuple[ArrayMeta, BlockIndex]] = []
    sources: set[tuple[ArrayMeta, BlockIndex]] = set()
    for mr, stage, recs in zip(members, _stages(final), records, strict=True):
        for t in _recorded_tasks(stage, recs):
            tails.append((mr.output_meta, t.out))
            for p, index in t.reads:
                if mr.input_metas[p].url not in produced:
                    sources.add((mr.input_metas[p], index))
                tmeta = mr.transforms[p]
                if tmeta is not None and tmeta.url not in produced:
                    sources.add((tmeta, (0, 0)))
    stored = dict(zip(tails, _io_map(lambda mi: block_ident(store_for(mi[0].url), *mi), tails),
                      strict=True))
    source_list = list(sources)
    idents = dict(zip(source_list, _io_map(lambda mi: block_ident(store_for(mi[0].url), *mi),
                                           source_list), strict=True))
    # Trusted crcs of produced blocks, by array name; absent: recomputed this run.
    trusted: dict[str, dict[BlockIndex, int]] = {}

    def ident(meta: ArrayMeta, index: BlockIndex) -> str | None:
        name = produced.get(meta.url)
        if name is None:
            return idents.get((meta, index))
        crc = trusted.get(name, {}).get(index)
        return None if crc is None else crc_ident(crc)

    out: list[list[set[BlockIndex]]] = []
    it = iter(zip(members, _stages(final), records, strict=True))
    for rt in runtimes:
        per_member: list[set[BlockIndex]] = []
        for _ in rt.members:
            mr, stage, recs = next(it)
            ok: set[BlockIndex] = set()
            for t in _recorded_tasks(stage, recs):
                rec = recs.get(t.out)
                if (rec is None or rec.stage != mr.output.name
                        or stored.get((mr.output_meta, t.out)) != crc_ident(rec.crc)):
                    continue
                metas = mr.input_metas
                digest = task_inputs_digest(mr, t, lambda p, i: ident(metas[p], i),  # noqa: B023
                                            lambda tmeta: ident(tmeta, (0, 0)))
                if digest is not None and digest == rec.inputs:
                    ok.add(t.out)
            trusted[mr.output.name] = {i: recs[i].crc for i in ok}
            per_member.append(ok)
        out.append(per_member)
    return out


def _recorded_tasks(stage: Stage, recs: Mapping[BlockIndex, object]) -> Iterator[Task]:
    """The stage's tasks whose output block has a record, in position order: as many
    as there are records, whatever the size of the grid."""
    positions = sorted(p for out in recs if (p := stage.tasks.position(out)) is not None)
    return (stage.tasks[p] for p in positions)


def _stages(final: FinalPlan) -> list[Stage]:
    return [s for g in final.groups for s in g.members]


_T = TypeVar("_T")
_R = TypeVar("_R")


def _io_map(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """``map`` for small storage reads: many in flight, as object stores need."""
    if len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(fn, items))


def run_block_task(runtime: GroupRuntime, tasks: tuple[Task | None, ...], *deps: Any) -> TaskMetrics:
    """What every engine runs for one group task: :func:`blocklin.plan.run_task`, with
    numpy's floating-point errors (overflow, invalid value, divide by zero) counted into
    the task's metrics (``fp_errors``) instead of printed as ``RuntimeWarning`` by the
    worker.

    The driver turns the counts into one warning per stage group
    (:class:`blocklin.executors.progress.PassTracker`); a non-finite output is refused
    by the task itself (:mod:`blocklin.plan.finite`). numpy's error state is per thread
    (a context variable), so tasks running beside each other keep their own; kernels
    that set their own ``errstate`` keep theirs.
    """
    counts: dict[str, int] = {}

    def seen(kind: str, flag: int) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    with np.errstate(over="call", divide="call", invalid="call", call=seen):
        metrics = run_task(runtime, tasks, *deps)
    if counts:
        metrics["fp_errors"] = counts
    return metrics
