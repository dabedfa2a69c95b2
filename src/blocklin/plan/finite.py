"""Non-finite input found inside the pass that reads it, at the cost of checking outputs.

NaN and infinity propagate through every kernel's arithmetic (products, sums,
sketches, reductions, GLM partials: ``0·NaN`` and ``0·inf`` are NaN), so an output
block that is finite proves the input blocks it was computed from were finite. A task
therefore checks only what its kernel returns (a small partial, or one output block)
with :func:`blocklin.storage.finite.all_finite`: clean data costs no extra pass. Only
when the output holds a non-finite value, or the kernel raised, are the task's input
blocks scanned, to name the array, block, row and column of the first bad value; when
they are all finite the stage itself overflowed, and the error says so.

A kernel whose output legitimately holds non-finite values declares which part must
be finite with a ``finite_part(output) -> array`` method (an empty array opts the
whole output out); it must still carry non-finite input into that part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from blocklin.errors import NonFiniteError
from blocklin.plan.device import to_host
from blocklin.plan.graph import Task, TaskContext
from blocklin.storage.finite import all_finite, first_nonfinite

if TYPE_CHECKING:
    from blocklin.plan.runtime import MemberRuntime

__all__ = ["output_is_finite", "run_checked"]

_FIX = ("remove or impute them at the source; blocklin refuses them where data enters "
        "(from_array, ingest, refresh) unless check_finite=False / --allow-nonfinite was given")


def run_checked(member: MemberRuntime, ctx: TaskContext, args: Sequence[Any]) -> Any:
    """Run ``member``'s kernel on ``args``; refuse an output holding NaN or infinity.

    Raises
    ------
    NonFiniteError
        Naming the first non-finite value of the input blocks (array, block, global
        row and column), or, when the inputs are finite, the stage that overflowed.
        Also raised in place of whatever the kernel raised when its inputs hold
        non-finite values (LAPACK failing to converge on NaN, NaN labels as indices).
    """
    try:
        # A device kernel's output comes back to the host here, before it is checked.
        result = to_host(member.kernel(ctx, args))
    except Exception as exc:
        bad = locate_input(member, ctx.task, args)
        if bad is None:
            raise
        raise bad from exc
    if not output_is_finite(member.kernel, result):
        raise locate_input(member, ctx.task, args) or _overflow(member, ctx.task)
    return result


def output_is_finite(kernel: Any, result: Any) -> bool:
    """Whether the part of a kernel's output that must be finite is (see module docs)."""
    part = getattr(kernel, "finite_part", None)
    return all_finite(part(result) if part is not None else result)


def locate_input(member: MemberRuntime, task: Task, args: Sequence[Any]) -> NonFiniteError | None:
    """The error naming the first non-finite value among a task's input blocks, if any."""
    for (pos, index), block in zip(task.reads, args, strict=True):
        local = first_nonfinite(to_host(block))
        if local is None:
            continue
        meta = member.input_metas[pos]
        row = col = None
        if len(local) == 2 and len(index) == 2:
            row = index[0] * meta.chunks[0] + local[0]
            col = index[1] * meta.chunks[1] + local[1]
        return NonFiniteError(meta.url, tuple(index), row, col,
                              detail=f"found by stage {member.op}; {_FIX}")
    return None


def _overflow(member: MemberRuntime, task: Task) -> NonFiniteError:
    sources = sorted({member.input_metas[pos].url for pos, _ in task.reads})
    dtype = np.dtype(member.output_meta.dtype)
    origin = (f"from finite input blocks of {', '.join(sources)}" if sources
              else "from its parameters alone")
    limit = f" (largest {np.finfo(dtype).max:.3g})" if dtype.kind == "f" else ""
    return NonFiniteError(
        member.output_meta.url, tuple(task.out),
        detail=f"stage {member.op} computed them {origin}: its arithmetic overflowed "
               f"{dtype}{limit}. Rescale the input (e.g. divide the large columns by a "
               "constant)")
