"""The function a Spark probe job runs on a worker (see :mod:`blocklin.executors.spark_python`).

This module imports nothing from blocklin: it is pickled by value, so a worker whose
Python cannot import blocklin still runs it and says so, instead of failing to
unpickle it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def probe(_: Iterable[object]) -> Iterator[tuple[str, str, str, str]]:
    """(interpreter, Python version, blocklin version or "", import error or "")."""
    import sys

    version = sys.version.split()[0]
    try:
        import blocklin
    except BaseException as exc:  # whatever stops the import is what the driver reports
        yield sys.executable, version, "", f"{type(exc).__name__}: {exc}"
        return
    yield sys.executable, version, str(getattr(blocklin, "__version__", "?")), ""
