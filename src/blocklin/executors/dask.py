"""The Dask executor: one dask graph per compute, on local threads or a cluster.

Each group task becomes one dask task calling :func:`blocklin.plan.run_task` with
its block indices; its dependencies are the tasks writing the blocks it reads. Only
block indices and a few numbers cross the scheduler, never blocks.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

from blocklin.errors import ConfigError, ExecutorError, PlanMemoryError
from blocklin.executors.base import ExecutionPlan, TaskCallback
from blocklin.plan.runtime import run_task

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DaskExecutor"]


class DaskExecutor:
    """Run plans with dask.

    Parameters
    ----------
    client : distributed.Client, optional
        An existing client; the executor uses it and leaves it open.
    address : str, optional
        A scheduler address (``tcp://host:8786``); the executor connects for the
        duration of each compute and disconnects after.
    num_workers : int, optional
        Threads of the embedded local scheduler (default: the CPU count).
    retries : int
        Retries of a failed task on a distributed cluster.
    device : {"cpu", "gpu"}
        ``gpu`` places every task on a worker declaring a ``GPU`` resource
        (``dask worker --resources GPU=1``), one GPU per task; it needs a cluster.
    """

    name = "dask"

    def __init__(self, client: Client | None = None, address: str | None = None,
                 num_workers: int | None = None, retries: int = 1, device: str = "cpu") -> None:
        if client is not None and address is not None:
            raise ExecutorError("give either a distributed client or an address, not both")
        if device == "gpu" and client is None and address is None:
            raise ConfigError("device='gpu' needs a dask cluster whose workers declare a GPU "
                              "resource (dask worker --resources GPU=1); pass address= or client=")
        self.device = device
        self.client = client
        self.address = address
        self.num_workers = num_workers or os.cpu_count() or 1
        self.retries = retries

    def _graph(self, xplan: ExecutionPlan) -> tuple[dict[Any, Any], list[Any]]:
        # Tasks have side effects (they write blocks), so their dask keys are unique per
        # run: a cluster must never hand back a result (or an error) of an earlier run.
        run = uuid.uuid4().hex[:10]
        dsk: dict[Any, Any] = {}
        for rt in xplan.runtimes:
            dsk[f"blocklin-runtime-{rt.name}-{run}"] = rt

        def key(group: int, pos: int) -> tuple[str, int]:
            return (f"{xplan.runtimes[group].name}-{run}", pos)

        keys = []
        for job in xplan.jobs:
            k = key(job.group, job.pos)
            rt_key = f"blocklin-runtime-{xplan.runtimes[job.group].name}-{run}"
            deps = [key(g, p) for g, p in job.deps]
            dsk[k] = (run_task, rt_key, job.batch.tasks, *deps)
            keys.append(k)
        return dsk, keys

    def check(self, xplan: ExecutionPlan) -> None:
        if self.client is None and self.address is None:
            return
        need = max((g.memory for g in xplan.final.groups), default=0)
        client, owned = self._client()
        try:
            info = client.scheduler_info()
            workers = info.get("workers", {})
            if not workers:
                raise ExecutorError(f"the dask cluster at {info.get('address')} has no workers")
            if self.device == "gpu" and not any(w.get("resources", {}).get("GPU")
                                                for w in workers.values()):
                raise ConfigError("device='gpu' but no worker of the dask cluster declares a GPU "
                                  "resource (start workers with --resources GPU=1)")
            for addr, w in workers.items():
                limit = w.get("memory_limit") or 0
                threads = max(1, int(w.get("nthreads", 1)))
                if limit and limit // threads < need:
                    raise PlanMemoryError(
                        f"{xplan.final.groups[0].label} (on worker {addr})", need, limit // threads,
                        hint="each worker thread may run one task at a time; give workers more "
                             "memory or fewer threads")
        finally:
            if owned:
                client.close()

    def _client(self) -> tuple[Client, bool]:
        if self.client is not None:
            return self.client, False
        import dask.config
        from distributed import Client

        timeout = dask.config.get("distributed.comm.timeouts.connect")
        try:
            return Client(self.address, set_as_default=False, timeout=timeout), True
        except OSError as exc:
            raise ExecutorError(f"cannot reach the dask scheduler at {self.address}: {exc}") from exc

    def execute(self, xplan: ExecutionPlan, on_task_done: TaskCallback) -> None:
        if not xplan.jobs:
            return
        dsk, keys = self._graph(xplan)
        if self.client is None and self.address is None:
            self._run_threaded(dsk, keys, on_task_done)
            return
        from distributed import as_completed

        client, owned = self._client()
        try:
            resources = {"GPU": 1} if self.device == "gpu" else None
            futures = client.get(dsk, keys, sync=False, retries=self.retries, resources=resources)
            for fut in as_completed(futures, loop=client.loop):
                on_task_done(fut.result())
        finally:
            if owned:
                client.close()

    def _run_threaded(self, dsk: dict[Any, Any], keys: list[Any], on_task_done: TaskCallback) -> None:
        import dask.threaded
        from dask.callbacks import Callback

        wanted = set(keys)

        class _Done(Callback):  # type: ignore[misc]
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                if key in wanted:
                    on_task_done(result)

        with _Done():
            dask.threaded.get(dsk, keys, num_workers=self.num_workers)
