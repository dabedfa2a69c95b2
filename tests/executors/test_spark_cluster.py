"""A real Spark standalone cluster: master and worker JVMs from pyspark's installation.

The driver runs in its own process (Spark allows one SparkContext per process, and
the test session may already hold the local-mode one), submitting a blocklin graph
to the master with ``executor="spark", address="spark://..."``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.testing.spark_cluster import standalone_cluster

pytest.importorskip("pyspark")

pytestmark = [pytest.mark.spark, pytest.mark.cluster]

DRIVER = """
import sys, numpy as np, blocklin as bl
from blocklin.executors.base import RunStats
A = bl.open(sys.argv[2])
stats = RunStats()
g, s = bl.compute(bl.ops.gram(A), bl.ops.column_stats(A), executor="spark",
                  address=sys.argv[1], work_dir=sys.argv[3], stats=stats)
np.save(sys.argv[4], np.vstack([g, s.mean[None]]))
print("TASKS", stats.tasks_run, stats.executor)
"""


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    with standalone_cluster(tmp_path / "logs", cores=2, memory="1g", timeout=45) as url:
        yield url


def test_graph_on_standalone_cluster(standalone: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 5))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    out = tmp_path / "result.npy"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, standalone, A.url, str(tmp_path / "work"), str(out)],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TASKS" in proc.stdout and "spark" in proc.stdout
    res = np.load(out)
    np.testing.assert_allclose(res[:5], x.T @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res[5], x.mean(axis=0), rtol=1e-12, atol=1e-15)
