"""The one memory formula for block tasks (style rule 6).

A task holds, at its peak: every distinct input block it reads, decoded (plus the
encoded bytes when the codec compresses); every small parameter array; and for each
output block, the block and its encoded copy; plus the working memory each operator
declares (``Stage.extra_memory``, e.g. the n×n accumulator of a Gram partial).

A CSR block counts as dense ``rows × cols`` unless every stage of the group reading
it keeps it sparse (``Stage.keeps_sparse``, no transform): then twice its stored
size (the read buffer and one working copy, e.g. a float64 conversion or a join).

A block of a foreign array (``storage/foreign.py``) is decoded one stored chunk at a
time: the block, one chunk's encoded bytes and, where chunks are not decoded in
place, one decoded chunk.

On a GPU, a task also holds device memory (:func:`project_device_memory`): for each
member whose kernel computes on the device (``on_device``, see
:mod:`blocklin.plan.device`), every distinct input block it reads (decoded, dense, or
CSR at its stored size where the kernel keeps it sparse), its output block and the
working memory it declares; members that stay on the host (reduction levels) hold
none. A plan whose tasks would exceed the device's memory is refused before it runs
(:func:`check_device_memory`), as one over ``max_task_memory`` is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blocklin.errors import PlanMemoryError
from blocklin.plan.device import GPU_TASKS, gpu_tasks_for, runs_on_device
from blocklin.plan.graph import ArrayNode, Stage

__all__ = ["check_device_memory", "fit_cache_budget", "input_block_bytes", "plan_device_tasks",
           "project_device_memory", "project_task_memory"]


def input_block_bytes(node: ArrayNode, keeps_sparse: bool = False) -> int:
    """Bytes one block of ``node`` takes while a task holds it (``keeps_sparse``: the
    kernel never densifies it)."""
    if keeps_sparse and node.block_nbytes is not None:
        return 2 * node.block_nbytes
    decoded = node.chunk_nbytes
    if node.foreign is not None and node.foreign.pipeline is not None:
        # Decoded chunk by chunk into the block: one chunk's buffers, not a block's.
        return decoded + node.foreign.read_buffer_bytes(node.chunks, node.shape,
                                                        np.dtype(node.dtype).itemsize)
    compressed = node.codec is not None and node.codec.compressor != "none"
    return decoded * 2 if compressed or node.codec is None else decoded


def project_task_memory(members: Sequence[Stage]) -> int:
    """Peak bytes of one task of a (possibly fused) group of stages."""
    reads: dict[tuple[str, tuple[int, ...]], int] = {}
    params: dict[str, int] = {}
    total = 0
    for stage in members:
        task = stage.tasks[0] if stage.tasks else None
        if task is not None:
            for pos, index in task.reads:
                inp = stage.inputs[pos]
                held = input_block_bytes(inp.array,
                                         stage.keeps_sparse and inp.transform is None)
                key = (inp.array.name, index)
                # Fused members share the read; the one densifying it sets its size.
                reads[key] = max(reads.get(key, 0), held)
        for p in stage.param_arrays:
            params[p.name] = p.chunk_nbytes
        total += 2 * stage.output.chunk_nbytes + stage.extra_memory
    return total + sum(reads.values()) + sum(params.values())


def fit_cache_budget(wanted: int, process_memory: int, threads: int, task_memory: int) -> int:
    """The block-cache budget of one process: ``wanted``, lowered to what is left of
    ``process_memory`` once ``threads`` concurrent tasks of ``task_memory`` bytes each
    are reserved.

    A process running block tasks holds, besides their projected memory, its block
    cache (``storage/blockcache.py``); keeping ``threads × task + cache`` within the
    bound means a cache never pushes a run over it. 0 when nothing is left: the run
    then re-reads every block, as without a cache.
    """
    room = process_memory - max(1, threads) * task_memory
    return max(0, min(wanted, room))


def project_device_memory(members: Sequence[Stage]) -> int:
    """Peak device bytes of one task of a (possibly fused) group run on a GPU.

    Counts, for each member whose kernel computes on the device, the distinct input
    blocks it reads (fused members share a copy), its output block and its declared
    working memory (``Stage.extra_memory``: the kernels keep their temporaries on the
    block's device). 0 for a group of host-only kernels.
    """
    reads: dict[tuple[str, tuple[int, ...]], int] = {}
    total = 0
    for stage in members:
        if not runs_on_device(stage.kernel):
            continue
        task = stage.tasks[0] if stage.tasks else None
        if task is not None:
            for pos, index in task.reads:
                inp = stage.inputs[pos]
                sparse = stage.keeps_sparse and inp.transform is None \
                    and inp.array.block_nbytes is not None
                held = inp.array.block_nbytes if sparse else inp.array.chunk_nbytes
                key = (inp.array.name, index)
                reads[key] = max(reads.get(key, 0), int(held or 0))
        total += stage.output.chunk_nbytes + stage.extra_memory
    return total + sum(reads.values())


def check_device_memory(groups: Sequence[Sequence[Stage]], limit: int,
                        tasks_per_device: int = 1, where: str = "") -> None:
    """Refuse a plan whose GPU tasks would not fit ``limit`` bytes of device memory.

    Parameters
    ----------
    groups : sequence of sequences of Stage
        The fused groups of a finalized plan (``[g.members for g in final.groups]``).
    limit : int
        Device bytes available (the GPU's free memory, or ``max_device_memory``).
    tasks_per_device : int
        Tasks that may hold the device at once.
    where : str
        Names the device in the message (``on worker tcp://...``).

    Raises
    ------
    PlanMemoryError
        Naming the first stage whose group's device memory is over the limit.
    """
    allowed = limit // max(1, tasks_per_device)
    for members in groups:
        need = project_device_memory(members)
        if need > allowed:
            worst = max(members, key=lambda m: project_device_memory([m]))
            raise PlanMemoryError(
                worst.op + (f" ({where})" if where else ""), need, allowed,
                hint="store the input with smaller row blocks (bl.from_array(..., "
                     "chunks=(rows, None))), use a GPU with more memory, or run it with "
                     "device='cpu'", limit="device memory")


def plan_device_tasks(groups: Sequence[Sequence[Stage]], limit: int | None,
                      where: str = "") -> int:
    """Check a GPU plan against ``limit`` device bytes; return how many of its tasks may
    share one GPU (:data:`blocklin.plan.device.GPU_TASKS` when they fit, else one).

    ``limit`` None (no GPU seen where the plan is made, no ``max_device_memory``)
    checks nothing: the executor checks its workers' GPUs where it can.

    Raises
    ------
    PlanMemoryError
        When one task of some stage does not fit ``limit``.
    """
    if limit is None:
        return GPU_TASKS
    check_device_memory(groups, limit, 1, where)
    need = max((project_device_memory(m) for m in groups), default=0)
    return gpu_tasks_for(need, limit)
