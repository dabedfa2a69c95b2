"""pytest fixtures: one operator suite on every executor (style rule 21).

Use ``executor`` in a test to get an :class:`ExecutorCase`; call ``case.compute(*lazy)``.
The parametrization covers the embedded threaded scheduler, a real
``distributed.LocalCluster`` with worker processes, and Spark in local mode (added by
the Spark executor when pyspark is installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from blocklin.executors.api import compute
from blocklin.executors.base import RunStats
from blocklin.executors.options import ComputeOptions

__all__ = ["EXECUTOR_CASES", "ExecutorCase"]

EXECUTOR_CASES = ("threads", "distributed", "spark")


@dataclass
class ExecutorCase:
    """An executor configuration plus a private work directory."""

    name: str
    work_dir: Path
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> ComputeOptions:
        """This case's engine and work directory, for an estimator's ``compute_options``
        or an eager operator's."""
        return ComputeOptions.of({"work_dir": str(self.work_dir), **self.kwargs})

    def compute(self, *results: Any, **extra: Any) -> tuple[Any, ...]:
        return compute(*results, compute_options=self.options, **extra)

    def compute_one(self, result: Any, **extra: Any) -> Any:
        return self.compute(result, **extra)[0]

    def stats(self) -> RunStats:
        return RunStats()


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A real LocalCluster: two worker processes, one thread each, on loopback."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", host="127.0.0.1", silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """A local-mode SparkSession (two cores), shared by the session's tests."""
    pytest.importorskip("pyspark")
    from blocklin.executors.spark import local_session

    spark = local_session(cores=2)
    yield spark
    spark.stop()


@pytest.fixture(params=EXECUTOR_CASES)
def executor(request: pytest.FixtureRequest, tmp_path: Path) -> ExecutorCase:
    name = request.param
    work = tmp_path / "work"
    if name == "threads":
        return ExecutorCase(name, work, {"executor": "dask"})
    if name == "distributed":
        return ExecutorCase(name, work, {"executor": "dask",
                                         "client": request.getfixturevalue("dask_client")})
    try:
        import blocklin.executors.spark  # noqa: F401
    except ImportError:
        pytest.skip("the Spark executor is not available")
    return ExecutorCase(name, work, {"executor": "spark",
                                     "spark": request.getfixturevalue("spark_session")})


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "work"
