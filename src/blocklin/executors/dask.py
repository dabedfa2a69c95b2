"""The Dask executor: block tasks on local threads or a ``distributed`` cluster.

Each group task becomes one dask task calling :func:`blocklin.plan.run_task` with
its block indices; its dependencies are the tasks writing the blocks it reads. Only
block indices and a few numbers cross the scheduler, never blocks.

Jobs are generated as they are submitted, in batches of ``BATCH_JOBS`` (one dask
graph each): on a cluster at most ``WINDOW_JOBS`` unfinished ones are in flight,
refilled as tasks finish; on local threads batches run one after another. A plan of
a million tasks costs the driver a batch's graph, not a million-key one.

With a block cache on a cluster, each task reading a cacheable row panel ``i`` prefers
worker ``i mod n`` (workers sorted by address; a loose restriction the scheduler may
override), so the next pass of an iterative solver finds block ``i`` in that worker's
cache rather than reading it again on another worker.

``device="gpu"``: on a cluster every task asks for one unit of the workers' ``GPU``
resource and its kernels run on the worker's current CUDA device (the one a
``dask_cuda.LocalCUDACluster`` or ``CUDA_VISIBLE_DEVICES`` gives it); before a run the
GPU workers are asked whether CuPy sees their device and how much of its memory is
free, and a plan that does not fit is refused. On local threads the tasks use this
machine's GPU, at most ``GPU_TASKS`` of them on it at a time.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from blocklin.config import default_block_cache_bytes, machine_memory
from blocklin.errors import ConfigError, ExecutorError, PlanMemoryError
from blocklin.executors import progress
from blocklin.executors.base import ExecutionPlan, TaskCallback, TaskJob, run_block_task
from blocklin.plan import blas
from blocklin.plan.device import gpu_probe, require_gpu
from blocklin.plan.finalize import FinalPlan
from blocklin.plan.memory import check_device_memory, fit_cache_budget

if TYPE_CHECKING:
    from distributed import Client, Security

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_WORKER_TIMEOUT", "DaskExecutor",
           "cluster_security", "parse_address"]

#: Seconds to wait for a scheduler to answer before giving up.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds to wait for a first worker on a cluster that has none (workers starting
#: beside the scheduler, an autoscaler) before refusing the run.
DEFAULT_WORKER_TIMEOUT = 60.0
#: Jobs handed to dask at a time: the driver builds one batch's graph at a time.
BATCH_JOBS = 5_000
#: Unfinished jobs a cluster is given at most (on top of a new batch): bounds the
#: futures the driver and the scheduler hold, whatever the plan's size.
WINDOW_JOBS = 20_000
#: Schemes a dask scheduler address may use.
SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
logger = logging.getLogger(__name__)

_ADDRESS_HELP = ("a dask scheduler address is scheme://host:port, e.g. tcp://10.0.0.5:8786 "
                 f"(schemes: {', '.join(SCHEMES)}; host:port alone means tcp)")


def parse_address(address: str) -> str:
    """Check a scheduler address and return it with its scheme (``host:port`` -> tcp).

    Raises
    ------
    ConfigError
        For a missing or unknown scheme, an empty host, or a port that is not a number
        in 1..65535, at once (dask itself would retry until its timeout).
    """
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown scheme {scheme!r} in dask scheduler address {address!r}; "
                          + _ADDRESS_HELP)
    if scheme == "inproc":
        if not rest:
            raise ConfigError(f"dask scheduler address {address!r} names no process; "
                              + _ADDRESS_HELP)
        return f"{scheme}://{rest}"
    host, colon, port = rest.rstrip("/").rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # IPv6 literal
    if not colon or not host or "/" in host:
        raise ConfigError(f"dask scheduler address {address!r} has no host:port; "
                          + _ADDRESS_HELP)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"dask scheduler address {address!r} has port {port!r}, not a "
                          "number in 1..65535; " + _ADDRESS_HELP)
    return f"{scheme}://{rest.rstrip('/')}"


def cluster_security(tls_ca_file: str | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None) -> Security | None:
    """A ``distributed.Security`` for a TLS cluster from certificate files, or None.

    Parameters
    ----------
    tls_ca_file : str, optional
        The certificate authority that signed the scheduler's and workers' certificates.
    tls_cert, tls_key : str, optional
        This client's certificate and private key (the key may sit in ``tls_cert``).

    Raises
    ------
    ConfigError
        If only some are given, or a file is missing.
    """
    files = {"tls_ca_file": tls_ca_file, "tls_cert": tls_cert, "tls_key": tls_key}
    if not any(files.values()):
        return None
    if not tls_ca_file or not tls_cert:
        missing = [k for k in ("tls_ca_file", "tls_cert") if not files[k]]
        raise ConfigError(f"TLS needs a CA file and a client certificate; missing {missing} "
                          "(--tls-ca-file, --tls-cert, --tls-key)")
    for name, path in files.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"{name} {path!r} is not a file")
    from distributed import Security

    return Security(tls_ca_file=tls_ca_file, tls_client_cert=tls_cert,
                    tls_client_key=tls_key, require_encryption=True)


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
        ``gpu`` runs the block kernels on a GPU: on a cluster, every task on a worker
        declaring a ``GPU`` resource (``dask worker --resources GPU=1``), one GPU per
        task; on local threads, this machine's GPU (CuPy needed where they run).
    connect_timeout : float, optional
        Seconds to wait for the scheduler at ``address`` (default 10).
    worker_timeout : float, optional
        Seconds to wait for a first worker when the cluster has none (default 60).
    security : distributed.Security, optional
        TLS settings for ``address`` (see :func:`cluster_security`). A ``tls://``
        address without them uses dask's configuration (``distributed.comm.tls``).
    batch_jobs : int
        Tasks submitted to dask at a time (one graph each).
    window_jobs : int
        Unfinished tasks a cluster is given at most before the next batch.

    Raises
    ------
    ConfigError
        For a malformed address, or a ``tls://`` address with no certificates.
    """

    name = "dask"

    def __init__(self, client: Client | None = None, address: str | None = None,
                 num_workers: int | None = None, retries: int = 1, device: str = "cpu",
                 connect_timeout: float | None = None, worker_timeout: float | None = None,
                 security: Security | None = None, batch_jobs: int = BATCH_JOBS,
                 window_jobs: int = WINDOW_JOBS) -> None:
        if client is not None and address is not None:
            raise ExecutorError("give either a distributed client or an address, not both")
        if address is not None:
            address = parse_address(address)
            security = _tls_security(address, security)
        for what, value in (("connect_timeout", connect_timeout),
                            ("worker_timeout", worker_timeout)):
            if value is not None and not value > 0:
                raise ConfigError(f"{what} must be a positive number of seconds; got {value!r}")
        self.connect_timeout = connect_timeout or DEFAULT_CONNECT_TIMEOUT
        self.worker_timeout = worker_timeout or DEFAULT_WORKER_TIMEOUT
        self.security = security
        if device == "gpu" and client is None and address is None:
            # The local threaded scheduler computes here: this machine needs the GPU.
            require_gpu("this machine (the local threaded scheduler runs the tasks here; or "
                        "pass address= or client= of a dask cluster whose workers declare a "
                        "GPU resource)")
        self.device = device
        self.client = client
        self.address = address
        self.num_workers = num_workers or os.cpu_count() or 1
        self.retries = retries
        if batch_jobs < 1 or window_jobs < 1:
            raise ConfigError(f"batch_jobs and window_jobs must be at least 1; got {batch_jobs}, "
                              f"{window_jobs}")
        self.batch_jobs = batch_jobs
        self.window_jobs = window_jobs
        self._opened: Client | None = None  # the client this executor opened (address=)

    def check(self, xplan: ExecutionPlan) -> None:
        if self.client is None and self.address is None:
            return
        need = max((g.memory for g in xplan.final.groups), default=0)
        client = self._client()
        info = client.scheduler_info()
        workers = info.get("workers", {})
        if not workers:
            self._wait_for_workers(client, str(info.get("address")))
            info = client.scheduler_info()
            workers = info.get("workers", {})
        if self.device == "gpu":
            self._check_gpus(client, xplan, workers)
        # The block cache shares the worker's memory with its threads' tasks.
        cache = max((rt.cache_bytes for rt in xplan.runtimes), default=0)
        for addr, w in workers.items():
            limit = w.get("memory_limit") or 0
            threads = max(1, int(w.get("nthreads", 1)))
            if limit and (limit - cache) // threads < need:
                raise PlanMemoryError(
                    f"{xplan.final.groups[0].label} (on worker {addr})", need,
                    (limit - cache) // threads,
                    hint="each worker thread may run one task at a time; give workers more "
                         "memory or fewer threads")

    def _check_gpus(self, client: Client, xplan: ExecutionPlan, workers: dict[str, Any]) -> None:
        """Refuse a GPU run the cluster's GPU workers cannot take: none declares a GPU
        resource, one has no CuPy or sees no device, or a task does not fit its free
        device memory (one task per GPU resource unit)."""
        gpus = sorted(a for a, w in workers.items() if w.get("resources", {}).get("GPU"))
        if not gpus:
            raise ConfigError("device='gpu' but no worker of the dask cluster declares a GPU "
                              "resource (start workers with --resources GPU=1)")
        groups = [g.members for g in xplan.final.groups]
        for addr, (free, why) in sorted(client.run(gpu_probe, workers=gpus).items()):
            if free is None:
                raise ConfigError(f"worker {addr} declares a GPU resource but cannot run GPU "
                                  f"tasks: {why}")
            check_device_memory(groups, free, 1, where=f"on the GPU of worker {addr}")

    def cache_budget(self, final: FinalPlan, wanted: int | None) -> int:
        if wanted == 0:
            return 0
        need = max((g.memory for g in final.groups), default=0)
        if self.client is None and self.address is None:
            # The embedded scheduler's threads run in this process.
            memory = machine_memory()
            return fit_cache_budget(default_block_cache_bytes(memory) if wanted is None
                                    else wanted, memory, self.num_workers, need)
        workers = self._client().scheduler_info(n_workers=-1).get("workers", {})
        budgets = []
        for w in workers.values():
            # A worker without a memory limit is bounded by its machine: take this one's.
            memory = int(w.get("memory_limit") or 0) or machine_memory()
            budgets.append(fit_cache_budget(default_block_cache_bytes(memory) if wanted is None
                                            else wanted, memory,
                                            max(1, int(w.get("nthreads", 1))), need))
        return min(budgets, default=0)

    def _wait_for_workers(self, client: Client, address: str) -> None:
        from distributed import TimeoutError as DaskTimeout

        try:
            client.wait_for_workers(1, timeout=self.worker_timeout)
        except (DaskTimeout, TimeoutError):
            raise ExecutorError(
                f"no worker joined the dask cluster at {address} within "
                f"{self.worker_timeout:g} s; start workers (dask worker {address}) or wait "
                "longer with worker_timeout= (--worker-timeout)") from None

    def _client(self) -> Client:
        """The given client, or one opened on first use and kept until :meth:`close`,
        so a compute's check, cache budget and run share one connection."""
        if self.client is not None:
            return self.client
        if self._opened is None:
            self._opened = self._connect()
        return self._opened

    def close(self) -> None:
        """Close the client this executor opened (a given one stays open)."""
        if self._opened is not None:
            opened, self._opened = self._opened, None
            opened.close()

    def _connect(self) -> Client:
        from distributed import Client

        kwargs: dict[str, Any] = {"security": self.security} if self.security else {}
        try:
            return Client(self.address, set_as_default=False, timeout=self.connect_timeout,
                          **kwargs)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(
                f"cannot reach the dask scheduler at {self.address} within "
                f"{self.connect_timeout:g} s: {exc}; check the address, or wait longer with "
                "connect_timeout= (--connect-timeout)") from None
        except Exception as exc:
            # Something answered that is not a dask scheduler (a web server, a proxy): its
            # bytes read as dask frames give MemoryError or ValueError deep in the comm.
            raise ExecutorError(
                f"{self.address} did not answer as a dask scheduler ({type(exc).__name__}: "
                f"{exc}); check the address and port") from None

    def execute(self, xplan: ExecutionPlan, on_task_done: TaskCallback) -> None:
        if not xplan.jobs:
            return
        # Tasks have side effects (they write blocks), so their dask keys are unique per
        # run: a cluster must never hand back a result (or an error) of an earlier run.
        run = uuid.uuid4().hex[:10]
        if self.client is None and self.address is None:
            self._run_threaded(xplan, run, on_task_done,
                               max((rt.blas_threads for rt in xplan.runtimes), default=1))
            return
        client = self._client()
        _announce(client)
        self._stream(client, xplan, run, on_task_done)

    def _stream(self, client: Client, xplan: ExecutionPlan, run: str,
                on_task_done: TaskCallback) -> None:
        """Submit the jobs in batches of ``batch_jobs``, keeping at most ``window_jobs``
        unfinished: the driver and the scheduler hold a window of the plan, not all of it.

        A job's dependencies are the futures of the jobs it waits for that have not
        finished yet; those that have are done (their blocks are written and recorded).
        """
        from distributed import as_completed

        resources = {"GPU": 1} if self.device == "gpu" else None
        workers = sorted(client.scheduler_info(n_workers=-1).get("workers", {})) \
            if any(rt.cache_bytes for rt in xplan.runtimes) else []
        inflight = _Inflight()
        done = as_completed(loop=client.loop)
        for number, batch in enumerate(_batches(xplan.jobs, self.batch_jobs)):
            dsk: dict[Any, Any] = {}
            rows: dict[Any, int] = {}
            # A group's runtime enters each batch's graph once, as a literal node, not with
            # each task. Not scattered: scattered data dies with its worker and cannot be
            # recomputed, so every task needing it would be cancelled ("already forgotten").
            runtimes = [(f"runtime-{run}-{number}", g) for g in range(len(xplan.runtimes))]
            for j in {job.group for job in batch}:
                dsk[runtimes[j]] = xplan.runtimes[j]
            for job in batch:
                k = _key(xplan, run, job.group, job.pos)
                dep_keys = [dk for dk in (_key(xplan, run, g, p) for g, p in job.deps)
                            if dk in dsk or dk in inflight.futures]
                inflight.depend(k, dep_keys)
                deps = [dk if dk in dsk else inflight.futures[dk] for dk in dep_keys]
                dsk[k] = (run_block_task, runtimes[job.group], job.batch.tasks, *deps)
                if workers and (r := _cache_row(xplan, job)) is not None:
                    rows[k] = r
            keys = [k for k in dsk if k not in runtimes]
            futures = client.get(_placed(dsk, rows, workers), keys, sync=False,
                                 retries=self.retries, resources=resources)
            for k, fut in zip(keys, futures, strict=True):
                inflight.futures[k] = fut
                done.add(fut)
            while len(inflight.futures) > self.window_jobs:
                inflight.finish(next(done), on_task_done)
        for fut in done:
            inflight.finish(fut, on_task_done)

    def _run_threaded(self, xplan: ExecutionPlan, run: str, on_task_done: TaskCallback,
                      blas_threads: int) -> None:
        """Run the jobs on local threads, one dask graph per batch of ``batch_jobs``.

        Batches run one after another, so a job's dependencies in earlier batches are
        finished: only those within its batch stay in its graph.
        """
        from concurrent.futures import ThreadPoolExecutor

        import dask.threaded
        from dask.callbacks import Callback

        wanted: set[Any] = set()

        class _Done(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                if key in wanted:
                    on_task_done(result)

        # This process is the worker for the compute's life: BLAS threads are set once
        # around it, not per task. The pool is joined before they are given back, as
        # tasks still running when another fails go on to write (and record) blocks.
        with blas.hold(blas_threads):
            pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="blocklin")
            try:
                with _Done():
                    for batch in _batches(xplan.jobs, self.batch_jobs):
                        dsk: dict[Any, Any] = {}
                        for job in batch:
                            deps = [dk for g, p in job.deps
                                    if (dk := _key(xplan, run, g, p)) in dsk]
                            dsk[_key(xplan, run, job.group, job.pos)] = (
                                run_block_task, xplan.runtimes[job.group], job.batch.tasks, *deps)
                        wanted = set(dsk)
                        dask.threaded.get(dsk, list(dsk), pool=pool)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


#: Schedulers whose dashboard link this process has logged (once each, not per pass).
_ANNOUNCED: set[str] = set()


def _announce(client: Client) -> None:
    """Log the cluster's dashboard link (INFO, once per scheduler) and show it beside
    the progress of every compute (dask's own task stream, worker memory and profiles)."""
    try:
        address = str(client.scheduler_info().get("address"))
        link = str(client.dashboard_link)
    except Exception:  # a client without a dashboard (no bokeh): nothing to show
        return
    text = f"dask dashboard: {link} (scheduler {address})"
    if address not in _ANNOUNCED:
        _ANNOUNCED.add(address)
        logger.info(text)
    progress.note(text)


def _key(xplan: ExecutionPlan, run: str, group: int, pos: int) -> tuple[str, int]:
    return (f"{xplan.runtimes[group].name}-{run}", pos)


def _batches(jobs: Iterable[TaskJob], size: int) -> Iterator[list[TaskJob]]:
    it = iter(jobs)
    while batch := list(islice(it, size)):
        yield batch


class _Inflight:
    """The futures of unfinished jobs, and of finished ones that unfinished jobs wait on.

    A finished job's future is kept until every job submitted with it as a dependency
    has finished: released earlier, a worker lost with its result leaves the dependent
    waiting on a key the scheduler has forgotten (``FutureCancelledError``). Memory
    stays bounded by the window: only dependencies of unfinished jobs are kept.
    """

    def __init__(self) -> None:
        self.futures: dict[Any, Any] = {}
        self._kept: dict[Any, Any] = {}
        self._waiters: dict[Any, int] = {}
        self._deps: dict[Any, list[Any]] = {}

    def depend(self, key: Any, deps: list[Any]) -> None:
        self._deps[key] = deps
        for d in deps:
            self._waiters[d] = self._waiters.get(d, 0) + 1

    def finish(self, fut: Any, on_task_done: TaskCallback) -> None:
        """Hand a finished task's metrics to the driver (its error, after the task's
        retries, is raised here) and release the futures no one waits on any more."""
        key = fut.key
        self.futures.pop(key, None)
        if self._waiters.get(key):
            self._kept[key] = fut
        for d in self._deps.pop(key, ()):
            self._waiters[d] -= 1
            if not self._waiters[d]:
                del self._waiters[d]
                self._kept.pop(d, None)
        on_task_done(fut.result())


def _tls_security(address: str, security: Security | None) -> Security | None:
    """The security of a ``tls://`` address: as given, else dask's configured one.

    Raises
    ------
    ConfigError
        When neither holds certificates (dask would fail with a bare TypeError).
    """
    if not address.startswith(("tls://", "wss://")):
        return security
    if security is None:
        from distributed import Security

        security = Security()  # reads distributed.comm.tls.* from the dask config
    if security.get_connection_args("client").get("ssl_context") is None:
        raise ConfigError(
            f"{address} is a TLS address but no certificates were given: pass "
            "security=distributed.Security(tls_ca_file=..., tls_client_cert=..., "
            "tls_client_key=...), the CLI's --tls-ca-file/--tls-cert/--tls-key, the spec's "
            "executor.tls_* fields, or set distributed.comm.tls.* in the dask config")
    return security


def _cache_row(xplan: ExecutionPlan, job: TaskJob) -> int | None:
    """The row-block index of the first cacheable block a job reads, if any."""
    rt = xplan.runtimes[job.group]
    if not rt.cache_bytes:
        return None
    for member, task in zip(rt.members, job.batch.tasks, strict=True):
        if task is None:
            continue
        for pos, index in task.reads:
            if member.cache_tokens[pos] is not None:
                return int(index[0]) if index else 0
    return None


def _placed(dsk: dict[Any, Any], rows: dict[Any, int], workers: list[str]) -> Any:
    """``dsk`` as a graph whose cache-reading tasks prefer a worker chosen by row block.

    One layer per worker, annotated ``workers=[addr], allow_other_workers=True``: the
    scheduler places row block i on worker i mod n while it is there, and anywhere
    when it is not (or when stealing balances load). Without a cache, ``dsk`` as is.
    """
    if not rows or len(workers) < 2:
        return dsk
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    parts: dict[str, dict[Any, Any]] = {"blocklin": {}}
    for key, task in dsk.items():
        r = rows.get(key)
        parts.setdefault(workers[r % len(workers)] if r is not None else "blocklin", {})[key] = task
    layers = {name if name == "blocklin" else f"blocklin-on-{name}":
              MaterializedLayer(part, annotations=None if name == "blocklin" else
                                {"workers": [name], "allow_other_workers": True})
              for name, part in parts.items()}
    return HighLevelGraph(layers, {name: set() for name in layers})
