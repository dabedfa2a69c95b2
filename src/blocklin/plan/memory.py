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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blocklin.plan.graph import ArrayNode, Stage

__all__ = ["fit_cache_budget", "input_block_bytes", "project_task_memory"]


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
