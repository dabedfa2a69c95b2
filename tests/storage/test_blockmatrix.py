from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import blocklin as bl
from blocklin.errors import (
    CorruptChunkError,
    IncompleteArrayError,
    InputDtypeError,
    InputValueError,
)
from blocklin.storage import ChunkCodec, read_meta, store_for


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.uint8])
@pytest.mark.parametrize("chunks", [(7, None), (64, None), (7, 3), (1000, None)])
def test_roundtrip_numpy(tmp_path: Path, dtype: type, chunks: tuple[int, int | None]) -> None:
    x = (np.random.default_rng(1).standard_normal((50, 11)) * 10).astype(dtype)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=chunks)
    assert A.shape == (50, 11)
    assert A.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(A.to_numpy(), x)
    np.testing.assert_array_equal(bl.open(tmp_path / "A.zarr").to_numpy(), x)
    # Byte-compatible with zarr v3: zarr reads what blocklin wrote.
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "A.zarr"), mode="r")[:], x)
    rows = chunks[0]
    assert A.nblocks[0] == -(-50 // rows) if rows < 50 else A.nblocks[0] == 1
    i, j = A.nblocks[0] - 1, A.nblocks[1] - 1
    np.testing.assert_array_equal(A.block(i, j), x[A.meta.block_slices((i, j))])


def test_dask_array_written_block_by_block(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((1003, 9))
    dx = da.from_array(x, chunks=(101, 4))
    A = bl.from_array(dx, tmp_path / "A.zarr", chunks=(250, None))
    np.testing.assert_array_equal(A.to_numpy(), x)
    B = bl.from_array(x, tmp_path / "B.zarr", chunks=(250, None))
    assert A.fingerprint == B.fingerprint  # content, not the way it was written
    np.testing.assert_array_equal(A.to_dask().compute(), x)


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_codecs_roundtrip(tmp_path: Path, codec: str) -> None:
    x = np.round(np.random.default_rng(3).standard_normal((300, 20)), 2)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(64, None), codec=codec)
    assert A.meta.codec == ChunkCodec(codec)  # type: ignore[arg-type]
    np.testing.assert_array_equal(bl.open(tmp_path / "A.zarr").to_numpy(), x)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "A.zarr"), mode="r")[:], x)


def test_auto_codec_compresses_only_when_it_pays(tmp_path: Path) -> None:
    noise = np.random.default_rng(4).standard_normal((2000, 50))
    assert bl.from_array(noise, tmp_path / "n.zarr").meta.codec == ChunkCodec("none")
    ints = np.random.default_rng(4).integers(0, 3, (2000, 50)).astype(np.float64)
    assert bl.from_array(ints, tmp_path / "i.zarr").meta.codec == ChunkCodec("lz4")


def test_memory_url(tmp_path: Path) -> None:
    x = np.arange(60, dtype=np.float64).reshape(12, 5)
    A = bl.from_array(x, "memory://blocklin-test/A.zarr", chunks=(5, None), overwrite=True)
    np.testing.assert_array_equal(bl.open("memory://blocklin-test/A.zarr").to_numpy(), x)
    g = bl.ops.gram(A).compute(work_dir="memory://blocklin-test/work")
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-14)


def test_provenance_recorded(tmp_path: Path) -> None:
    A = bl.from_array(np.ones((10, 2)), tmp_path / "A.zarr")
    prov = A.provenance
    assert prov["operator"] == "from_array"
    assert prov["version"] == bl.__version__
    assert prov["complete"] is True
    assert len(prov["fingerprint"]) == 32
    g = bl.ops.matmul(A, np.ones((2, 1))).compute(work_dir=str(tmp_path / "w"))
    assert g.provenance["operator"] == "matmul"
    assert g.provenance["inputs"] == [A.fingerprint]


def _corrupt(path: Path, key: str = "c/1/0") -> None:
    chunk = path / key
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    chunk.write_bytes(bytes(raw))


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_corrupt_chunk_raises_naming_array_and_chunk(tmp_path: Path, codec: str) -> None:
    x = np.random.default_rng(5).standard_normal((100, 4))
    bl.from_array(x, tmp_path / "A.zarr", chunks=(30, None), codec=codec)
    _corrupt(tmp_path / "A.zarr")
    A = bl.open(tmp_path / "A.zarr")
    np.testing.assert_array_equal(A.block(0), x[:30])  # other chunks stay readable
    with pytest.raises(CorruptChunkError, match=r"chunk 1\.0 of array .*A\.zarr.*crc32c"):
        A.block(1)
    with pytest.raises(CorruptChunkError):
        bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))


def test_truncated_chunk_is_corrupt(tmp_path: Path) -> None:
    bl.from_array(np.ones((100, 4)), tmp_path / "A.zarr", chunks=(30, None))
    chunk = tmp_path / "A.zarr" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(CorruptChunkError, match=r"chunk 2\.0"):
        bl.open(tmp_path / "A.zarr").block(2)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.ones(5), InputValueError, "2-D"),
        (np.ones((0, 3)), InputValueError, "empty"),
        (np.array([["a", "b"]]), InputDtypeError, "real numbers"),
        (np.ones((2, 2), dtype=complex), InputDtypeError, "real numbers"),
        (np.ones((2, 2), dtype=object), InputDtypeError, "real numbers"),
    ],
)
def test_bad_input_refused_and_nothing_written(tmp_path: Path, value: np.ndarray,
                                               error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        bl.from_array(value, tmp_path / "A.zarr")
    assert not (tmp_path / "A.zarr").exists()


def test_bad_chunks_and_existing_path(tmp_path: Path) -> None:
    with pytest.raises(InputValueError, match="chunks"):
        bl.from_array(np.ones((4, 4)), tmp_path / "A.zarr", chunks=(0, None))
    with pytest.raises(InputValueError, match="chunks"):
        bl.from_array(np.ones((4, 4)), tmp_path / "A.zarr", chunks=(2, 2, 2))
    bl.from_array(np.ones((4, 4)), tmp_path / "A.zarr")
    with pytest.raises(InputValueError, match="already exists"):
        bl.from_array(np.zeros((4, 4)), tmp_path / "A.zarr")
    bl.from_array(np.zeros((4, 4)), tmp_path / "A.zarr", overwrite=True)
    assert bl.open(tmp_path / "A.zarr").to_numpy().sum() == 0
    with pytest.raises(InputValueError, match="codec"):
        bl.from_array(np.ones((4, 4)), tmp_path / "B.zarr", codec="gzip")


def test_check_finite(tmp_path: Path) -> None:
    x = np.ones((100, 3))
    x[77, 1] = np.nan
    with pytest.raises(InputValueError, match="NaN"):
        bl.from_array(x, tmp_path / "A.zarr", check_finite=True)
    assert not (tmp_path / "A.zarr").exists()
    with pytest.raises(InputValueError, match="NaN"):
        bl.from_array(da.from_array(x, chunks=(10, 3)), tmp_path / "B.zarr", chunks=(10, None),
                      check_finite=True)
    assert not (tmp_path / "B.zarr").exists() or not any((tmp_path / "B.zarr").iterdir())


def test_open_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no zarr array"):
        bl.open(tmp_path / "nothing.zarr")
    bl.from_array(np.ones((4, 4)), tmp_path / "A.zarr")
    meta_path = tmp_path / "A.zarr" / "zarr.json"
    doc = json.loads(meta_path.read_text())
    doc["attributes"]["blocklin"]["complete"] = False
    meta_path.write_text(json.dumps(doc))
    with pytest.raises(IncompleteArrayError, match="incomplete"):
        bl.open(tmp_path / "A.zarr")
    assert bl.open(tmp_path / "A.zarr", allow_incomplete=True).shape == (4, 4)


def test_foreign_zarr_array_read_through_zarr(tmp_path: Path) -> None:
    x = np.random.default_rng(6).standard_normal((40, 6))
    z = zarr.create_array(str(tmp_path / "F.zarr"), shape=x.shape, chunks=(16, 6), dtype="f8")
    z[:] = x
    A = bl.open(tmp_path / "F.zarr")
    assert A.meta.codec is None
    np.testing.assert_array_equal(A.to_numpy(), x)
    np.testing.assert_allclose(bl.ops.gram(A).compute(work_dir=str(tmp_path / "w")), x.T @ x,
                               rtol=1e-13)


def test_metadata_written_last(tmp_path: Path) -> None:
    A = bl.from_array(np.ones((10, 2)), tmp_path / "A.zarr", chunks=(5, None))
    meta = read_meta(store_for(A.url))
    assert meta is not None and meta.shape == (10, 2)


def test_work_dir_is_a_zarr_group_of_intermediates(tmp_path: Path) -> None:
    x = np.random.default_rng(7).standard_normal((300, 5))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"), keep_intermediates=True)
    group = zarr.open_group(str(tmp_path / "w"), mode="r")
    arrays = dict(group.arrays())
    assert arrays
    partials = [a for a in arrays.values() if a.shape == (3, 5, 5)]
    assert len(partials) == 1
    np.testing.assert_allclose(partials[0][:].sum(axis=0), x.T @ x, rtol=1e-13, atol=1e-12)
