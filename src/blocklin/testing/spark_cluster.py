"""A Spark standalone master and one worker on loopback, for tests and benchmarks.

Started with pyspark's own ``spark-class`` (Java 17 on the PATH), so no Spark
installation beside pyspark is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blocklin.testing.helpers import free_ports

__all__ = ["standalone_cluster"]


@contextmanager
def standalone_cluster(logs: Path, *, cores: int = 2, memory: str = "1g",
                       conf_dir: Path | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Run a standalone master and one worker of ``cores`` cores; yield the master URL.

    Parameters
    ----------
    logs : Path
        Folder for ``master.log``, ``worker.log`` and the worker's work dir.
    conf_dir : Path, optional
        ``SPARK_CONF_DIR`` of both daemons; its ``spark-defaults.conf`` (if any) is
        passed to them as their properties file (e.g. ``spark.authenticate``).

    Raises
    ------
    RuntimeError
        When the worker has not registered within ``timeout`` seconds or a daemon
        exited, with the tail of both logs.
    """
    import pyspark  # noqa: TID251

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    props: list[str] = []
    if conf_dir is not None:
        env["SPARK_CONF_DIR"] = str(conf_dir)
        if (conf_dir / "spark-defaults.conf").is_file():
            props = ["--properties-file", str(conf_dir / "spark-defaults.conf")]
    m_port, m_ui, w_port, w_ui = free_ports(4)
    url = f"spark://127.0.0.1:{m_port}"
    logs.mkdir(parents=True, exist_ok=True)
    commands = {
        "master": ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                   "--port", str(m_port), "--webui-port", str(m_ui), *props],
        "worker": ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                   "--port", str(w_port), "--webui-port", str(w_ui), "--cores", str(cores),
                   "--memory", memory, "--work-dir", str(logs / "work"), *props, url],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd in commands.items():
            with open(logs / f"{name}.log", "wb") as out:
                procs.append(subprocess.Popen([str(home / "bin" / "spark-class"), *cmd],
                                              env=env, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while _alive_workers(m_ui) < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                tails = "".join((logs / f"{n}.log").read_text()[-2000:] for n in commands)
                raise RuntimeError(f"standalone cluster did not come up (logs in {logs}):\n"
                                   + tails)
            time.sleep(0.5)
        yield url
    finally:
        for p in reversed(procs):
            _stop(p)


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)
