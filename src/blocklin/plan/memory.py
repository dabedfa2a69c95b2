"""The one memory formula for block tasks (style rule 6).

A task holds, at its peak: every distinct input block it reads, decoded (plus the
encoded bytes when the codec compresses); every small parameter array; and for each
output block, the block and its encoded copy; plus the working memory each operator
declares (``Stage.extra_memory``, e.g. the n×n accumulator of a Gram partial).
"""

from __future__ import annotations

from collections.abc import Sequence

from blocklin.plan.graph import ArrayNode, Stage

__all__ = ["input_block_bytes", "project_task_memory"]


def input_block_bytes(node: ArrayNode) -> int:
    """Bytes one block of ``node`` takes while a task holds it."""
    decoded = node.chunk_nbytes
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
                node = stage.inputs[pos].array
                reads[(node.name, index)] = input_block_bytes(node)
        for p in stage.param_arrays:
            params[p.name] = p.chunk_nbytes
        total += 2 * stage.output.chunk_nbytes + stage.extra_memory
    return total + sum(reads.values()) + sum(params.values())
