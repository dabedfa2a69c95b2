"""Shared helpers for the benchmarks: timing, data generation, machine limits."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import blocklin as bl
from blocklin.storage import BufferPool, read_block


def median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Run ``fn`` ``repeat`` times; return the median time in seconds and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def make_matrix(path: Path, rows: int, cols: int, chunk_rows: int, seed: int = 0) -> bl.BlockMatrix:
    """Write (once) a Gaussian matrix block by block, without holding it whole."""
    if (path / "zarr.json").exists():
        A = bl.open(path)
        if A.shape == (rows, cols) and A.chunks[0] == chunk_rows:
            return A
    import dask.array as da

    x = da.random.default_rng(seed).standard_normal((rows, cols), chunks=(chunk_rows, cols))
    return bl.from_array(x, path, chunks=(chunk_rows, None), overwrite=True)


def read_all_blocks(A: bl.BlockMatrix, threads: int | ThreadPoolExecutor) -> None:
    """Read and verify every block into reused buffers: the fastest read path (the
    T_read of the machine limit). Pass a long-lived pool to read on threads whose
    buffers are warm, as the executors' worker threads are (fresh buffers add page
    faults), or a thread count for a fresh pool."""

    def one(index: tuple[int, ...]) -> None:
        pool = BufferPool.for_thread()
        read_block(A.store, A.meta, index, pool)
        pool.release()

    if isinstance(threads, ThreadPoolExecutor):
        list(threads.map(one, A.meta.indices()))
        return
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, A.meta.indices()))


def blocks_in_memory(A: bl.BlockMatrix) -> list[np.ndarray]:
    return [A.block(i) for i in range(A.nblocks[0])]


def compute_syrk(blocks: list[np.ndarray], threads: int) -> np.ndarray:
    """AᵀA over in-memory blocks: numpy's aᵀ·a (BLAS ?syrk, GIL released), one
    single-threaded call per block, ``threads`` at once, summed in order."""
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(lambda b: b.T @ b, blocks))
    return sum(parts[1:], parts[0])


def compute_syrk_blas_threads(blocks: list[np.ndarray], threads: int) -> np.ndarray:
    """The same with one block at a time and BLAS using every core."""
    with threadpool_limits(threads, user_api="blas"):
        parts = [b.T @ b for b in blocks]
    return sum(parts[1:], parts[0])


def gram_pass_limit(A: bl.BlockMatrix, threads: int,
                    repeat: int) -> tuple[float, float, float]:
    """(T_read, T_syrk a task per core, T_syrk threaded BLAS): one pass forming AᵀA at
    this machine's limit, measured now.

    T_read reads and verifies every chunk with all cores (the fastest read path); the
    syrk times run aᵀa over the blocks already in memory, the two ways. On few cores
    reading and BLAS share the CPUs, so a pass costs at least T_read + the faster syrk.
    """
    read_all_blocks(A, threads)  # warm the page cache and the buffers
    t_read, _ = median_time(lambda: read_all_blocks(A, threads), repeat)
    blocks = blocks_in_memory(A)
    t_tasks, _ = median_time(lambda: compute_syrk(blocks, threads), repeat)
    t_blas, _ = median_time(lambda: compute_syrk_blas_threads(blocks, threads), repeat)
    return t_read, t_tasks, t_blas
