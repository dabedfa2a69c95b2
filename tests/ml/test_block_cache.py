"""Iterative fits keep decoded blocks in worker memory: one storage read per block.

Real components on every executor: stored arrays, the threaded scheduler, a
distributed LocalCluster (two worker processes) and Spark in local mode. Reads are
counted by RunStats (storage reads per array URL, cache hits and misses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.executors.base import RunStats, collect_stats
from blocklin.ml import LinearRegression, LogisticRegression
from blocklin.testing.fixtures import ExecutorCase

ROWS, COLS, CHUNK = 3000, 6, 500  # six row blocks of 24 kB


def data(tmp_path: Path, seed: int = 0) -> tuple[bl.BlockMatrix, bl.BlockMatrix]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(ROWS, COLS)) + rng.normal(size=COLS)
    y = (X @ rng.normal(size=COLS) + rng.logistic(size=ROWS) > 0).astype(np.float64)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(CHUNK, None), overwrite=True)
    Y = bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(CHUNK, None), overwrite=True)
    return A, Y


def fit(executor: ExecutorCase, A: Any, Y: Any, cache: int | str | None,
        solver: str = "lbfgs") -> tuple[LogisticRegression, RunStats]:
    """Fit with ``cache_bytes=cache`` (None: the estimator's default, "auto")."""
    options = dict(executor.kwargs)
    if cache is not None:
        options["cache_bytes"] = cache
    # A few iterations are enough passes to count reads (and keep Spark's jobs few).
    model = LogisticRegression(solver=solver, max_iter=4,  # type: ignore[arg-type]
                               work_dir=str(executor.work_dir), compute_options=options)
    stats = RunStats()
    with collect_stats() as runs:
        model.fit(A, Y)
    for run in runs:
        stats.merge(run)
    return model, stats


def test_iterative_fit_reads_each_block_once(executor: ExecutorCase, tmp_path: Path) -> None:
    A, Y = data(tmp_path)
    nblocks = A.nblocks[0]
    plain, none = fit(executor, A, Y, 0)
    cached, st = fit(executor, A, Y, "auto")
    # Caching changes where blocks come from, never the arithmetic.
    np.testing.assert_array_equal(cached.coef_, plain.coef_)
    np.testing.assert_array_equal(cached.intercept_, plain.intercept_)
    assert cached.n_passes_ == plain.n_passes_ > 3
    assert none.array_reads[A.url] == plain.n_passes_ * nblocks
    assert none.cache_hits == none.cache_misses == 0
    assert st.cache_bytes > 0
    reads = st.array_reads[A.url]
    if executor.name == "spark":
        # Spark picks the Python worker of each task: a block may be read once per worker.
        assert nblocks <= reads <= 2 * nblocks
    else:
        assert reads == nblocks
    # X and the encoded labels (a stored column the estimator writes) are both cached.
    assert st.cache_hits + st.cache_misses == 2 * plain.n_passes_ * nblocks


def test_tiny_budget_rereads(executor: ExecutorCase, tmp_path: Path) -> None:
    """A budget below one block keeps nothing: every pass reads every block again."""
    A, Y = data(tmp_path)
    model, st = fit(executor, A, Y, 1000)
    assert st.cache_hits == 0
    assert st.array_reads[A.url] == model.n_passes_ * A.nblocks[0]


def test_partial_budget_keeps_a_resident_set(tmp_path: Path, work_dir: Path) -> None:
    """Three of six blocks of X (and y) fit: they are read once, the others every pass."""
    A, Y = data(tmp_path)
    # One thread: blocks are offered to the cache in index order, so which fit is known.
    case = ExecutorCase("threads", work_dir, {"executor": "dask", "num_workers": 1})
    pair = CHUNK * COLS * 8 + CHUNK * 8
    model, st = fit(case, A, Y, 3 * pair + 100)
    passes, nblocks = model.n_passes_, A.nblocks[0]
    # Plain LRU would evict every block just before its next use and re-read them all.
    assert st.array_reads[A.url] == 3 + passes * (nblocks - 3)
    assert st.cache_hits == 2 * 3 * (passes - 1)


def test_overwritten_array_is_not_served_from_cache(executor: ExecutorCase,
                                                    tmp_path: Path) -> None:
    """Blocks cached for one content never serve another written at the same path."""
    A, _ = data(tmp_path, seed=0)
    stale = bl.open(tmp_path / "X.zarr")
    first = executor.compute_one(bl.ops.gram(A), cache_bytes="auto")
    B, _ = data(tmp_path, seed=1)  # new content, same path; A's blocks stay cached
    expected = B.to_numpy().T @ B.to_numpy()
    for handle in (B, stale):  # a handle opened before the overwrite reads the new chunks
        st = RunStats()
        got = executor.compute_one(bl.ops.gram(handle), cache_bytes="auto", stats=st)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert not np.allclose(got, first)
    fresh = RunStats()
    executor.compute_one(bl.ops.gram(B), cache_bytes="auto", stats=fresh)
    assert fresh.cache_hits > 0 or executor.name == "spark"


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_linear_and_newton_solvers_cache(solver: str, tmp_path: Path, work_dir: Path) -> None:
    A, Y = data(tmp_path)
    case = ExecutorCase("threads", work_dir, {"executor": "dask"})
    model, st = fit(case, A, Y, None, solver=solver)
    assert st.array_reads[A.url] == A.nblocks[0] < model.n_passes_ * A.nblocks[0]
    lin = RunStats()
    with collect_stats() as runs:
        LinearRegression(solver="lbfgs", work_dir=str(work_dir)).fit(A, Y)
    for run in runs:
        lin.merge(run)
    assert lin.array_reads[A.url] == A.nblocks[0]
