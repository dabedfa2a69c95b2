"""A Spark standalone cluster with ``spark.authenticate=true`` and a shared secret runs
blocklin's plans: the secret reaches the driver through ``spark-defaults.conf``
(``SPARK_CONF_DIR``) with ``address=``, or through a session the caller builds."""

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
    conf = tmp / "conf"
    conf.mkdir()
    # The daemons and the driver read the same spark-defaults.conf.
    (conf / "spark-defaults.conf").write_text(
        f"spark.authenticate true\nspark.authenticate.secret {SECRET}\n")
    with standalone_cluster(tmp, cores=2, memory="1g", conf_dir=conf, timeout=45) as url:
        assert "authentication enabled" in (tmp / "master.log").read_text()
        yield url, conf


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
