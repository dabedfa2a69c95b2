"""Deterministic fault injection: a kernel that fails after its k-th call, a slowed kernel.

The call counter lives in files (one created atomically per call), so it counts
across threads, worker processes and Spark executors alike. :func:`slow_down` makes
every task of a plan take a little longer, so that a process killed from outside
(see :mod:`blocklin.testing.fault_scenarios`) is caught in the middle of a run.
:func:`tear_writes` leaves half a file on disk and then stops the process there.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocklin.executors.lazy import Lazy
from blocklin.plan.graph import Kernel, Plan, TaskContext

__all__ = ["FailAfter", "InjectedFault", "Slow", "inject_fault", "slow_down", "tear_writes"]


class InjectedFault(RuntimeError):
    """Raised by a kernel wrapped with :class:`FailAfter`."""


@dataclass(frozen=True)
class FailAfter:
    """Wrap a kernel so that calls after the first ``succeed`` raise.

    ``times`` bounds how many calls fail (``None``: all later ones), so a fault that
    fails once and then succeeds tests an engine's retry.
    """

    kernel: Kernel
    state_dir: str
    succeed: int
    times: int | None = None

    def _claim(self) -> int:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            try:
                fd = os.open(os.path.join(self.state_dir, f"call-{n}"), os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                n += 1
                continue
            os.close(fd)
            return n

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        n = self._claim()
        failing = n >= self.succeed and (self.times is None or n < self.succeed + self.times)
        if failing:
            raise InjectedFault(f"injected fault on call {n} (block {ctx.task.out})")
        return self.kernel(ctx, blocks)


def inject_fault(result: Lazy, op: str, state_dir: str | os.PathLike[str], succeed: int,
                 times: int | None = None) -> Lazy:
    """A copy of ``result`` whose stage labelled ``op`` fails after ``succeed`` tasks."""
    matches = [s for s in result.plan.stages if s.op == op]
    if len(matches) != 1:
        raise ValueError(f"expected one stage {op!r}; plan has {[s.op for s in result.plan.stages]}")
    plan = result.plan.with_kernel(
        matches[0].name, lambda k: FailAfter(k, os.fspath(state_dir), succeed, times))
    return Lazy(plan, result.output, result.kind, result.present, result.label)


@dataclass(frozen=True)
class Slow:
    """Wrap a kernel so that each call first sleeps ``seconds`` (picklable for workers)."""

    kernel: Kernel
    seconds: float

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        time.sleep(self.seconds)
        return self.kernel(ctx, blocks)


def slow_down(*results: Lazy, seconds: float) -> tuple[Lazy, ...]:
    """Copies of ``results`` sharing one plan whose every task sleeps ``seconds`` first.

    Stage and array names do not depend on kernels, so the slowed plan writes the same
    arrays as the original one: a run of either resumes the other.
    """
    plan = Plan().merge(*(r.plan for r in results))
    for stage in plan.stages:
        plan = plan.with_kernel(stage.name, lambda k: Slow(k, seconds))
    return tuple(Lazy(plan, r.output, r.kind, r.present, r.label) for r in results)


class _TornFile:
    """A file whose first write stores half its bytes, flushes them, then calls ``then``."""

    def __init__(self, fh: Any, then: Callable[[], object]) -> None:
        self.fh, self.then = fh, then

    def __enter__(self) -> _TornFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: Any) -> None:
        data = bytes(data)
        self.fh.write(data[:len(data) // 2])
        self.fh.flush()
        self.then()


def tear_writes(module: Any, then: Callable[[], object]) -> None:
    """Make the files ``module`` opens with the builtin ``open`` torn: the first write
    of each stores half its bytes on disk, then ``then()`` runs (a SIGKILL of the
    process, in the fault tests of a crash in the middle of a write)."""

    def opener(*args: Any, **kwargs: Any) -> _TornFile:
        return _TornFile(builtins.open(*args, **kwargs), then)

    module.open = opener
