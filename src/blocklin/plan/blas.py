"""BLAS thread counts fixed for a worker's life, never toggled per task.

A block's bits depend on how many threads BLAS splits its products over (OpenBLAS
with one thread and with two round differently), so every task must run with the
same count, ``GroupRuntime.blas_threads``, and no task may see it change under it.
Most BLAS builds (OpenBLAS on pthreads, MKL, BLIS) keep one count for the whole
process: a task that set it on entry and restored it on exit changed it for the
tasks running beside it. So the count is set where it can be held:

- :func:`hold`: the local threaded executor sets it once around a whole compute (the
  calling process is the worker for that compute's life) and gives the caller its
  own count back afterwards, so the driver's numpy between computes keeps its threads.
- :func:`fixed_for_worker`: every task calls it first. In a worker process (dask
  ``distributed``, Spark's Python workers) the first task fixes the count for the
  process's life; with a hold in force it changes nothing. OpenBLAS built on OpenMP
  keeps one count per thread: that is fixed once in each thread that runs tasks.

threadpoolctl (3.7 and later) lets only one Python thread at a time set OpenBLAS's
shared pool and silently ignores the others, so the setter here takes it over, sets,
and lets it go. A worker that shares its process with the driver (``LocalCluster(
processes=False)``) fixes the driver's count too, and sees any count the driver sets
later: its bits are only as fixed as the driver leaves them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["fixed_for_worker", "hold", "worker_blas"]

_lock = threading.Lock()
_process_fixed = False
_holds = 0
_saved: list[tuple[Any, int]] = []
_found: list[Any] | None = None
_thread = threading.local()


def _libraries() -> list[Any]:
    """threadpoolctl's controllers of every BLAS a kernel can call (call with the lock)."""
    global _found
    if _found is None:
        # Loaded first: a BLAS that loads after its count was set keeps its default.
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _found = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _found


def _per_thread(lib: Any) -> bool:
    # OpenBLAS over OpenMP sets the calling thread's count (omp_set_num_threads).
    return getattr(lib, "threading_layer", None) == "openmp"


def _set(lib: Any, threads: int) -> None:
    release = getattr(type(lib), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)
    lib.set_num_threads(threads)
    if release is not None:
        release(force=True)


@contextmanager
def hold(threads: int) -> Iterator[None]:
    """Run the block with every shared BLAS pool of this process at ``threads``.

    Nested and concurrent holds share one setting: the first sets it, the last gives
    back the counts found before the first. Leave the block only when no task of it
    runs any more.

    Parameters
    ----------
    threads : int
        BLAS threads per task (``GroupRuntime.blas_threads``).
    """
    global _holds, _saved
    with _lock:
        if _holds == 0:
            libs = [lib for lib in _libraries() if not _per_thread(lib)]
            _saved = [(lib, int(lib.get_num_threads())) for lib in libs]
            for lib in libs:
                _set(lib, threads)
        _holds += 1
    try:
        yield
    finally:
        with _lock:
            _holds -= 1
            if _holds == 0:
                for lib, n in _saved:
                    _set(lib, n)
                _saved = []


def fixed_for_worker(threads: int) -> None:
    """Fix this worker's BLAS threads at ``threads`` for its life (first call only).

    Called at the start of every task: per process for shared pools unless a
    :func:`hold` is in force, per thread for OpenMP pools. Later calls, with any
    count, change nothing.

    Parameters
    ----------
    threads : int
        BLAS threads per task (``GroupRuntime.blas_threads``).
    """
    global _process_fixed
    if getattr(_thread, "fixed", False) and (_process_fixed or _holds):
        return
    with _lock:
        libs = _libraries()
        for lib in libs:
            if _per_thread(lib) and not getattr(_thread, "fixed", False):
                _set(lib, threads)
        if not _process_fixed and not _holds:
            for lib in libs:
                if not _per_thread(lib):
                    _set(lib, threads)
            _process_fixed = True
        _thread.fixed = True


@contextmanager
def worker_blas(threads: int) -> Iterator[None]:
    """A task's block: :func:`fixed_for_worker` on entry; nothing is given back on exit."""
    fixed_for_worker(threads)
    yield
