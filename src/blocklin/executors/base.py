"""What every executor shares: pending-task selection for resume, block dependencies.

An executor receives an :class:`ExecutionPlan`: the groups' runtimes and the list of
pending group tasks with the group tasks each depends on. It maps
:func:`blocklin.plan.run_task` over them with its engine, respecting dependencies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from blocklin.plan.finalize import FinalPlan
from blocklin.plan.graph import Stage, Task
from blocklin.plan.runtime import GroupRuntime, TaskMetrics, task_inputs_digest
from blocklin.storage.blockcache import content_token
from blocklin.storage.chunkio import block_ident, crc_ident
from blocklin.storage.meta import METADATA_KEY, ArrayMeta, metadata_bytes
from blocklin.storage.records import clear_records, read_records
from blocklin.storage.stores import store_for
from blocklin.types import BlockIndex

__all__ = ["ExecutionPlan", "Executor", "RunStats", "TaskBatch", "TaskJob", "cache_tokens",
           "prepare", "reset_outputs", "unseal_pending", "verified_blocks"]

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
    for job in xplan.jobs:
        rt = xplan.runtimes[job.group]
        for mr, task in zip(rt.members, job.batch.tasks, strict=True):
            if task is not None:
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
            cache_bytes: int = 0) -> ExecutionPlan:
    """Resolve locations and select pending tasks (all of them unless ``resume``).

    ``cache_bytes`` is the per-process block-cache budget (from the executor's
    ``cache_budget``). Reads completion records (and, with a cache, the sources'
    metadata) only; it writes nothing (see :func:`reset_outputs`).

    With ``resume`` a block is skipped only when its record (see
    :mod:`blocklin.storage.records`) is readable, names the same stage, matches the
    checksum of the chunk now stored, and the inputs it was computed from are the
    inputs now stored (:func:`blocklin.plan.runtime.task_inputs_digest`, recomputed
    from storage); a block reading any block that will be recomputed is recomputed
    too. Cost, paid only with ``resume``: per run, one listing of each output's
    records; per recorded block, one read of its record and one 4-byte read of its
    chunk's checksum trailer; per distinct source block those records read, one
    4-byte read (sparse blocks: three; arrays read through zarr: one ``stat``), all
    issued 16 at a time. Nothing is decoded.
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
    done = verified_blocks(runtimes, final) if resume else [
        [set() for _ in rt.members] for rt in runtimes]
    jobs: list[TaskJob] = []
    pending: set[tuple[int, int]] = set()
    skipped = 0
    for gi, (g, done_per_member) in enumerate(zip(final.groups, done, strict=True)):
        for pos in range(g.ntasks):
            member_tasks = tuple(None if m.tasks[pos].out in member_done else m.tasks[pos]
                                 for m, member_done in zip(g.members, done_per_member, strict=True))
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
        for t in stage.tasks:
            if t.out not in recs:
                continue
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
            for t in stage.tasks:
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
