"""A cached block is never served after its chunk was rewritten in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

import blocklin as bl
from blocklin.executors import RunStats
from blocklin.storage.blockcache import process_cache


def test_in_place_rewrite_between_cached_computes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    process_cache().clear()
    first = RunStats()
    g = bl.compute(bl.ops.gram(A), work_dir=str(tmp_path / "w1"), cache_bytes="64MiB",
                   stats=first)[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    assert first.cache_misses == 6
    # zarr-python rewrites two row blocks and leaves zarr.json (and the cache token) as is.
    z = zarr.open_array(tmp_path / "A.zarr", mode="r+")
    z[200:400] = rng.normal(size=(200, 5))
    new = z[:]
    second = RunStats()
    g2 = bl.compute(bl.ops.gram(bl.open(A.url)), work_dir=str(tmp_path / "w2"),
                    cache_bytes="64MiB", stats=second)[0]
    np.testing.assert_allclose(g2, new.T @ new, rtol=1e-12)
    assert second.cache_hits == 4 and second.cache_misses == 2
    process_cache().clear()
