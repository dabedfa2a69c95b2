"""A Spark standalone cluster with ``spark.authenticate=true`` and a shared secret runs
blocklin's plans: the secret reaches the driver through ``spark-defaults.conf``
(``SPARK_CONF_DIR``) with ``address=``, or through a session the caller builds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.executors.test_spark_cluster import _alive_workers, _spark_home, _stop

import blocklin as bl
from blocklin.testing.helpers import free_ports

pytest.importorskip("pyspark")

pytestmark = [pytest.mark.spark, pytest.mark.cluster]

SECRET = "blocklin-test-secret-3f9a"

DRIVER_DEFAULTS = """
import sys, numpy as np, blocklin as bl
(g,) = bl.compute(bl.ops.gram(bl.open(sys.argv[2])), executor="spark", address=sys.argv[1],
                  work_dir=sys.argv[3])
np.save(sys.argv[4], g)
"""

DRIVER_SESSION = """
import sys, numpy as np, blocklin as bl
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1])
         .config("spark.authenticate", "true")
         .config("spark.authenticate.secret", sys.argv[5]).getOrCreate())
(g,) = bl.compute(bl.ops.gram(bl.open(sys.argv[2])), executor="spark", spark=spark,
                  work_dir=sys.argv[3])
np.save(sys.argv[4], g)
spark.stop()
"""


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("sparkauth")
    home = _spark_home()
    conf = tmp / "conf"
    conf.mkdir()
    # The daemons and the driver read the same spark-defaults.conf.
    (conf / "spark-defaults.conf").write_text(
        f"spark.authenticate true\nspark.authenticate.secret {SECRET}\n")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_CONF_DIR": str(conf)}
    m_port, m_ui, w_port, w_ui = free_ports(4)
    spark_class = str(home / "bin" / "spark-class")
    props = ["--properties-file", str(conf / "spark-defaults.conf")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(tmp / "master.log", "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(m_port), "--webui-port", str(m_ui), *props],
                env=env, stdout=out, stderr=subprocess.STDOUT))
        url = f"spark://127.0.0.1:{m_port}"
        with open(tmp / "worker.log", "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--port", str(w_port), "--webui-port", str(w_ui), "--cores", "2",
                 "--memory", "1g", "--work-dir", str(tmp / "worker"), *props, url],
                env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 45
        while _alive_workers(m_ui) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("authenticated standalone cluster did not come up:\n"
                            + (tmp / "master.log").read_text()[-2000:]
                            + (tmp / "worker.log").read_text()[-2000:])
            time.sleep(0.5)
        assert "authentication enabled" in (tmp / "master.log").read_text()
        yield url, conf
    finally:
        for p in reversed(procs):
            _stop(p)


@pytest.mark.parametrize("how", ["spark-defaults.conf", "session"])
def test_gram_on_an_authenticated_standalone_cluster(auth_cluster: tuple[str, Path],
                                                     tmp_path: Path, how: str) -> None:
    url, conf = auth_cluster
    x = np.random.default_rng(5).standard_normal((400, 5))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    out = tmp_path / "g.npy"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    if how == "spark-defaults.conf":
        env["SPARK_CONF_DIR"] = str(conf)
        code, extra = DRIVER_DEFAULTS, []
    else:
        env.pop("SPARK_CONF_DIR", None)
        code, extra = DRIVER_SESSION, [SECRET]
    proc = subprocess.run([sys.executable, "-c", code, url, A.url, str(tmp_path / "work"),
                           str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(out), x.T @ x, rtol=1e-12, atol=1e-12)
