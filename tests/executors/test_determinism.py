"""Bitwise identical results across runs, worker threads, executors and a resume.

BLAS gives different bits with one thread and with two (OpenBLAS splits a product
differently), so a task must never see the thread count change under it. Each test
runs gram, tsqr (Q and R), matmul, a sketch and column statistics in one plan on
BLAS-sized panels (2000 × 300: large enough that OpenBLAS would use both threads),
several times on two worker threads, and compares every result with one reference run
bit for bit.

Each run starts with the process's BLAS at two threads and no Python thread
controlling it, as a fresh process (a CLI run, a new worker) has on a machine with two
or more cores: there the old per-task toggle let tasks run beside one that had just
given the process its two threads back. (threadpoolctl 3.7+ lets only one thread set
OpenBLAS's shared pool and silently ignores the others, which the old toggle relied on.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (its BLAS is loaded before counts are set or read)
from threadpoolctl import ThreadpoolController, threadpool_limits

import blocklin as bl
from blocklin.testing import inject_fault
from blocklin.testing.faults import InjectedFault

RUNS = 10
ROWS, COLS, PANEL = 8000, 300, 2000
BLAS_THREADS = 2


def _blas() -> list[Any]:
    return list(ThreadpoolController().select(user_api="blas").lib_controllers)


def blas_threads() -> list[int]:
    return [int(lib.get_num_threads()) for lib in _blas()]


def _release(lib: Any) -> None:
    release = getattr(type(lib), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)


def set_blas(threads: list[int] | int) -> None:
    """Set each BLAS's count from this thread and leave no thread controlling it."""
    libs = _blas()
    for lib, n in zip(libs, threads if isinstance(threads, list) else [threads] * len(libs),
                      strict=True):
        _release(lib)
        lib.set_num_threads(n)
        _release(lib)


def fresh_blas() -> None:
    """This process's BLAS as a fresh process starts: two threads, nobody holding it."""
    set_blas(BLAS_THREADS)


@pytest.fixture(autouse=True)
def _restore_blas() -> Any:
    before = blas_threads()
    yield
    set_blas(before)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    d = tmp_path_factory.mktemp("determinism")
    rng = np.random.default_rng(12)
    A = bl.from_array(rng.standard_normal((ROWS, COLS)), d / "A.zarr", chunks=(PANEL, None))
    W = rng.standard_normal((COLS, 200))
    return A, W


def plan(A: Any, W: np.ndarray) -> list[Any]:
    Q, R = bl.ops.tsqr(A)
    return [bl.ops.gram(A), Q, R, bl.ops.matmul(A, W), bl.ops.sketch(A, 400, seed=3),
            bl.ops.column_stats(A)]


def bits(results: tuple[Any, ...]) -> list[tuple[str, bytes]]:
    """Every array of one run's results, as (name, bytes)."""
    names = ["gram", "Q", "R", "matmul", "sketch", "column_stats"]
    out = []
    for name, r in zip(names, results, strict=True):
        if hasattr(r, "to_numpy"):
            out.append((name, np.ascontiguousarray(r.to_numpy()).tobytes()))
        elif name == "column_stats":
            for f in ("mean", "variance", "min", "max", "norm_l1", "norm_l2", "num_nonzeros"):
                out.append((f"column_stats.{f}", np.asarray(getattr(r, f)).tobytes()))
        else:
            out.append((name, np.ascontiguousarray(r).tobytes()))
    return out


def differing(runs: list[list[tuple[str, bytes]]], ref: list[tuple[str, bytes]]) -> dict[str, int]:
    """Per array, how many of ``runs`` differ from ``ref`` in any bit."""
    return {name: n for i, (name, b) in enumerate(ref)
            if (n := sum(run[i][1] != b for run in runs))}


def reference(A: Any, W: np.ndarray, work: Path) -> list[tuple[str, bytes]]:
    """One run on one worker thread: no task ever runs beside another."""
    return bits(bl.compute(*plan(A, W), work_dir=str(work), num_workers=1))


def test_local_threads_same_bits_every_run(stored: tuple[Any, Any], tmp_path: Path) -> None:
    A, W = stored
    fresh_blas()
    ref = reference(A, W, tmp_path / "ref")
    runs = []
    for i in range(RUNS):
        fresh_blas()
        runs.append(bits(bl.compute(*plan(A, W), work_dir=str(tmp_path / f"w{i}"),
                                    num_workers=2)))
    assert differing(runs, ref) == {}


def test_bits_do_not_depend_on_the_callers_blas_threads(stored: tuple[Any, Any],
                                                        tmp_path: Path) -> None:
    # A caller that set its BLAS with a bare threadpool_limits(n) owns OpenBLAS's pool
    # (threadpoolctl 3.7+): a task's own limit was then silently ignored and tasks ran
    # with the caller's count.
    A, W = stored
    fresh_blas()
    ref = reference(A, W, tmp_path / "ref")
    for i, n in enumerate((2, 1, 2)):
        threadpool_limits(limits=n, user_api="blas")
        got = bits(bl.compute(*plan(A, W), work_dir=str(tmp_path / f"w{i}"), num_workers=2))
        assert differing([got], ref) == {}, f"caller at {n} BLAS threads"
        assert blas_threads() == [n] * len(blas_threads())


def test_compute_leaves_the_callers_blas_threads(stored: tuple[Any, Any], tmp_path: Path) -> None:
    # The driver's own numpy (an eager pipeline step's dense algebra) keeps its threads.
    A, W = stored
    fresh_blas()
    for i in range(3):
        bl.compute(*plan(A, W), work_dir=str(tmp_path / f"w{i}"), num_workers=2)
        assert blas_threads() == [BLAS_THREADS] * len(blas_threads())


@pytest.mark.cluster
def test_distributed_worker_with_two_threads_same_bits(stored: tuple[Any, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client, LocalCluster

    A, W = stored
    fresh_blas()
    ref = reference(A, W, tmp_path / "ref")
    # distributed's nanny starts workers with one BLAS thread unless the environment says
    # otherwise (it prefers these variables to its pre-spawn-environ config); a worker
    # started from a shell that sets them, or without a nanny, has two.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, str(BLAS_THREADS))
    runs = []
    for i in range(RUNS):
        # A fresh worker process each run, BLAS at its start-up threads: the old toggle
        # raced in a worker's first compute, then left it at one thread.
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                          dashboard_address=":0", host="127.0.0.1", silence_logs=40) as cluster, \
                Client(cluster, set_as_default=False) as client:
            assert set(client.run(blas_threads).popitem()[1]) == {BLAS_THREADS}
            runs.append(bits(bl.compute(*plan(A, W), work_dir=str(tmp_path / f"w{i}"),
                                        client=client)))
    assert differing(runs, ref) == {}


@pytest.mark.parametrize(("result", "op", "succeed"), [
    (3, "matmul/panel", 0), (3, "matmul/panel", 2),  # in the first pass, beside the others
    (1, "tsqr/form_q", 1), (1, "tsqr/form_q", 3),  # in the last pass
])
def test_resumed_run_same_bits(stored: tuple[Any, Any], tmp_path: Path, result: int, op: str,
                               succeed: int) -> None:
    A, W = stored
    fresh_blas()
    ref = reference(A, W, tmp_path / "ref")
    work = str(tmp_path / "w")
    lazy = plan(A, W)
    lazy[result] = inject_fault(lazy[result], op, tmp_path / "fault", succeed=succeed)
    fresh_blas()
    with pytest.raises(InjectedFault):
        bl.compute(*lazy, work_dir=work, num_workers=2)
    fresh_blas()
    resumed = bits(bl.compute(*plan(A, W), work_dir=work, num_workers=2, resume=True))
    assert differing([resumed], ref) == {}
