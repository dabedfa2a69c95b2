"""A user's SparkSession whose Python workers cannot import blocklin is refused up front.

Spark local mode with ``PYSPARK_PYTHON`` pointing at a wrapper of this interpreter
whose path shadows blocklin (an import of it fails exactly as on a worker without
blocklin), then at a wrapper that imports it: the first is refused with a named
error naming the interpreter and PYSPARK_PYTHON before anything is written, the
second runs and gives numpy's numbers. In a subprocess: a SparkContext reads
``PYSPARK_PYTHON`` when it starts, and a process holds one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyspark")

pytestmark = pytest.mark.spark

SCRIPT = r"""
import json, os, sys, time
import numpy as np
import blocklin as bl
from blocklin.errors import WorkerEnvironmentError
from blocklin.executors.spark import local_session

tmp, bad, good = sys.argv[1:4]
x = np.random.default_rng(0).normal(size=(300, 4))
A = bl.from_array(x, f"{tmp}/A.zarr", chunks=(100, None))
out = {}
for name, exe in (("bad", bad), ("good", good)):
    os.environ["PYSPARK_PYTHON"] = exe
    spark = local_session(cores=1)
    work = f"{tmp}/work-{name}"
    t0 = time.perf_counter()
    try:
        g = bl.compute(bl.ops.gram(A), executor="spark", spark=spark, work_dir=work)[0]
        out[name] = {"ok": True, "err": float(np.abs(g - x.T @ x).max()),
                     "seconds": time.perf_counter() - t0}
    except WorkerEnvironmentError as exc:
        out[name] = {"ok": False, "error": str(exc), "written": os.path.exists(work),
                     "seconds": time.perf_counter() - t0}
    finally:
        spark.stop()
print("RESULT " + json.dumps(out))
"""


def _wrapper(path: Path, extra_path: str = "") -> str:
    env = f'PYTHONPATH="{extra_path}${{PYTHONPATH:+:$PYTHONPATH}}" ' if extra_path else ""
    path.write_text(f'#!/bin/sh\n{env}exec "{sys.executable}" "$@"\n')
    path.chmod(0o755)
    return str(path)


def test_workers_without_blocklin_are_refused_by_name(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "blocklin"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'blocklin'\", name='blocklin')\n")
    bad = _wrapper(tmp_path / "python-without-blocklin", str(shadow.parent))
    good = _wrapper(tmp_path / "python-with-blocklin")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), bad, good],
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "BLOCKLIN_LOG_LEVEL": "WARNING"})
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["bad"]["ok"] is False, out
    msg = out["bad"]["error"]
    assert f"they run {bad}" in msg and "No module named 'blocklin'" in msg
    assert "PYSPARK_PYTHON" in msg and sys.executable in msg
    assert out["bad"]["written"] is False  # refused in the executor's check, before writes
    assert out["good"]["ok"] is True and out["good"]["err"] < 1e-10, out
