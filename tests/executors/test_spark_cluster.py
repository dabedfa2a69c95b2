"""A real Spark standalone cluster: master and worker JVMs from pyspark's installation.

The driver runs in its own process (Spark allows one SparkContext per process, and
the test session may already hold the local-mode one), submitting a blocklin graph
to the master with ``executor="spark", address="spark://..."``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.testing.helpers import free_ports

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


def _spark_home() -> Path:
    import pyspark  # noqa: TID251

    return Path(pyspark.__file__).parent


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    home = _spark_home()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    m_port, m_ui, w_port, w_ui = free_ports(4)
    spark_class = str(home / "bin" / "spark-class")
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with open(logs / "master.log", "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(m_port), "--webui-port", str(m_ui)],
                env=env, stdout=out, stderr=subprocess.STDOUT))
        url = f"spark://127.0.0.1:{m_port}"
        with open(logs / "worker.log", "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--port", str(w_port), "--webui-port", str(w_ui), "--cores", "2",
                 "--memory", "1g", "--work-dir", str(tmp_path / "worker"), url],
                env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 45
        while _alive_workers(m_ui) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("standalone cluster did not come up:\n"
                            + (logs / "master.log").read_text()[-2000:]
                            + (logs / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        for p in reversed(procs):
            _stop(p)


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
