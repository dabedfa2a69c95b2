"""``blocklin.compute``: run one or several lazy results as one plan."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from blocklin.config import (
    default_max_task_memory,
    default_work_dir,
    parse_cache_bytes,
    parse_memory,
)
from blocklin.errors import ConfigError, InputDtypeError
from blocklin.executors.base import (
    Executor,
    RunStats,
    prepare,
    record_run,
    reset_outputs,
    unseal_pending,
)
from blocklin.executors.intermediates import ComputeIntermediates
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import ComputeOptions, OptionsLike
from blocklin.executors.progress import ProgressHook, tracking
from blocklin.plan.device import GPU_TASKS, device_free_memory
from blocklin.plan.finalize import FinalPlan, finalize
from blocklin.plan.graph import Plan, jsonable
from blocklin.plan.memory import plan_device_tasks
from blocklin.storage.blockmatrix import BlockMatrix, provenance_attrs
from blocklin.storage.chunkio import read_block
from blocklin.storage.locations import check_no_alias
from blocklin.storage.meta import ensure_group, write_meta
from blocklin.storage.records import done_blocks, fingerprint_from_crcs
from blocklin.storage.stores import register_storage_options, storage_options_for, store_for
from blocklin.types import EXECUTORS, parse_option

if TYPE_CHECKING:
    from distributed import Client, Security

__all__ = ["ProgressHook", "check_plan_locations", "compute", "get_executor"]

logger = logging.getLogger(__name__)


def get_executor(executor: str | Executor = "dask", *, address: str | None = None,
                 client: Client | None = None, spark: Any = None,
                 num_workers: int | None = None, device: str = "cpu",
                 connect_timeout: float | None = None, worker_timeout: float | None = None,
                 security: Security | None = None) -> Executor:
    """Build an executor from its name and engine handle.

    ``connect_timeout``, ``worker_timeout`` and ``security`` are settings of a dask
    cluster (see :class:`blocklin.executors.dask.DaskExecutor`).

    Raises
    ------
    ConfigError
        For an unknown executor name or a handle that does not fit it.
    """
    if not isinstance(executor, str):
        return executor
    try:
        name = parse_option("executor", executor, EXECUTORS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if name == "dask":
        if spark is not None:
            raise ConfigError("a SparkSession was given with executor='dask'")
        from blocklin.executors.dask import DaskExecutor

        return DaskExecutor(client=client, address=address, num_workers=num_workers, device=device,
                            connect_timeout=connect_timeout, worker_timeout=worker_timeout,
                            security=security)
    if client is not None:
        raise ConfigError("a distributed.Client was given with executor='spark'")
    if security is not None:
        raise ConfigError("security= is a dask cluster's TLS settings; Spark takes its own "
                          "(spark.authenticate, spark.ssl.*) from the session or "
                          "spark-defaults.conf")
    try:
        import pyspark  # noqa: F401, TID251
    except ImportError:
        raise ConfigError("executor='spark' needs pyspark, which is not installed: pip "
                          "install 'blocklin[spark]' (Java 17 must be on the PATH)") from None
    from blocklin.executors.spark import SparkExecutor

    return SparkExecutor(spark=spark, master=address, device=device)


def compute(*results: Lazy, compute_options: OptionsLike = None, stats: RunStats | None = None,
            **options: Any) -> tuple[Any, ...]:
    """Compute several lazy results as one plan, sharing passes over common inputs.

    Parameters
    ----------
    *results : Lazy
        Results of blocklin operators.
    compute_options : ComputeOptions or dict, optional
        How and where to run: engine, cluster, work directory, memory limits, block
        cache, resume, progress (see :class:`~blocklin.executors.options.ComputeOptions`).
    stats : RunStats, optional
        Filled with task counts, blocks read and per-stage timings.
    **options
        Fields of :class:`~blocklin.executors.options.ComputeOptions`, replacing those
        of ``compute_options``: ``bl.compute(G, executor="spark", resume=True)``.

    Returns
    -------
    tuple
        One value per result: numpy arrays for small results, BlockMatrix for large.

    Raises
    ------
    PlanMemoryError
        A stage's projected per-task memory is over the limit.
    ConfigError
        Unknown executor or option, or conflicting engine handles.
    """
    for r in results:
        if not isinstance(r, Lazy):
            raise InputDtypeError(f"compute takes results of blocklin operators; got "
                                  f"{type(r).__name__}")
    o = ComputeOptions.of(compute_options, **options)
    work = o.work_dir or default_work_dir()
    limit = parse_memory(o.max_task_memory) if o.max_task_memory is not None \
        else default_max_task_memory()
    plan = Plan().merge(*(r.plan for r in results))
    _register_options(plan, work, o.storage_options)
    check_plan_locations(plan, work)
    final = finalize(plan, limit)
    device_tasks = _device_tasks(final, o.device, o.max_device_memory)  # over the GPU: refused
    engine = get_executor(o.executor, address=o.address, client=o.client, spark=o.spark,
                          num_workers=o.num_workers, device=o.device,
                          connect_timeout=o.connect_timeout, worker_timeout=o.worker_timeout,
                          security=o.security)
    try:
        return _run(results, final, engine, work, parse_cache_bytes(o.cache_bytes), o.resume,
                    o.device, device_tasks, o.keep_intermediates, stats, o.progress)
    finally:
        # An executor given as an object may predate close() (it is optional).
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def _run(results: Sequence[Lazy], final: FinalPlan, engine: Executor, work: str,
         wanted: int | None, resume: bool, device: str, device_tasks: int,
         keep_intermediates: bool | None, stats: RunStats | None,
         progress: Any) -> tuple[Any, ...]:
    """Run a finalized plan on an engine: the part of :func:`compute` that writes."""
    budget = engine.cache_budget(final, wanted) if wanted != 0 else 0
    # A lease on the work-dir arrays before any record is read; they are removed once
    # the results are sealed and read (kept on failure, for resume).
    with ComputeIntermediates(final, [(r.output, r.kind) for r in results], work,
                              keep_intermediates) as life:
        xplan = prepare(final, work, resume, cache_bytes=budget, device=device,
                        device_tasks=device_tasks)
        engine.check(xplan)
        # Checks passed: from here on the run writes.
        ensure_group(store_for(work))  # intermediates live in one zarr group per work dir
        if not resume:
            reset_outputs(xplan)
        else:
            unseal_pending(xplan)
        run = stats if stats is not None else RunStats()
        before = run.copy()
        run.executor = engine.name
        run.cache_bytes = budget
        run.tasks_skipped = xplan.skipped
        run.passes = final.report().source_passes()
        labels = {rt.name: g.label for rt, g in zip(xplan.runtimes, final.groups, strict=True)}
        _log_plan(final, xplan, engine.name, budget)
        t0 = time.perf_counter()
        with tracking(progress, xplan, labels, run, engine.name) as tracker:
            engine.execute(xplan, tracker.on_done)
        run.seconds = time.perf_counter() - t0
        _seal_outputs(final, work)
        record_run(run.since(before))  # for collect_stats blocks (a pipeline's report)
        values = tuple(_present(r, work) for r in results)
        life.done()
    return values


def _device_tasks(final: FinalPlan, device: str, option: int | str | None) -> int:
    """Check a GPU plan's device memory (``max_device_memory``, else this process's GPU)
    and return how many tasks may share one GPU; nothing to check on the CPU."""
    if device != "gpu":
        return GPU_TASKS
    limit = parse_memory(option) if option is not None else device_free_memory()
    return plan_device_tasks([g.members for g in final.groups], limit)


def _register_options(plan: Plan, work_dir: str, options: Mapping[str, Any] | None) -> None:
    if not options:
        return
    register_storage_options(work_dir, options)
    for stage in plan.stages:
        url = stage.output.out_url
        if url is not None and not storage_options_for(url):
            register_storage_options(url, options)


def check_plan_locations(plan: Plan, work_dir: str) -> None:
    """Refuse a plan whose explicit outputs (``out=``) alias its inputs or the work dir.

    Every stage output with an ``out_url`` is compared with every source array the
    plan reads, with the work directory and with the other outputs; the work
    directory may not lie inside an input either.

    Raises
    ------
    OutputAliasError
        Before anything is written (``reset_outputs`` would remove the output whole).
    """
    sources = {node.url for stage in plan.stages
               for node in [i.array for i in stage.inputs] + list(stage.param_arrays)
               if node.url is not None}
    outputs = [(f"the output of {s.op}", s.output.out_url) for s in plan.stages
               if s.output.out_url is not None]
    check_no_alias(outputs, [("an input", url) for url in sorted(sources)], work_dir)


def _log_plan(final: FinalPlan, xplan: Any, executor: str, cache_bytes: int) -> None:
    """DEBUG: the plan's size and where it runs; INFO: what resume skips."""
    from blocklin.errors import format_bytes

    total = sum(g.ntasks for g in final.groups)
    if xplan.skipped:
        logger.info("resume: %d of %d tasks are complete and verified; running %d", xplan.skipped,
                    total, sum(xplan.pending))
    if logger.isEnabledFor(logging.DEBUG):
        memory = max((g.memory for g in final.groups), default=0)
        logger.debug("plan: %d stages in %d groups, %d tasks, projected task memory %s, on %s, "
                     "%s", sum(len(g.members) for g in final.groups), len(final.groups), total,
                     format_bytes(memory), executor,
                     f"block cache {format_bytes(cache_bytes)} per process" if cache_bytes
                     else "no block cache")


def _seal_outputs(final: FinalPlan, work_dir: str) -> None:
    """Write each produced array's metadata, last, once all its blocks are recorded."""
    for group in final.groups:
        for stage in group.members:
            meta = stage.output.resolve(work_dir)
            store = store_for(meta.url)
            crcs = done_blocks(store)
            missing = [out for out in stage.tasks.outs() if out not in crcs]
            if missing:
                raise RuntimeError(f"stage {stage.op} finished without blocks {missing[:5]}")
            inputs = [i.array.fingerprint or i.array.name for i in stage.inputs]
            attrs = provenance_attrs(stage.op.split("/")[0], params=jsonable(stage.params),
                                     inputs=inputs, seed=stage.params.get("seed"),
                                     fingerprint=fingerprint_from_crcs(meta, crcs),
                                     stage=stage.op)
            write_meta(store, meta.with_attrs(attrs))


def _present(result: Lazy, work_dir: str) -> Any:
    meta = result.output.resolve(work_dir)
    if result.kind == "matrix":
        from blocklin.storage.meta import read_meta

        stored = read_meta(store_for(meta.url))
        if stored is None:
            raise FileNotFoundError(f"result array {meta.url} vanished after its run")
        return BlockMatrix(store_for(meta.url), stored)
    value = read_block(store_for(meta.url), meta, (0,) * len(meta.shape))
    return result.present(value) if result.present else value
