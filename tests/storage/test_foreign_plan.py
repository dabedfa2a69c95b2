"""Foreign arrays in plans: coalesced blocks, the block cache and resume identity."""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.codecs as zc

import blocklin as bl
import blocklin.config
from blocklin.executors import RunStats
from blocklin.storage.blockcache import process_cache

ROWS, COLS = 1200, 6


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 4 stored chunks (100 rows x 6 columns of float64 = 4800 bytes each)
    # instead of 64 MiB, so a small array has several blocks of several chunks.
    monkeypatch.setattr(blocklin.config, "DEFAULT_BLOCK_BYTES", 4 * 100 * COLS * 8)


def _foreign(tmp_path: Path, fmt: int, x: np.ndarray) -> Path:
    path = tmp_path / f"F{fmt}.zarr"
    if fmt == 2:
        z = zarr.create_array(path, shape=x.shape, chunks=(100, 3), dtype="f8", zarr_format=2,
                              compressors=numcodecs.Blosc(cname="lz4"), order="F")
    else:
        z = zarr.create_array(path, shape=x.shape, chunks=(100, COLS), shards=(200, COLS),
                              dtype="f8", compressors=zc.ZstdCodec(level=1), zarr_format=3)
    z[...] = x
    return path


@pytest.mark.parametrize("fmt", [2, 3])
def test_blocks_join_stored_chunks(tmp_path: Path, small_blocks: None, fmt: int) -> None:
    x = np.random.default_rng(0).standard_normal((ROWS, COLS))
    A = bl.open(_foreign(tmp_path, fmt, x))
    # v2: 100 x 3 tiles join into full-width panels of 4 chunk rows; v3: 4 inner chunks.
    assert A.chunks == (400, COLS) and A.nblocks == (3, 1)
    np.testing.assert_array_equal(A.block(1), x[400:800])
    g = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("fmt", [2, 3])
def test_sketch_on_foreign_equals_blocklin_array(tmp_path: Path, small_blocks: None,
                                                 fmt: int) -> None:
    x = np.random.default_rng(1).standard_normal((ROWS, COLS))
    A = bl.open(_foreign(tmp_path, fmt, x))
    own = bl.from_array(x, tmp_path / "own.zarr", chunks=(250, None))
    s_foreign = bl.ops.sketch(A, 5, seed=3).compute(work_dir=str(tmp_path / "w"))
    s_own = bl.ops.sketch(own, 5, seed=3).compute(work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(s_foreign, s_own, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", [2, 3])
def test_cache_serves_foreign_blocks_until_a_chunk_is_rewritten(
        tmp_path: Path, small_blocks: None, fmt: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((ROWS, COLS))
    path = _foreign(tmp_path, fmt, x)
    process_cache().clear()
    first = RunStats()
    g = bl.compute(bl.ops.gram(bl.open(path)), work_dir=str(tmp_path / "w1"),
                   cache_bytes="64MiB", stats=first)[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-9)
    assert first.cache_misses == 3
    # zarr-python rewrites rows 500..600: the third stored chunk of block 1, not its
    # first one, with the metadata untouched.
    z = zarr.open_array(path, mode="r+")
    z[500:600] = rng.standard_normal((100, COLS))
    new = z[...]
    second = RunStats()
    g2 = bl.compute(bl.ops.gram(bl.open(path)), work_dir=str(tmp_path / "w2"),
                    cache_bytes="64MiB", stats=second)[0]
    np.testing.assert_allclose(g2, new.T @ new, rtol=1e-12, atol=1e-9)
    assert second.cache_hits == 2 and second.cache_misses == 1
    process_cache().clear()


@pytest.mark.parametrize("fmt", [2, 3])
def test_resume_recomputes_blocks_of_a_rewritten_foreign_chunk(
        tmp_path: Path, small_blocks: None, fmt: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((ROWS, COLS))
    path = _foreign(tmp_path, fmt, x)
    work = str(tmp_path / "w")
    g = bl.ops.gram(bl.open(path)).compute(work_dir=work, keep_intermediates=True)
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-9)
    z = zarr.open_array(path, mode="r+")
    z[700:800] = rng.standard_normal((100, COLS))  # the last chunk of block 1
    new = z[...]
    stats = RunStats()
    g2 = bl.compute(bl.ops.gram(bl.open(path)), work_dir=work, resume=True, stats=stats,
                    keep_intermediates=True)[0]
    np.testing.assert_allclose(g2, new.T @ new, rtol=1e-12, atol=1e-9)
    assert stats.tasks_skipped >= 2  # blocks 0 and 2 were trusted, block 1 recomputed
    stats3 = RunStats()
    bl.compute(bl.ops.gram(bl.open(path)), work_dir=work, resume=True, stats=stats3)
    assert stats3.tasks_run == 0


def test_missing_chunk_written_later_is_a_new_identity(tmp_path: Path, small_blocks: None) -> None:
    x = np.random.default_rng(4).standard_normal((ROWS, COLS))
    path = tmp_path / "F.zarr"
    z = zarr.create_array(path, shape=x.shape, chunks=(100, COLS), dtype="f8", fill_value=0.0,
                          compressors=zc.GzipCodec(level=1), zarr_format=3)
    z[:500] = x[:500]
    z[600:] = x[600:]  # rows 500..600 (in block 1) read as 0
    work = str(tmp_path / "w")
    ref = z[...]
    g = bl.ops.gram(bl.open(path)).compute(work_dir=work)
    np.testing.assert_allclose(g, ref.T @ ref, rtol=1e-12, atol=1e-9)
    z[500:600] = x[500:600]
    g2 = bl.compute(bl.ops.gram(bl.open(path)), work_dir=work, resume=True)[0]
    np.testing.assert_allclose(g2, x.T @ x, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("order", ["C", "F"])
def test_memory_projection_counts_one_chunks_buffers(tmp_path: Path, small_blocks: None,
                                                    order: str) -> None:
    from blocklin.plan.graph import ArrayNode
    from blocklin.plan.memory import input_block_bytes

    x = np.random.default_rng(5).standard_normal((ROWS, COLS))
    z = zarr.create_array(tmp_path / "A.zarr", shape=x.shape, chunks=(100, COLS), dtype="f8",
                          compressors=numcodecs.Zstd(level=1), zarr_format=2, order=order)
    z[...] = x
    A = bl.open(tmp_path / "A.zarr")
    node = ArrayNode.from_meta(A.meta, A.fingerprint)
    block, chunk = 400 * COLS * 8, 100 * COLS * 8
    encoded = chunk + chunk // 64 + 4096
    # C order: chunks decode in place into the block; F order through one scratch chunk.
    assert input_block_bytes(node) == block + encoded + (chunk if order == "F" else 0)
    np.testing.assert_allclose(bl.ops.gram(A).compute(work_dir=str(tmp_path / "w")),
                               x.T @ x, rtol=1e-12, atol=1e-9)


def test_two_foreign_arrays_of_one_layout_are_different_sources(tmp_path: Path) -> None:
    # Same shape, chunks and chunk keys, different numbers: one plan must not take
    # them for one source (it did: both were named from layout and listing alone).
    x = np.random.default_rng(6).standard_normal((100, 3))
    for name, v in (("A", x), ("B", 2 * x)):
        z = zarr.create_array(tmp_path / f"{name}.zarr", shape=v.shape, chunks=(50, 3),
                              dtype="f8", compressors=zc.ZstdCodec(level=1))
        z[...] = v
    A, B = bl.open(tmp_path / "A.zarr"), bl.open(tmp_path / "B.zarr")
    assert A.fingerprint != B.fingerprint
    ga, gb = bl.compute(bl.ops.gram(A), bl.ops.gram(B), work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(ga, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(gb, 4 * x.T @ x, rtol=1e-12)
