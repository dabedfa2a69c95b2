"""The Spark executor in local mode: same numbers as Dask, retries, resume, bad setups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import ConfigError, ExecutorError, TaskFailedError
from blocklin.executors.base import RunStats
from blocklin.testing.faults import inject_fault

pytest.importorskip("pyspark")

from blocklin.executors.spark import SparkExecutor, partition_count, session_conf, task_slices

pytestmark = pytest.mark.spark


@pytest.fixture
def mats(tmp_path: Path) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    # Uneven last block and mixed magnitudes, so summation order shows in the last bits.
    x = rng.standard_normal((1030, 9)) * np.logspace(-3, 3, 9)
    b = rng.standard_normal((1030, 4))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    B = bl.from_array(b, tmp_path / "B.zarr", chunks=(100, None))
    return A, B, x, b


def _all_ops(A: Any, B: Any) -> tuple[Any, ...]:
    return (bl.ops.gram(A), bl.ops.matmul(A.T, B), bl.ops.column_stats(A),
            bl.ops.matmul(A, np.arange(18.0).reshape(9, 2)))


def _as_arrays(results: tuple[Any, ...]) -> list[np.ndarray]:
    g, xtb, stats, prod = results
    return [g, xtb, stats.mean, stats.variance, stats.min, stats.max, prod.to_numpy()]


def test_bitwise_identical_to_dask_threads(spark_session: Any, mats: Any, tmp_path: Path) -> None:
    A, B, x, b = mats
    on_spark = bl.compute(*_all_ops(A, B), executor="spark", spark=spark_session,
                          work_dir=str(tmp_path / "ws"))
    on_dask = bl.compute(*_all_ops(A, B), executor="dask", work_dir=str(tmp_path / "wd"))
    for s, d in zip(_as_arrays(on_spark), _as_arrays(on_dask), strict=True):
        assert s.dtype == d.dtype
        np.testing.assert_array_equal(s, d)
    # And right, not just equal: LAPACK-backed references (tolerance: float64 sums
    # of 1030 terms scaled up to 1e6, relative ~1e-13).
    np.testing.assert_allclose(on_spark[0], x.T @ x, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(on_spark[1], x.T @ b, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(on_spark[2].mean, x.mean(axis=0), rtol=1e-12)


def test_block_tasks_run_a_few_spark_tasks_per_core(spark_session: Any, mats: Any,
                                                     tmp_path: Path) -> None:
    A, _, x, _ = mats
    sc = spark_session.sparkContext
    sc.setJobGroup("blocklin-slices", "gram in slices")
    stats = RunStats()
    try:
        g = bl.compute(bl.ops.gram(A), executor="spark", spark=spark_session,
                       work_dir=str(tmp_path / "ws"), stats=stats)[0]
    finally:
        sc.setJobGroup(None, None)  # type: ignore[arg-type]
    tracker = sc.statusTracker()
    jobs = sorted(tracker.getJobIdsForGroup("blocklin-slices"))
    spark_tasks = [sum(tracker.getStageInfo(s).numTasks for s in tracker.getJobInfo(j).stageIds)
                   for j in jobs]
    # gram: 11 partial blocks on 2 cores: 4 Spark tasks for the 11 (one per block task
    # paid Spark's per-task hand-offs 11 times over). Its reduction tree reads only
    # small partials and runs on the driver, as treeAggregate's last level: no job.
    block_tasks = list(stats.stage_tasks.values())
    assert block_tasks[0] == A.nblocks[0] == 11
    assert len(block_tasks) > 1  # the tree ran, and counted its tasks
    assert spark_tasks == [4]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-9)


def test_sessions_talk_to_python_workers_over_unix_sockets() -> None:
    for master in ("local[2]", "spark://10.0.0.1:7077"):
        assert session_conf(master)["spark.python.unix.domain.socket.enabled"] == "true"


def test_operator_on_every_executor(executor: Any, mats: Any) -> None:
    A, _, x, _ = mats
    g = executor.compute_one(bl.ops.gram(A))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-9)


def test_failed_task_is_retried_by_spark(spark_session: Any, mats: Any, tmp_path: Path) -> None:
    A = mats[0]
    ref = bl.compute(bl.ops.gram(A), executor="dask", work_dir=str(tmp_path / "wd"))[0]
    calls = tmp_path / "calls"
    faulty = inject_fault(bl.ops.gram(A), "gram/partial", calls, succeed=3, times=1)
    stats = RunStats()
    g = bl.compute(faulty, executor="spark", spark=spark_session, stats=stats,
                   work_dir=str(tmp_path / "ws"))[0]
    np.testing.assert_array_equal(g, ref)
    ntasks = A.nblocks[0]
    # The fourth call failed and Spark re-ran its Spark task: the failed block task
    # again, and those of its slice that ran before it (at most a slice less one).
    slices = task_slices(list(range(ntasks)),  # type: ignore[arg-type]
                         partition_count(ntasks, spark_session.sparkContext.defaultParallelism))
    slice_size = max(len(s) for s in slices)
    assert slice_size == 3
    assert ntasks + 1 <= len(list(calls.iterdir())) <= ntasks + slice_size
    assert stats.executor == "spark"
    assert stats.stage_tasks["gram/partial"] == ntasks


def test_exhausted_retries_then_resume(spark_session: Any, mats: Any, tmp_path: Path) -> None:
    A, _, x, _ = mats
    work = str(tmp_path / "ws")
    # Every call after the ninth of eleven fails: more failures than spark.task.maxFailures.
    faulty = inject_fault(bl.ops.gram(A), "gram/partial", tmp_path / "calls", succeed=9)
    with pytest.raises(TaskFailedError, match="injected fault"):
        bl.compute(faulty, executor="spark", spark=spark_session, work_dir=work)
    stats = RunStats()
    g = bl.compute(bl.ops.gram(A), executor="spark", spark=spark_session, resume=True,
                   work_dir=work, stats=stats)[0]
    assert stats.tasks_skipped >= 9  # blocks written before the failure are not redone
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-9)


def test_no_second_context_behind_the_users_back(spark_session: Any, mats: Any,
                                                 tmp_path: Path) -> None:
    A = mats[0]
    with pytest.raises(ExecutorError, match="already running"):
        bl.compute(bl.ops.gram(A), executor="spark", address="local[1]",
                   work_dir=str(tmp_path / "w"))
    # The user's session is untouched.
    assert spark_session.sparkContext.parallelize([1, 2]).sum() == 3


def test_setup_errors(spark_session: Any) -> None:
    with pytest.raises(ExecutorError, match="not both"):
        SparkExecutor(spark=spark_session, master="local[1]")
    with pytest.raises(ConfigError, match="gpu"):
        SparkExecutor(master="local[2]", device="gpu")
    with pytest.raises(ConfigError, match=r"spark\.task\.resource\.gpu\.amount"):
        SparkExecutor(spark=spark_session, device="gpu")
    with pytest.raises(ValueError, match="device"):
        SparkExecutor(device="tpu")
    with pytest.raises(ConfigError, match="Client"):
        bl.compute(_lazy_dummy(), executor="spark", client=object())


def _lazy_dummy() -> Any:
    # compute validates handles before touching the inputs, so any lazy result does.
    return bl.ops.column_stats(bl.from_array(np.eye(3), "memory://blocklin-spark-dummy.zarr",
                                             overwrite=True))


def test_gpu_maps_to_spark_task_resources() -> None:
    conf = session_conf("spark://10.0.0.1:7077", device="gpu")
    assert conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert "spark.task.resource.gpu.amount" not in session_conf("spark://10.0.0.1:7077")
