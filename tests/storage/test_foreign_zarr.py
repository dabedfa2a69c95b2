"""Arrays zarr-python wrote, read by blocklin's fast decoder bit for bit as zarr reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.codecs as zc

import blocklin as bl
from blocklin.errors import CorruptChunkError
from blocklin.pipelines.inspect import inspect_array
from blocklin.storage.chunkio import BufferPool, read_block_ident

SHAPE = (45, 7)  # edge chunks along both axes for every chunk shape below


def _data(dtype: str = "f8", seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(SHAPE) * 100
    return x.astype(dtype)


def _check(path: Path, *, fast: bool = True) -> bl.BlockMatrix:
    """blocklin reads ``path`` exactly as zarr-python does: whole, by block (pooled and
    not) and by region; the fast decoder is used (or not) as expected."""
    ref = zarr.open_array(path, mode="r")[...]
    A = bl.open(path)
    assert (A.meta.foreign is not None and A.meta.foreign.pipeline is not None) == fast, \
        A.meta.read_path
    got = A.to_numpy()
    assert got.dtype == ref.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, ref, strict=False)
    assert got.tobytes() == ref.astype(got.dtype).tobytes()  # bit-exact, NaN payloads too
    pool = BufferPool()
    for index, block in A.blocks():
        sl = A.meta.block_slices(index)
        np.testing.assert_array_equal(block, ref[sl])
        pooled, _ = read_block_ident(A.store, A.meta, index, pool)
        np.testing.assert_array_equal(pooled, ref[sl])
        pool.release()
    from blocklin.storage.chunkio import read_region

    region = (slice(3, 41), slice(1, 6))
    np.testing.assert_array_equal(read_region(A.store, A.meta, region), ref[region])
    return A


V3_COMPRESSORS: dict[str, Any] = {
    "none": None,
    "zstd": zc.ZstdCodec(level=3),
    "zstd-checksum": zc.ZstdCodec(level=1, checksum=True),
    "gzip": zc.GzipCodec(level=5),
    **{f"blosc-{cname}-{shuffle}": zc.BloscCodec(cname=cname, clevel=5, shuffle=shuffle)
       for cname in ("lz4", "lz4hc", "zstd", "zlib", "blosclz")
       for shuffle in ("noshuffle", "shuffle", "bitshuffle")},
}


@pytest.mark.parametrize("name", list(V3_COMPRESSORS))
def test_v3_compressors(tmp_path: Path, name: str) -> None:
    comp = V3_COMPRESSORS[name]
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 7), dtype="f8",
                          compressors=comp, zarr_format=3)
    z[...] = _data()
    _check(tmp_path / "A.zarr")


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
@pytest.mark.parametrize("comp", [numcodecs.LZ4(), numcodecs.Zlib(level=3)],
                         ids=["lz4", "zlib"])
def test_v3_numcodecs_compressors(tmp_path: Path, comp: Any) -> None:
    import zarr.codecs.numcodecs as nz3

    codec = {"lz4": nz3.LZ4, "zlib": nz3.Zlib}[comp.codec_id](**comp.get_config())
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 7), dtype="f8",
                          compressors=codec, zarr_format=3)
    z[...] = _data()
    A = _check(tmp_path / "A.zarr")
    assert comp.codec_id in A.meta.read_path


@pytest.mark.parametrize("dtype", ["f4", "i2", "u1", "i8", "bool"])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_v3_bytes_either_endianness(tmp_path: Path, dtype: str, endian: str) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(8, 3), dtype=dtype,
                          serializer=zc.BytesCodec(endian=endian if dtype not in ("u1", "bool")
                                                   else None),
                          compressors=zc.ZstdCodec(level=1), zarr_format=3)
    z[...] = _data(dtype) if dtype != "bool" else _data() > 0
    _check(tmp_path / "A.zarr")


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_v3_transpose(tmp_path: Path, order: tuple[int, int]) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 4), dtype="f8",
                          filters=[zc.TransposeCodec(order=order)],
                          compressors=zc.BloscCodec(cname="lz4"), zarr_format=3)
    z[...] = _data()
    _check(tmp_path / "A.zarr")


def test_v3_crc32c_verified(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 7), dtype="f8",
                          compressors=[zc.GzipCodec(level=1), zc.Crc32cCodec()], zarr_format=3)
    z[...] = _data()
    A = _check(tmp_path / "A.zarr")  # (bytes, zstd|lz4, crc32c is blocklin's own codec)
    assert "gzip -> crc32c" in A.meta.read_path
    chunk = tmp_path / "A.zarr" / "c" / "2" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match=r"chunk 2\.0 of array .*A\.zarr.*crc32c"):
        bl.open(tmp_path / "A.zarr").to_numpy()


@pytest.mark.parametrize("fill", [0.0, -3.5, np.nan])
@pytest.mark.parametrize("fmt", [2, 3])
def test_missing_chunks_read_as_fill_value(tmp_path: Path, fill: float, fmt: int) -> None:
    comp = numcodecs.Zstd(level=1) if fmt == 2 else zc.ZstdCodec(level=1)
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 4), dtype="f8",
                          fill_value=fill, compressors=comp, zarr_format=fmt)
    z[:10] = 1.0
    z[30:, 4:] = 2.0  # chunks (1..2, *) and (3..4, 0) never written
    A = _check(tmp_path / "A.zarr")
    assert "fill value" in A.meta.missing_chunks


def test_v2_fill_value_null(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 7), dtype="i4",
                          fill_value=None, compressors=numcodecs.Blosc(), zarr_format=2)
    z[:10] = 7
    _check(tmp_path / "A.zarr")


V2_COMPRESSORS: dict[str, Any] = {
    "none": None,
    "zstd": numcodecs.Zstd(level=2),
    "lz4": numcodecs.LZ4(),
    "zlib": numcodecs.Zlib(level=4),
    "gzip": numcodecs.GZip(level=4),
    **{f"blosc-{cname}-{shuffle}": numcodecs.Blosc(cname=cname, shuffle=shuffle)
       for cname in ("lz4", "lz4hc", "zstd", "zlib", "blosclz")
       for shuffle in (numcodecs.Blosc.NOSHUFFLE, numcodecs.Blosc.SHUFFLE,
                       numcodecs.Blosc.BITSHUFFLE)},
}


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("name", list(V2_COMPRESSORS))
def test_v2_compressors_and_orders(tmp_path: Path, name: str, order: str) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 3), dtype="f8",
                          compressors=V2_COMPRESSORS[name], zarr_format=2, order=order)
    z[...] = _data()
    _check(tmp_path / "A.zarr")


@pytest.mark.parametrize("dtype", [">f8", ">i4", "<u2"])
def test_v2_byte_orders_and_nested_keys(tmp_path: Path, dtype: str) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 7), dtype=dtype,
                          compressors=numcodecs.Blosc(cname="lz4"), zarr_format=2,
                          chunk_key_encoding={"name": "v2", "separator": "/"})
    z[...] = _data(dtype)
    assert (tmp_path / "A.zarr" / "0" / "0").is_file()
    _check(tmp_path / "A.zarr")


def test_v2_filters_fall_back_to_zarr(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(10, 7), dtype="f8",
                          filters=[numcodecs.Delta(dtype="f8")], compressors=numcodecs.Zstd(),
                          zarr_format=2)
    z[...] = _data()
    A = _check(tmp_path / "A.zarr", fast=False)
    assert A.meta.read_path == "zarr-python (fallback: v2 filters ['delta'])"
    info = inspect_array(str(tmp_path / "A.zarr"))
    assert info["read_path"] == A.meta.read_path


@pytest.mark.parametrize("location", ["end", "start"])
@pytest.mark.parametrize("comp", ["zstd", "none"])
def test_sharded_read_by_inner_chunk(tmp_path: Path, location: str, comp: str) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(5, 7), shards=(20, 7),
                          dtype="f8", fill_value=-1.0,
                          compressors=zc.ZstdCodec(level=1) if comp == "zstd" else None,
                          zarr_format=3)
    if location == "start":  # zarr-python's create_array writes the index at the end
        doc = json.loads((tmp_path / "A.zarr" / "zarr.json").read_text())
        doc["codecs"][0]["configuration"]["index_location"] = "start"
        (tmp_path / "A.zarr" / "zarr.json").write_text(json.dumps(doc))
        z = zarr.open_array(tmp_path / "A.zarr", mode="r+")
    x = _data()
    z[:25] = x[:25]
    z[40:] = x[40:]  # shard 1 holds inner chunks 4 only (5..7 empty); shard 2 is partial
    A = _check(tmp_path / "A.zarr")
    assert "sharding_indexed" in A.meta.read_path and f"index at {location}" in A.meta.read_path


def test_sharded_corrupt_index_and_inner_chunk(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=SHAPE, chunks=(5, 7), shards=(20, 7),
                          dtype="f8", compressors=[zc.ZstdCodec(level=1), zc.Crc32cCodec()],
                          zarr_format=3)
    z[...] = _data()
    shard = tmp_path / "A.zarr" / "c" / "1" / "0"
    good = shard.read_bytes()
    bad = bytearray(good)
    bad[-10] ^= 0x01  # inside the index
    shard.write_bytes(bytes(bad))
    with pytest.raises(CorruptChunkError, match="shard index crc32c"):
        bl.open(tmp_path / "A.zarr").to_numpy()
    bad = bytearray(good)
    bad[3] ^= 0x01  # inside the first inner chunk (covered by its crc32c)
    shard.write_bytes(bytes(bad))
    with pytest.raises(CorruptChunkError, match=r"chunk 4\.0 .*crc32c"):
        bl.open(tmp_path / "A.zarr").to_numpy()


def test_small_chunks_and_tiles_coalesce_into_row_panels(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((1000, 30))
    z = zarr.create_array(tmp_path / "A.zarr", shape=x.shape, chunks=(7, 4), dtype="f8",
                          compressors=zc.BloscCodec(cname="lz4"), zarr_format=3)
    z[...] = x
    A = _check(tmp_path / "A.zarr")
    assert A.chunks == (1000, 30) and A.nblocks == (1, 1)


def test_ops_on_foreign_arrays_equal_numpy(tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((300, 6))
    z = zarr.create_array(tmp_path / "A.zarr", shape=x.shape, chunks=(40, 6), shards=(80, 6),
                          dtype="f8", compressors=zc.ZstdCodec(level=1), zarr_format=3)
    z[...] = x
    A = bl.open(tmp_path / "A.zarr")
    g = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    v2 = zarr.create_array(tmp_path / "B.zarr", shape=x.shape, chunks=(50, 4), dtype="f8",
                           compressors=numcodecs.Blosc(cname="lz4"), zarr_format=2, order="F")
    v2[...] = x
    B = bl.open(tmp_path / "B.zarr")
    s = bl.ops.column_stats(B).compute(work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(s["mean"] if isinstance(s, dict) else s.mean, x.mean(0),
                               rtol=1e-12)


def test_cli_inspect_names_the_read_path(tmp_path: Path) -> None:
    from tests.pipelines.conftest import run_cli

    fast = zarr.create_array(tmp_path / "F.zarr", shape=SHAPE, chunks=(10, 7), dtype="f8",
                             compressors=numcodecs.Blosc(cname="lz4"), zarr_format=2)
    slow = zarr.create_array(tmp_path / "S.zarr", shape=SHAPE, chunks=(10, 7), dtype="f8",
                             filters=[numcodecs.Delta(dtype="f8")], zarr_format=2)
    fast[...] = slow[...] = _data()
    res = run_cli("inspect", str(tmp_path / "F.zarr"))
    assert res.returncode == 0, res.stderr
    assert "read by    fast decode (zarr v2: bytes(little-endian) -> blosc)" in res.stdout
    res = run_cli("inspect", str(tmp_path / "S.zarr"))
    assert "read by    zarr-python (fallback: v2 filters ['delta'])" in res.stdout


def test_sharded_over_fsspec_byte_ranges() -> None:
    import uuid

    import fsspec

    url = f"memory://foreign-{uuid.uuid4().hex}/A.zarr"
    store = zarr.storage.FsspecStore.from_url(url)
    z = zarr.create_array(store, shape=SHAPE, chunks=(5, 7), shards=(20, 7), dtype="f8",
                          compressors=zc.ZstdCodec(level=1), zarr_format=3)
    x = _data()
    z[:30] = x[:30]
    try:
        A = bl.open(url)
        assert "sharding_indexed" in A.meta.read_path
        ref = z[...]
        np.testing.assert_array_equal(A.to_numpy(), ref)
        for index, block in A.blocks():
            np.testing.assert_array_equal(block, ref[A.meta.block_slices(index)])
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://").split("/")[0],
                                       recursive=True)


class _CountingPool(BufferPool):
    """A real buffer pool that records the size of every buffer a read asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def acquire(self, nbytes: int) -> memoryview:
        self.asked.append(nbytes)
        return super().acquire(nbytes)


@pytest.mark.parametrize("shards", [None, (30, 7)], ids=["chunks", "sharded"])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_raw_chunks_are_read_straight_into_the_block(tmp_path: Path, shards: Any,
                                                     endian: str) -> None:
    # Raw chunks are the block's bytes: no chunk-sized read buffer, no copy (a
    # 200,000 x 500 block read of zarr-python's uncompressed copy held two 200 MB
    # buffers per thread and copied one into the other).
    x = _data()
    z = zarr.create_array(tmp_path / "A.zarr", shape=x.shape, chunks=(15, 7), shards=shards,
                          dtype="f8", serializer=zc.BytesCodec(endian=endian),
                          compressors=None, zarr_format=3)
    z[...] = x
    A = _check(tmp_path / "A.zarr")
    assert A.nblocks == (1, 1)
    pool = _CountingPool()
    block, _ = read_block_ident(A.store, A.meta, (0, 0), pool)
    assert block.tobytes() == x.tobytes()
    assert pool.asked == [x.nbytes]  # the block itself, nothing beside it


@pytest.mark.parametrize("change", [-8, 8], ids=["truncated", "extended"])
def test_raw_chunk_of_the_wrong_length_is_corrupt(tmp_path: Path, change: int) -> None:
    z = zarr.create_array(tmp_path / "A.zarr", shape=(40, 7), chunks=(10, 7), dtype="f8",
                          compressors=None, zarr_format=3)
    z[...] = _data()[:40]
    chunk = tmp_path / "A.zarr" / "c" / "2" / "0"
    raw = chunk.read_bytes()
    chunk.write_bytes(raw[:change] if change < 0 else raw + bytes(change))
    for pool in (BufferPool(), None):
        with pytest.raises(CorruptChunkError,
                           match=rf"chunk 2\.0 .*holds {len(raw) + change} bytes, "
                                 rf"expected {len(raw)}"):
            read_block_ident(bl.open(tmp_path / "A.zarr").store,
                             bl.open(tmp_path / "A.zarr").meta, (0, 0), pool)
