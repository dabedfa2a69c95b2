"""Running a plan's device kernels through another array namespace, for tests.

:class:`InOrderExecutor` is a complete (small) executor: it runs every job of a plan in
this process, in topological order, with the groups' runtimes set to a device of
:mod:`blocklin.plan.device`. With ``device="array_api_strict"`` every kernel written
against the array namespace computes on ``array_api_strict`` arrays, through the same
``run_task`` path a GPU worker takes (blocks copied to the device, outputs brought
back), so a call CuPy might not have fails on a CPU-only machine.
"""

from __future__ import annotations

from dataclasses import replace

from blocklin.executors.base import ExecutionPlan, TaskCallback, run_block_task
from blocklin.plan import blas
from blocklin.plan.device import RUNTIME_DEVICES
from blocklin.plan.finalize import FinalPlan

__all__ = ["InOrderExecutor"]


class InOrderExecutor:
    """Run every job here, one after another, on ``device``.

    Parameters
    ----------
    device : {"cpu", "gpu", "array_api_strict"}
        Where device kernels compute (``gpu`` needs CuPy and a CUDA device).

    Examples
    --------
    >>> bl.compute(bl.ops.gram(A), executor=InOrderExecutor("array_api_strict"))
    """

    def __init__(self, device: str = "array_api_strict") -> None:
        if device not in RUNTIME_DEVICES:
            raise ValueError(f"device must be one of {RUNTIME_DEVICES}; got {device!r}")
        self.device = device
        self.name = f"in-order[{device}]"

    def check(self, xplan: ExecutionPlan) -> None:
        """Nothing to check: the plan runs in this process."""

    def cache_budget(self, final: FinalPlan, wanted: int | None) -> int:
        return 0

    def execute(self, xplan: ExecutionPlan, on_task_done: TaskCallback) -> None:
        runtimes = [replace(rt, device=self.device) for rt in xplan.runtimes]
        # As the local threaded executor does: this process is the worker for the
        # compute's life, and gets its own BLAS count back afterwards.
        with blas.hold(max((rt.blas_threads for rt in runtimes), default=1)):
            for job in xplan.jobs:  # topological order: every dependency has run
                on_task_done(run_block_task(runtimes[job.group], job.batch.tasks))
