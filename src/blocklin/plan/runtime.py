"""What runs inside a block task, on whatever worker the engine picked.

A task reads each distinct input block once (into the thread's reusable buffers, or
from the process's block cache when its compute keeps one), runs every member kernel
of its group, writes each output block, and only then records the block complete. It
returns a few numbers, never a block. On a ``gpu`` (or test) device, the blocks of
kernels written against the array namespace are copied there once per task and their
outputs come back to the host (:mod:`blocklin.plan.device`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from blocklin.plan.blas import worker_blas
from blocklin.plan.device import GPU_TASKS, DeviceScope, runs_on_device, to_device
from blocklin.plan.finalize import StageGroup
from blocklin.plan.finite import run_checked
from blocklin.plan.graph import ArrayNode, Kernel, Task, TaskContext
from blocklin.storage.blockcache import BlockCache, process_cache
from blocklin.storage.chunkio import BufferPool, block_ident, read_block_ident, write_block
from blocklin.storage.meta import ArrayMeta
from blocklin.storage.records import BlockRecord, input_digest, mark_done
from blocklin.storage.stores import (
    StorageOptions,
    registered_storage_options,
    restore_storage_options,
    store_for,
)
from blocklin.types import BlockIndex

__all__ = ["GroupRuntime", "MemberRuntime", "TaskMetrics", "run_task", "task_inputs_digest"]

TaskMetrics = dict[str, Any]


@dataclass(frozen=True)
class MemberRuntime:
    """One stage of a group, with every array location resolved."""

    stage: str
    op: str
    kernel: Kernel
    inputs: tuple[ArrayNode, ...]
    input_metas: tuple[ArrayMeta, ...]
    transforms: tuple[ArrayMeta | None, ...]
    output: ArrayNode
    output_meta: ArrayMeta
    #: Per input, the content token its blocks are cached under; None: never cached.
    cache_tokens: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class GroupRuntime:
    """The picklable part of a group that every one of its tasks needs.

    ``cache_bytes`` is the block-cache budget of each process running the tasks (0: no
    cache, and blocks cached by earlier computes are dropped); ``cache_run`` names the
    compute, so its own blocks are not evicted to admit more of its blocks.
    """

    name: str
    members: tuple[MemberRuntime, ...]
    blas_threads: int = 1
    cache_bytes: int = 0
    cache_run: str = ""
    #: The driver's storage options by location (redacted in repr), registered in
    #: the process that runs the task: workers rebuild stores from URLs.
    storage_options: tuple[tuple[str, StorageOptions], ...] = ()
    #: Where device kernels compute (:mod:`blocklin.plan.device`): ``cpu``, ``gpu``, or
    #: ``array_api_strict`` (tests).
    device: str = "cpu"
    #: Tasks of a process that may hold one GPU at once (see ``DeviceScope``).
    device_tasks: int = GPU_TASKS

    @classmethod
    def build(cls, group: StageGroup, work_dir: str, blas_threads: int = 1,
              cache_bytes: int = 0, cache_run: str = "",
              cache_tokens: Mapping[str, str] | None = None,
              device: str = "cpu", device_tasks: int = GPU_TASKS) -> GroupRuntime:
        """Resolve a group's arrays; ``cache_tokens`` maps cacheable array names to tokens."""
        tokens = cache_tokens or {}
        members = []
        for s in group.members:
            members.append(MemberRuntime(
                stage=s.name, op=s.op, kernel=s.kernel,
                inputs=tuple(i.array for i in s.inputs),
                input_metas=tuple(i.array.resolve(work_dir) for i in s.inputs),
                transforms=tuple(i.transform.params.resolve(work_dir) if i.transform else None
                                 for i in s.inputs),
                output=s.output, output_meta=s.output.resolve(work_dir),
                cache_tokens=tuple(tokens.get(i.array.name) for i in s.inputs)))
        return cls(name=group.name, members=tuple(members), blas_threads=blas_threads,
                   cache_bytes=cache_bytes, cache_run=cache_run,
                   storage_options=registered_storage_options(), device=device,
                   device_tasks=device_tasks)


def _apply_affine(block: np.ndarray, params: np.ndarray, col_block: int, col_chunk: int) -> Any:
    start = col_block * col_chunk
    cols = slice(start, start + block.shape[1])
    shift, scale = params[0, cols], params[1, cols]
    return (block - shift) * scale


def run_task(runtime: GroupRuntime, tasks: tuple[Task | None, ...], *deps: Any) -> TaskMetrics:
    """Run one group task; ``tasks[k]`` is member k's task, or None when already complete."""
    t0 = time.perf_counter()
    restore_storage_options(runtime.storage_options)
    pool = BufferPool.for_thread()
    cache = process_cache()
    # Every task applies its compute's budget: a compute without a cache (or with a
    # smaller one) frees what earlier computes left in this process.
    cache.trim(runtime.cache_bytes)
    blocks: dict[tuple[str, tuple[int, ...]], tuple[Any, str]] = {}
    params_cache: dict[str, tuple[np.ndarray, str]] = {}
    bytes_read = 0
    nread = 0
    hits = misses = 0
    per_array: dict[str, int] = {}
    computed = []
    # Device copies of the blocks read, shared by the group's device kernels.
    on_device: dict[tuple[str, tuple[int, ...], str | None], Any] = {}
    try:
        # Fixed once for the worker's life: a count changed per task changes it for
        # the tasks running beside it (most BLAS keep one per process).
        scope = DeviceScope(runtime.device, runtime.device_tasks)
        with worker_blas(runtime.blas_threads), scope:
            for member, task in zip(runtime.members, tasks, strict=True):
                if task is None:
                    continue
                moved = runtime.device != "cpu" and runs_on_device(member.kernel)
                args = []
                for pos, index in task.reads:
                    meta = member.input_metas[pos]
                    key = (meta.url, index)
                    if key not in blocks:
                        token = member.cache_tokens[pos] if runtime.cache_bytes else None
                        block, ident, hit = _read(cache, runtime, meta, index, token, pool)
                        blocks[key] = (block, ident)
                        if hit:
                            hits += 1
                        else:
                            misses += token is not None
                            bytes_read += block.nbytes
                            nread += 1
                            per_array[meta.url] = per_array.get(meta.url, 0) + 1
                    block = blocks[key][0]
                    tmeta = member.transforms[pos]
                    if tmeta is not None:
                        if tmeta.url not in params_cache:
                            params_cache[tmeta.url] = read_block_ident(store_for(tmeta.url), tmeta,
                                                                       (0, 0))
                        block = _apply_affine(block, params_cache[tmeta.url][0], index[1],
                                              meta.chunks[1])
                    if moved:
                        dkey = (meta.url, index, tmeta.url if tmeta is not None else None)
                        if dkey not in on_device:
                            on_device[dkey] = to_device(block, runtime.device)
                        block = on_device[dkey]
                    args.append(block)
                ctx = TaskContext(task=task, inputs=member.inputs, output=member.output)
                result = run_checked(member, ctx, args)  # NaN/inf in, NonFiniteError out
                out = member.output_meta
                digest = task_inputs_digest(member, task, partial(_read_ident, blocks, member),
                                            partial(_param_ident, params_cache))
                crc = write_block(store_for(out.url), out, task.out, result)
                mark_done(store_for(out.url), task.out,
                          BlockRecord(crc, member.output.name, digest or ""))
                computed.append(member.stage)
    finally:
        blocks.clear()
        on_device.clear()
        pool.release()
    # blocks_read/bytes_read count storage reads only (a hit reads nothing); cache_misses
    # are the storage reads of cacheable blocks.
    return {"group": runtime.name, "computed": computed, "blocks_read": nread, "array_reads": per_array,
            "bytes_read": bytes_read, "cache_hits": hits, "cache_misses": misses,
            "seconds": time.perf_counter() - t0}


def _read(cache: BlockCache, runtime: GroupRuntime, meta: ArrayMeta, index: tuple[int, ...],
          token: str | None, pool: BufferPool) -> tuple[Any, str, bool]:
    """Block ``index`` from the process cache (cacheable inputs) or storage, the stored
    chunk's identity, and whether it hit."""
    store = store_for(meta.url)
    if token is None:
        block, ident = read_block_ident(store, meta, index, pool)
        return block, ident, False
    # A hit is checked against the chunk's checksum trailer now stored (4 bytes): a
    # source rewritten in place since it was cached (zarr.json untouched) is read again.
    return cache.fetch_with_ident((meta.url, token, index, meta.dtype),
                                  lambda: read_block_ident(store, meta, index, pool),
                                  runtime.cache_bytes, runtime.cache_run,
                                  current=lambda: block_ident(store, meta, index))


def _read_ident(blocks: Mapping[tuple[str, BlockIndex], tuple[Any, str]], member: MemberRuntime,
                pos: int, index: BlockIndex) -> str:
    return blocks[(member.input_metas[pos].url, index)][1]


def _param_ident(params: Mapping[str, tuple[Any, str]], tmeta: ArrayMeta) -> str:
    return params[tmeta.url][1]


def task_inputs_digest(member: MemberRuntime, task: Task,
                       read_ident: Callable[[int, BlockIndex], str | None],
                       param_ident: Callable[[ArrayMeta], str | None]) -> str | None:
    """The digest of the identities of every stored block a task reads: its input
    blocks in read order, then each transform's parameter block. None when some
    identity is unknown (a lost chunk): nothing computed from it can be trusted.

    The task computes it from the chunks it decoded; resume recomputes it from
    storage (:func:`blocklin.executors.base.prepare`) and trusts a record only when
    both agree.
    """
    idents = []
    for pos, index in task.reads:
        ident = read_ident(pos, index)
        if ident is None:
            return None
        idents.append(ident)
    read_positions = {pos for pos, _ in task.reads}
    for pos, tmeta in enumerate(member.transforms):
        if tmeta is not None and pos in read_positions:
            ident = param_ident(tmeta)
            if ident is None:
                return None
            idents.append(ident)
    return input_digest(idents)
