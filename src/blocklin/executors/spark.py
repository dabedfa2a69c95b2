"""The Spark executor: each stage group of a plan runs as one Spark job (the small
levels of reduction trees run on the driver, see :func:`on_driver`).

Groups run one after another in topological order (the order of
``ExecutionPlan.runtimes``); a group's pending tasks are sliced into the partitions of
one RDD, a few per core (:data:`PARTITIONS_PER_CORE`), and each Spark task calls
:func:`blocklin.plan.run_task` on its slice's block tasks in turn. Tasks read their
input blocks from zarr and write their output block there: only block indices (in)
and a few numbers (out) travel through Spark. A failed Spark task is retried by Spark
itself (``spark.task.maxFailures``), its whole slice again (block writes are atomic
and give the same bits, so a block written twice is the same block); completion
records make a re-run with ``resume=True`` skip finished blocks.

Speed
-----
A Spark task costs far more to hand to a Python worker than a dask task to a thread:
the JVM's scheduler, executor and Python runner threads each wake in turn, and over
Spark's default TCP loopback socket every exchange with the Python worker waited
about 40 ms more (measured: 20 empty Spark tasks on 2 cores took 0.6 s, 0.2 s over a
Unix domain socket). So block tasks are batched into a few Spark tasks per core (the
rest of the slicing still balances a slow core), and sessions the executor creates
talk to their Python workers over Unix domain sockets
(``spark.python.unix.domain.socket.enabled``, Spark 4.1 and later). Set it in a
session you pass in too (``benchmarks/bench_spark.py`` measures both).

Sessions
--------
The executor never creates a session behind the user's back. Given a
``SparkSession`` it uses it and leaves it running. Given a master URL (or nothing,
meaning ``local[*]``) it creates a session for the duration of one compute and stops
it afterwards; that needs no other SparkContext to be running in the process (Spark
allows one), so pass ``spark=`` to reuse a session across computes.

Block cache
-----------
With a block cache (``cache_bytes``), each Python worker process keeps the blocks it
read; Spark reuses Python workers between tasks and jobs by default
(``spark.python.worker.reuse``), so a later pass served by the same worker finds them.
Spark does not let us pick the worker of a partition, so some reads miss. Sessions
the executor creates for one compute get no cache: their workers stop with them.

GPU placement
-------------
``device="gpu"`` maps to Spark's resource scheduling: a session the executor creates
gets ``spark.task.resource.gpu.amount=1`` and ``spark.executor.resource.gpu.amount=1``
(the cluster's workers must advertise GPUs with a discovery script); a given session
must already request ``spark.task.resource.gpu.amount``. Spark's local mode does not
schedule GPUs, so ``device="gpu"`` needs a cluster master. Each Spark task makes the
GPU Spark assigned it (``TaskContext.resources()["gpu"].addresses``) its current CUDA
device before its block tasks copy anything there (:func:`use_task_gpu`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from blocklin.config import default_block_cache_bytes, machine_memory, parse_memory
from blocklin.errors import (
    ConfigError,
    CorruptChunkError,
    ExecutorError,
    NonFiniteError,
    PlanMemoryError,
    TaskFailedError,
)
from blocklin.executors import progress
from blocklin.executors.base import ExecutionPlan, TaskCallback, TaskJob, run_block_task
from blocklin.executors.spark_python import check_worker_python
from blocklin.plan.device import select_gpu
from blocklin.plan.finalize import FinalPlan, StageGroup
from blocklin.plan.graph import Task
from blocklin.plan.memory import fit_cache_budget
from blocklin.plan.runtime import GroupRuntime, TaskMetrics
from blocklin.types import DEVICES, parse_option

if TYPE_CHECKING:
    from pyspark.sql import SparkSession  # noqa: TID251

__all__ = ["PARTITIONS_PER_CORE", "SparkExecutor", "local_session", "partition_count",
           "session_conf", "task_slices"]

logger = logging.getLogger(__name__)

#: Spark's default number of attempts per task, also used for the sessions we create.
DEFAULT_MAX_FAILURES = 4


def session_conf(master: str, device: str = "cpu",
                 max_failures: int = DEFAULT_MAX_FAILURES) -> dict[str, str]:
    """The Spark configuration of a session the executor creates for ``master``.

    Workers run the driver's Python interpreter (``sys.executable``), so the
    environment that has blocklin installed is the one that runs the tasks.

    Raises
    ------
    ConfigError
        ``device="gpu"`` with a local master (local mode schedules no GPUs).
    """
    device = parse_option("device", device, DEVICES)
    conf = {
        "spark.app.name": "blocklin",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.task.maxFailures": str(max_failures),
        "spark.ui.showConsoleProgress": "false",
        # See "Speed" above: TCP loopback to the Python workers stalled each exchange.
        "spark.python.unix.domain.socket.enabled": "true",
    }
    if device == "gpu":
        if master.startswith("local"):
            raise ConfigError("device='gpu' needs a Spark cluster master: local mode does not "
                              "schedule GPU resources")
        conf["spark.task.resource.gpu.amount"] = "1"
        conf["spark.executor.resource.gpu.amount"] = "1"
    return conf


def _worker_python() -> None:
    """Make Spark's Python workers run this interpreter (and so see blocklin).

    pyspark reads ``PYSPARK_PYTHON`` when a SparkContext starts (the
    ``spark.pyspark.python`` setting only reaches ``spark-submit``); a value the
    user set is kept.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # pyspark imports its testing helpers lazily (for numpy type mapping), and that
    # module warns at import about pandas >= 3, which pyspark does not use here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)
        import pyspark.testing.utils  # noqa: F401, TID251


def local_session(cores: int = 2, max_failures: int = DEFAULT_MAX_FAILURES,
                  driver_memory: str = "1g") -> SparkSession:
    """Create a local-mode SparkSession (``local[cores,max_failures]``) on loopback.

    The caller owns the session and stops it. In local mode a failed task is
    retried only when the master string carries ``max_failures``, which this does.
    """
    master = f"local[{cores},{max_failures}]"
    conf = session_conf(master, max_failures=max_failures)
    conf.update({"spark.driver.memory": driver_memory, "spark.ui.enabled": "false",
                 "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                 "spark.sql.shuffle.partitions": str(max(2, cores))})
    spark = _build_session(master, conf)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _build_session(master: str, conf: dict[str, str]) -> SparkSession:
    """Get or create a session on ``master`` with ``conf``, workers on this interpreter."""
    from pyspark.sql import SparkSession  # noqa: TID251

    _worker_python()
    builder = SparkSession.builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


#: Metrics key of a task that found non-finite data (see :func:`_run_slice`).
_DATA_ERROR = "nonfinite_error"

#: Spark partitions per core in a group's job: few, since each Spark task costs tens of
#: milliseconds of hand-offs, but more than one, so a core slowed by other work does
#: not hold the whole job (the others take its remaining slices).
PARTITIONS_PER_CORE = 2


def partition_count(ntasks: int, cores: int) -> int:
    """Spark partitions for a group of ``ntasks`` block tasks on ``cores`` cores.

    :data:`PARTITIONS_PER_CORE` per core; a group too small to fill them gets one
    partition per core (3 tasks on 2 cores: slices of 1 and 2, not a second wave of
    one-task Spark tasks).
    """
    cores = max(1, cores)
    if ntasks < PARTITIONS_PER_CORE * cores:
        return max(1, min(ntasks, cores))
    return PARTITIONS_PER_CORE * cores


TaskTuple = tuple[Task | None, ...]


def task_slices(tasks: list[TaskTuple], parts: int) -> list[list[TaskTuple]]:
    """``tasks`` cut into ``parts`` contiguous slices whose sizes differ by one at most.

    Made here rather than by ``parallelize``: pyspark pickles its input in batches and
    slices those, which put 4, 2, 3 and 2 of 11 tasks in 4 partitions.
    """
    n = len(tasks)
    return [tasks[i * n // parts:(i + 1) * n // parts] for i in range(parts)]


def use_task_gpu() -> None:
    """Make the GPU Spark assigned the running task (its ``gpu`` resource address) this
    thread's CUDA device, so that a task on a GPU slot computes there and not on device
    0. Outside a Spark task, or without a ``gpu`` resource, nothing changes."""
    from pyspark import TaskContext  # noqa: TID251

    ctx = TaskContext.get()
    info = ctx.resources().get("gpu") if ctx is not None else None
    if info is not None and info.addresses:
        select_gpu(info.addresses[0])


def _run_slice(runtime: GroupRuntime, counter: Any = None
               ) -> Callable[[Iterable[list[TaskTuple]]], Iterator[TaskMetrics]]:
    """The function Spark maps over each partition (one slice) of a group's tasks
    (pickled with the runtime): runs them in order, one metrics record each, adding one
    to ``counter`` (a Spark accumulator, when the driver watches) per block task."""

    def run(slices: Iterable[list[TaskTuple]]) -> Iterator[TaskMetrics]:
        if runtime.device == "gpu":
            use_task_gpu()
        for member_tasks in (t for one in slices for t in one):
            try:
                metrics = run_block_task(runtime, member_tasks)
            except (NonFiniteError, CorruptChunkError) as exc:
                # Bad data fails the same way on every retry: hand the error to the
                # driver (it pickles with its fields) instead of failing the task.
                yield {_DATA_ERROR: exc}
                return
            if counter is not None:
                counter.add(1)
            yield metrics

    return run


class SparkExecutor:
    """Run plans on Spark, local mode or a cluster.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession, optional
        An existing session; the executor uses it and leaves it running.
    master : str, optional
        A master URL (``local[4]``, ``spark://host:7077``, ``yarn``, ``k8s://...``)
        for a session created for each compute and stopped after it. Default
        ``local[*]`` when neither ``spark`` nor ``master`` is given.
    device : {"cpu", "gpu"}
        ``gpu`` requests one GPU per Spark task (``spark.task.resource.gpu.amount``).
    max_failures : int
        Attempts per task (``spark.task.maxFailures``) for sessions the executor
        creates; a given session keeps its own setting.

    Notes
    -----
    One Spark job per stage group, a few Spark tasks per core each running a slice
    of its block tasks; the data never passes through the driver. Per-task memory is
    the plan's projection for the group (a Spark task runs its block tasks one after
    another); it is checked against ``spark.executor.pyspark.memory`` divided by
    ``spark.executor.cores`` when the session sets the former.
    """

    name = "spark"

    def __init__(self, spark: SparkSession | None = None, master: str | None = None,
                 device: str = "cpu", max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        if spark is not None and master is not None:
            raise ExecutorError("give either a SparkSession or a master URL, not both")
        if max_failures < 1:
            raise ConfigError(f"max_failures must be at least 1; got {max_failures}")
        self.spark = spark
        self.master = master
        self.device = parse_option("device", device, DEVICES)
        self.max_failures = max_failures
        if spark is None:
            session_conf(self._master(), self.device, max_failures)  # validate early
        elif self.device == "gpu" and not spark.conf.get("spark.task.resource.gpu.amount", None):
            raise ConfigError("device='gpu' needs a session with spark.task.resource.gpu.amount "
                              "set (and GPU discovery on its workers)")

    def _master(self) -> str:
        if self.master is not None:
            return self.master
        return f"local[*,{self.max_failures}]"

    def close(self) -> None:
        """Nothing to release: the session is the caller's (or the shared local one)."""

    def check(self, xplan: ExecutionPlan) -> None:
        if self.spark is None:
            return
        # Before anything is written: workers that cannot import blocklin fail every task.
        check_worker_python(self.spark)
        conf = self.spark.sparkContext.getConf()
        py_mem = conf.get("spark.executor.pyspark.memory")
        if not py_mem:
            return
        cores = max(1, int(conf.get("spark.executor.cores", "1")))
        # Spark reads a bare number as MiB.
        per_task = parse_memory(py_mem + "m" if py_mem.strip().isdigit() else py_mem) // cores
        # Each Python worker runs one task at a time beside its block cache.
        per_task -= max((rt.cache_bytes for rt in xplan.runtimes), default=0)
        for g in xplan.final.groups:
            if g.memory > per_task:
                raise PlanMemoryError(g.label, g.memory, per_task,
                                      hint="raise spark.executor.pyspark.memory or lower "
                                           "spark.executor.cores")

    def cache_budget(self, final: FinalPlan, wanted: int | None) -> int:
        if wanted == 0 or self.spark is None:
            return 0  # a session made for this compute stops with it, its workers too
        sc = self.spark.sparkContext
        conf = sc.getConf()
        if conf.get("spark.python.worker.reuse", "true").lower() == "false":
            return 0
        # One Python worker per concurrent task: a local master runs defaultParallelism
        # of them on this machine.
        local = str(sc.master).startswith("local")
        cores = max(1, int(conf.get("spark.executor.cores", "0"))
                    or (int(sc.defaultParallelism) if local else 1))
        py_mem = conf.get("spark.executor.pyspark.memory")
        if py_mem:
            memory = parse_memory(py_mem + "m" if py_mem.strip().isdigit() else py_mem) // cores
        else:
            # Unbounded Python workers: this machine stands in for the executors' (exact in
            # local mode), shared by the cores' workers.
            memory = machine_memory() // cores
        need = max((g.memory for g in final.groups), default=0)
        return fit_cache_budget(default_block_cache_bytes(memory) if wanted is None else wanted,
                                memory, 1, need)

    def _session(self) -> tuple[SparkSession, bool]:
        if self.spark is not None:
            return self.spark, False
        from pyspark import SparkContext  # noqa: TID251

        if SparkContext._active_spark_context is not None:
            raise ExecutorError("a SparkContext is already running in this process; pass its "
                                "session as spark= instead of a master URL")
        master = self._master()
        conf = session_conf(master, self.device, self.max_failures)
        try:
            return _build_session(master, conf), True
        except Exception as exc:
            raise ExecutorError(f"cannot start a Spark session on {master}: {exc}") from exc

    def execute(self, xplan: ExecutionPlan, on_task_done: TaskCallback) -> None:
        if not xplan.jobs:
            return
        by_group: dict[int, list[TaskJob]] = {}
        for job in xplan.jobs:
            by_group.setdefault(job.group, []).append(job)
        spark, owned = self._session()
        track = progress.engine_tracker()
        try:
            if owned:  # a given session was checked by check()
                check_worker_python(spark)
            sc = spark.sparkContext
            if owned:
                logger.info("Spark session on %s (UI %s)", sc.master, sc.uiWebUrl)
            for gi in sorted(by_group):  # group index order is topological
                jobs = by_group[gi]
                label = xplan.final.groups[gi].label
                if xplan.runtimes[gi].device == "cpu" and on_driver(xplan.final.groups[gi]):
                    _run_on_driver(xplan.runtimes[gi], jobs, label, on_task_done)
                    continue
                description = f"blocklin {label} ({len(jobs)} tasks)"
                slices = task_slices([j.batch.tasks for j in jobs],
                                     partition_count(len(jobs), sc.defaultParallelism))
                # Watched: block tasks are counted as their Spark tasks finish.
                counter = sc.accumulator(0) if track is not None else None
                rdd = sc.parallelize(slices, numSlices=len(slices)).mapPartitions(
                    _run_slice(xplan.runtimes[gi], counter))
                t0 = time.perf_counter()
                if track is None:
                    sc.setJobDescription(description)
                    result = _collect(rdd, label)
                else:
                    result = _collect_watched(sc, rdd, label, description, counter,
                                              partial(track, xplan.runtimes[gi].name))
                logger.debug("Spark job of %s: %d block tasks in %d Spark tasks, %.3f s", label,
                             len(jobs), len(slices), time.perf_counter() - t0)
                for metrics in result:
                    on_task_done(metrics)
        finally:
            if owned:
                spark.stop()


#: Largest group (projected memory of all its tasks together) that runs on the driver.
DRIVER_GROUP_BYTES = 64 * 2**20


def on_driver(group: StageGroup) -> bool:
    """Whether a group runs in the driver process instead of as a Spark job.

    The levels of a reduction tree read only the small partials that earlier groups
    wrote (no source array) and are tiny: as Spark's own ``treeAggregate`` combines its
    last level on the driver, they run there, saving a job's scheduling round trip
    (0.05-0.2 s each on 2 local cores, against milliseconds of work). They run under
    the group's fixed BLAS thread count, as a worker would (same bits). Groups placed
    on a GPU stay on Spark's GPU slots.
    """
    if group.memory * group.ntasks > DRIVER_GROUP_BYTES:
        return False
    return not any(inp.array.is_source for st in group.members for inp in st.inputs)


def _run_on_driver(runtime: GroupRuntime, jobs: list[TaskJob], label: str,
                   on_task_done: TaskCallback) -> None:
    """Run a small group's block tasks here, in order (see :func:`on_driver`).

    Raises
    ------
    TaskFailedError
        When a task fails for any reason but bad data (non-finite or corrupt blocks
        raise their own errors, as from a Spark task).
    """
    t0 = time.perf_counter()
    for job in jobs:
        try:
            metrics = run_block_task(runtime, job.batch.tasks)
        except (NonFiniteError, CorruptChunkError):
            raise
        except Exception as exc:
            raise TaskFailedError(f"stage {label} failed on the Spark driver: "
                                  f"{type(exc).__name__}: {exc}") from exc
        on_task_done(metrics)
    logger.debug("%s: %d block tasks on the driver, %.3f s", label, len(jobs),
                 time.perf_counter() - t0)


#: Seconds between two looks at a group's task counter while its job runs.
POLL_SECONDS = 0.1


def _collect(rdd: Any, label: str) -> list[TaskMetrics]:
    """Run a group's job and return its metrics, one record per block task.

    Raises
    ------
    TaskFailedError
        When Spark gave up on a task after its retries.
    NonFiniteError, CorruptChunkError
        As a task found them (handed back as data, see :func:`_run_slice`).
    """
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import CapturedException  # noqa: TID251

    try:
        result: list[TaskMetrics] = rdd.collect()
    except (Py4JJavaError, CapturedException) as exc:
        raise TaskFailedError(f"stage {label} failed on Spark after its task retries: "
                              f"{_last_python_error(str(exc))}") from exc
    for metrics in result:
        if _DATA_ERROR in metrics:
            raise metrics[_DATA_ERROR]
    return result


def _collect_watched(sc: Any, rdd: Any, label: str, description: str, counter: Any,
                     track: Callable[[int], None],
                     poll: float = POLL_SECONDS) -> list[TaskMetrics]:
    """:func:`_collect`, reporting block tasks as their Spark tasks finish.

    Spark hands a job's results to Python only when the whole job ends, a SparkListener
    cannot be registered from Python, and the status tracker's counts lag (the store
    behind it is written at most every ``spark.ui.liveUpdate.period`` per stage, on
    events: a stage read 0 completed tasks until its job ended). What does arrive as
    each Spark task ends is its accumulator update: ``counter`` counts the block tasks
    of finished Spark tasks (a failed attempt's updates are dropped, so a retried slice
    is not counted twice). So the job runs in a thread (under a job group of its own)
    while this thread reads the counter every ``poll`` seconds (a Python attribute, no
    call into the JVM); progress callbacks stay on this thread. The job's thread is
    pooled (:func:`_collectors`): a new Python thread opens its own connection to the
    JVM, 6 ms each. It takes this thread's Spark local properties (scheduler pool...),
    as ``pyspark.InheritableThread`` does. Task attempts that failed and were retried
    are logged. Interrupted (Ctrl-C), the job group is cancelled.
    """
    from concurrent.futures import wait

    group = f"blocklin-{uuid.uuid4().hex[:12]}"
    props = sc._jsc.sc().getLocalProperties().clone()

    def work() -> list[TaskMetrics]:
        sc._jsc.sc().setLocalProperties(props)  # replaces the pool's previous job's
        sc.setJobGroup(group, description)
        return _collect(rdd, label)

    job = _collectors().submit(work)
    seen = 0
    try:
        while not wait([job], timeout=poll).done:
            done = int(counter.value)
            if done > seen:
                seen = done
                track(done)
    except BaseException:
        sc.cancelJobGroup(group)
        wait([job])
        raise
    failed = _failed_attempts(sc.statusTracker(), group)
    if failed:
        logger.warning("stage %s: %d Spark task attempt%s failed and %s retried by Spark", label,
                       failed, "s" if failed != 1 else "", "were" if failed != 1 else "was")
    return job.result()


_COLLECTORS: list[ThreadPoolExecutor] = []


def _collectors() -> ThreadPoolExecutor:
    """Threads that run watched jobs, reused (idle ones first) across groups and computes."""
    if not _COLLECTORS:
        _COLLECTORS.append(ThreadPoolExecutor(8, thread_name_prefix="blocklin-spark-job"))
    return _COLLECTORS[0]


def _failed_attempts(status: Any, group: str) -> int:
    """Task attempts of a job group's stages that failed (Spark's status tracker)."""
    failed = 0
    for job in status.getJobIdsForGroup(group):
        info = status.getJobInfo(job)
        for stage in info.stageIds if info is not None else ():
            st = status.getStageInfo(stage)
            if st is not None:
                failed += st.numFailedTasks
    return failed


def _last_python_error(text: str) -> str:
    """The Python exception line of a Spark task failure, else the first line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        named = "Error:" in ln or "Exception:" in ln or "Fault:" in ln
        if named and not ln.startswith("at ") and "org.apache" not in ln:
            return ln
    return lines[0] if lines else text
