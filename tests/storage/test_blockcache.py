"""The per-process block cache: budget, eviction order, read-only blocks, threads, and
how a compute's budget is fitted into the process's memory bound."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.config import machine_memory, parse_cache_bytes
from blocklin.errors import InputValueError
from blocklin.executors.base import RunStats
from blocklin.plan.finalize import finalize
from blocklin.plan.memory import fit_cache_budget
from blocklin.storage.blockcache import BlockCache, CacheKey, content_token

BLOCK = np.arange(100.0).reshape(10, 10)  # 800 bytes


def key(i: int, token: str = "t") -> CacheKey:
    return ("mem://A", token, (i, 0), "float64")


def load(i: int) -> np.ndarray:
    return BLOCK + i


def test_hit_returns_a_read_only_copy() -> None:
    cache = BlockCache()
    buf = load(0)
    got, hit = cache.fetch(key(0), lambda: buf, 10_000, "run")
    assert not hit and not got.flags.writeable
    buf[:] = -1  # the pooled read buffer is reused by the next task
    again, hit = cache.fetch(key(0), lambda: pytest.fail("read again"), 10_000, "run")
    assert hit and again is got
    np.testing.assert_array_equal(again, load(0))
    with pytest.raises(ValueError, match="read-only"):
        again += 1


def test_csr_blocks_are_frozen_in_place() -> None:
    cache = BlockCache()
    block = sp.random(20, 10, density=0.3, format="csr", random_state=0)
    got, _ = cache.fetch(key(0), lambda: block, 10_000, "run")
    assert got is block and not got.data.flags.writeable
    assert cache.nbytes == block.data.nbytes + block.indices.nbytes + block.indptr.nbytes


def test_blocks_over_budget_are_not_kept() -> None:
    cache = BlockCache()
    buf = load(0)
    got, hit = cache.fetch(key(0), lambda: buf, 799, "run")
    assert got is buf and not hit and len(cache) == 0


def test_scan_keeps_a_resident_set_and_evicts_older_runs_lru() -> None:
    cache = BlockCache()
    budget = 3 * BLOCK.nbytes
    for _ in range(3):  # a cyclic scan over five blocks, three fit
        hits = [cache.fetch(key(i), lambda i=i: load(i), budget, "run1")[1] for i in range(5)]
    assert hits == [True, True, True, False, False]
    # A later run evicts the earlier run's blocks, least recently used first.
    cache.fetch(key(0), lambda: load(0), budget, "run2")  # touch 0 for run2
    cache.fetch(key(7), lambda: load(7), budget, "run2")
    assert [cache.fetch(key(i), lambda: load(9), budget, "run2")[1] for i in (0, 2, 7)] == \
        [True, True, True]
    assert cache.nbytes == budget


def test_trim_and_token_in_key() -> None:
    cache = BlockCache()
    cache.fetch(key(0, "old"), lambda: load(0), 10_000, "run")
    _, hit = cache.fetch(key(0, "new"), lambda: load(1), 10_000, "run")
    assert not hit
    cache.trim(BLOCK.nbytes)
    assert cache.nbytes == BLOCK.nbytes
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0


def test_threads_share_one_consistent_cache() -> None:
    cache = BlockCache()
    budget = 20 * BLOCK.nbytes

    def work(t: int) -> bool:
        for r in range(50):
            i = (t + r) % 30
            got, _ = cache.fetch(key(i), lambda i=i: load(i), budget, "run")
            if not np.array_equal(got, load(i)):
                return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))
    assert cache.nbytes == len(cache) * BLOCK.nbytes <= budget


def test_content_token_changes_with_metadata() -> None:
    assert content_token("fp", b"{}") != content_token("fp", b'{"a": 1}')
    assert content_token("fp", b"{}") != content_token("fq", b"{}")
    assert content_token("fp", None) == content_token("fp", None)


def test_parse_cache_bytes() -> None:
    assert parse_cache_bytes(None) == 0 and parse_cache_bytes(0) == 0
    assert parse_cache_bytes("auto") is None
    assert parse_cache_bytes("2MiB") == 2 * 2**20
    with pytest.raises(InputValueError):
        parse_cache_bytes("lots")


def test_fit_cache_budget() -> None:
    assert fit_cache_budget(100, 1000, 4, 200) == 100
    assert fit_cache_budget(900, 1000, 4, 200) == 200
    assert fit_cache_budget(900, 1000, 8, 200) == 0


def _need(lazy: object) -> int:
    return max(g.memory for g in finalize(lazy.plan, 2**40).groups)  # type: ignore[attr-defined]


def test_compute_fits_the_budget_into_memory(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    A = bl.from_array(np.ones((400, 5)), tmp_path / "A.zarr", chunks=(100, None))
    lazy = bl.ops.gram(A)
    work = str(tmp_path / "w")
    huge = RunStats()
    bl.compute(lazy, work_dir=work, cache_bytes=2**60, num_workers=2, stats=huge)
    # The cache gets what the machine has left once two threads' tasks are reserved.
    assert huge.cache_bytes == machine_memory() - 2 * _need(lazy)
    monkeypatch.setenv("BLOCKLIN_BLOCK_CACHE_BYTES", "3MiB")
    env = RunStats()
    bl.compute(lazy, work_dir=work, cache_bytes="auto", stats=env)
    # The first compute's blocks are still in this process (keys from the same content).
    assert env.cache_bytes == 3 * 2**20 and (env.cache_hits, env.cache_misses) == (4, 0)
    monkeypatch.setenv("BLOCKLIN_BLOCK_CACHE_BYTES", "0")
    off = RunStats()
    bl.compute(lazy, work_dir=work, cache_bytes="auto", stats=off)
    assert off.cache_bytes == 0 and off.cache_hits == off.cache_misses == 0


def test_worker_budget_within_memory_limit(dask_client: object, tmp_path: Path) -> None:
    A = bl.from_array(np.ones((400, 5)), tmp_path / "A.zarr", chunks=(100, None))
    lazy = bl.ops.gram(A)
    info = dask_client.scheduler_info(n_workers=-1)["workers"]  # type: ignore[attr-defined]
    limit = min(w["memory_limit"] for w in info.values())
    st = RunStats()
    bl.compute(lazy, client=dask_client, work_dir=str(tmp_path / "w"), cache_bytes=2**60,
               stats=st)
    assert st.cache_bytes == limit - _need(lazy)  # one thread per worker
    auto = RunStats()
    bl.compute(lazy, client=dask_client, work_dir=str(tmp_path / "w"), cache_bytes="auto",
               stats=auto)
    assert auto.cache_bytes == limit // 4
