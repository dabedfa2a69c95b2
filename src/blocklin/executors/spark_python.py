"""Do Spark's Python workers import blocklin? Checked before a plan runs on a session.

Every block task runs :func:`blocklin.plan.run_task` in a Spark Python worker, so the
worker's interpreter must import the same blocklin as the driver. A session the user
built without ``PYSPARK_PYTHON`` (or ``spark.pyspark.python``) runs its workers on
whatever ``python3`` the executors find, and the first task then fails inside a Java
stack trace with ``No module named 'blocklin'``, after its retries.

:func:`check_worker_python` runs a one-task probe job once per Spark application
(about a tenth of a second on local cores) and raises
:class:`~blocklin.errors.WorkerEnvironmentError` naming the worker's interpreter and
what to set. Shipping blocklin to the workers (``addPyFile``) would not be enough:
an interpreter without blocklin lacks its dependencies too (numpy, zarr, ...).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import blocklin
from blocklin.errors import WorkerEnvironmentError

__all__ = ["check_worker_python"]

#: Spark applications whose workers imported this blocklin (checked once each).
_CHECKED: set[str] = set()
_LOCK = threading.Lock()


def _fix(worker: str) -> str:
    return (f"set PYSPARK_PYTHON (spark.pyspark.python with spark-submit) to an interpreter "
            f"with blocklin {blocklin.__version__} installed before the SparkSession starts "
            f"(this driver runs {sys.executable}), or install blocklin[spark] for {worker} on "
            "every Spark worker")


def check_worker_python(spark: Any) -> None:
    """Refuse a session whose Python workers cannot import this blocklin.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
        The session a plan is about to run on.

    Raises
    ------
    WorkerEnvironmentError
        When a worker's interpreter cannot import blocklin, imports another version,
        or cannot be started; the message names the interpreter and ``PYSPARK_PYTHON``.

    Notes
    -----
    One probe job of one task per application; later calls return at once. A local
    session whose workers run this very interpreter is not probed.
    """
    sc = spark.sparkContext
    app = str(sc.applicationId)
    local = str(sc.master).startswith("local")
    if app in _CHECKED or (local and getattr(sc, "pythonExec", None) == sys.executable):
        return
    with _LOCK:
        if app in _CHECKED:
            return
        exe, version, found, error = _run_probe(sc)
        # What Spark starts (PYSPARK_PYTHON), and the interpreter that turned out to be.
        told = str(getattr(sc, "pythonExec", None) or exe)
        worker = f"{told} (Python {version}" + (f", {exe})" if exe != told else ")")
        if error:
            raise WorkerEnvironmentError(
                f"Spark's Python workers cannot import blocklin: they run {worker}, which "
                f"raised {error}; {_fix(told)}")
        if found != blocklin.__version__:
            raise WorkerEnvironmentError(
                f"Spark's Python workers run blocklin {found} ({worker}) but this driver "
                f"runs {blocklin.__version__}; tasks must run the driver's version: "
                f"{_fix(told)}")
        _CHECKED.add(app)


def _run_probe(sc: Any) -> tuple[str, str, str, str]:
    from py4j.protocol import Py4JJavaError
    from pyspark import cloudpickle  # noqa: TID251
    from pyspark.errors.exceptions.captured import CapturedException  # noqa: TID251

    from blocklin.executors import _worker_probe

    # By value: a worker without blocklin could not unpickle a reference to it.
    cloudpickle.register_pickle_by_value(_worker_probe)
    try:
        sc.setJobDescription("blocklin: do the Python workers import blocklin?")
        rows: list[tuple[str, str, str, str]] = sc.parallelize([0], 1).mapPartitions(
            _worker_probe.probe).collect()
    except (Py4JJavaError, CapturedException) as exc:
        from blocklin.executors.spark import _last_python_error

        worker = getattr(sc, "pythonExec", None) or "the workers' python"
        raise WorkerEnvironmentError(
            f"Spark's Python workers ({worker}) could not run a probe task: "
            f"{_last_python_error(str(exc))}; {_fix(worker)}") from None
    finally:
        cloudpickle.unregister_pickle_by_value(_worker_probe)
        sc.setJobDescription(None)
    return rows[0]
