"""Shared helpers for the benchmarks that run each contender in its own process:
peak-RSS sampling, the worker's RESULT line, spawning a worker and reading it back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import threading
from collections.abc import Callable, Iterable
from typing import Any

RESULT = "RESULT "


class PeakRSS:
    """Peak resident memory of this process and, with ``children``, its children
    (Spark's JVM, dask workers), sampled every 20 ms. (``ru_maxrss`` would also count the
    parent's peak: Linux keeps it across exec.)"""

    def __init__(self, children: bool = True) -> None:
        self.peak = 0
        self._children = children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)] if self._children else [me]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_reported(work: Callable[[], dict[str, Any]]) -> None:
    """Worker side: run ``work`` under :class:`PeakRSS`, print its result as a RESULT line."""
    rss = PeakRSS()
    out = work()
    out["peak_rss"] = rss.stop()
    print(RESULT + json.dumps(out))


def spawn(cmd: list[str], label: str, timeout: float | None = None) -> dict[str, Any]:
    """Driver side: run a worker command; return its last RESULT line, parsed.

    With ``timeout`` (seconds), a worker still running then is killed with its whole
    process group (a Spark JVM, dask workers) and :class:`TimeoutError` raised.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=timeout is not None)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"{label} still running after {timeout:.0f} s; killed") from None
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} failed:\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT):])
    return result


def combine(runs: list[dict[str, Any]], timed: Iterable[str]) -> dict[str, Any]:
    """The last run, with the median of each ``timed`` key and the largest peak RSS."""
    out = dict(runs[-1])
    for key in timed:
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    out["peak_rss"] = max(r["peak_rss"] for r in runs)
    return out
