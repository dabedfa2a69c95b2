"""Reading and writing single chunks, verified by their crc32c checksums.

Reads go into per-thread reusable buffers when the caller holds a :class:`BufferPool`
(block tasks do); the arrays they return are views that stay valid until the pool
is released.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from blocklin.errors import CorruptChunkError, IncompleteArrayError, MissingChunkError
from blocklin.storage.foreign import objects_ident, read_region_into
from blocklin.storage.meta import ArrayMeta
from blocklin.storage.stores import Store
from blocklin.types import BlockIndex

__all__ = ["FILL_IDENT", "BufferPool", "block_ident", "crc_ident", "read_block", "read_block_ident",
           "read_region", "write_block"]


class BufferPool:
    """Reusable byte buffers of one thread; ``release()`` makes them available again.

    Buffers are numpy byte arrays rather than ``bytearray``: numpy asks the kernel for
    transparent huge pages on large allocations, so a fresh 64 MiB buffer costs a
    fifth of the page faults' time (8-23 ms against 52-58 ms to allocate and fill one
    here), which is most of a fresh process's first pass.
    """

    _local = threading.local()

    def __init__(self) -> None:
        self._free: list[memoryview] = []
        self._used: list[memoryview] = []

    @classmethod
    def for_thread(cls) -> BufferPool:
        pool = getattr(cls._local, "pool", None)
        if pool is None:
            pool = cls._local.pool = cls()
        return pool

    def acquire(self, nbytes: int) -> memoryview:
        # Best fit among free buffers. Buffers are never resized: a numpy view of a
        # buffer may outlive its task.
        best = -1
        for k, b in enumerate(self._free):
            if len(b) >= nbytes and (best < 0 or len(b) < len(self._free[best])):
                best = k
        if best >= 0:
            buf = self._free.pop(best)
        else:
            if len(self._free) >= 8:
                self._free.pop(min(range(len(self._free)), key=lambda k: len(self._free[k])))
            buf = np.zeros(nbytes, dtype=np.uint8).data  # the view keeps the array alive
        self._used.append(buf)
        return buf

    def release(self) -> None:
        self._free.extend(self._used)
        self._used.clear()

    def clear(self) -> None:
        self._free.clear()
        self._used.clear()


def read_block(store: Store, meta: ArrayMeta, index: BlockIndex,
               pool: BufferPool | None = None) -> np.ndarray:
    """Read block ``index`` of an array, checking its checksum.

    With a ``pool`` the result may be a view into a pooled buffer (valid until
    ``pool.release()``); without one it is an array the caller owns.

    Raises
    ------
    CorruptChunkError
        If the chunk's checksum does not match or it cannot be decoded.
    MissingChunkError
        If the chunk is absent from an array blocklin wrote (arrays written by other
        tools read an absent chunk as their fill value, as zarr does).
    """
    return read_block_ident(store, meta, index, pool)[0]


def read_block_ident(store: Store, meta: ArrayMeta, index: BlockIndex,
                     pool: BufferPool | None = None) -> tuple[np.ndarray, str]:
    """:func:`read_block`, and the identity of the stored chunk it decoded.

    The identity is what a completion record binds a result to (see
    :func:`block_ident`); for blocklin's codecs it is the chunk's checksum trailer,
    verified by the decode itself, so it costs nothing more than the read.
    """
    if meta.format != "dense":
        # Sparse arrays: a scipy.sparse CSR row block (storage/sparse.py).
        from blocklin.storage.sparse import read_csr_block, sparse_block_ident

        csr: Any = read_csr_block(store, meta, index)
        return csr, sparse_block_ident(store, index) or FILL_IDENT
    meta.check_index(index)
    if meta.codec is None:
        # Identity first: a chunk rewritten between this stat and the read then reads
        # as changed on the next check, never the other way round.
        ident = block_ident(store, meta, index)
        if ident is None:
            raise MissingChunkError(meta.url, index)
        region = meta.block_slices(index)
        if meta.foreign is not None and meta.foreign.pipeline is not None:
            return _read_foreign(store, meta, region, pool), ident
        return _read_generic(store, meta, region, index), ident
    key = meta.chunk_key(index)
    dtype = meta.np_dtype
    if pool is None:
        data = store.get(key)
        if data is None:
            return _fill(meta, index), FILL_IDENT
        raw = memoryview(data)
        scratch = None
    else:
        buf = pool.acquire(meta.chunk_nbytes + 4096)
        got = store.read_into(key, buf)
        if got is None:
            return _fill(meta, index), FILL_IDENT
        raw = got
        scratch = pool.acquire(meta.chunk_nbytes)
    full = meta.codec.decode_view(raw, dtype, meta.chunks, scratch)
    if isinstance(full, str):
        raise CorruptChunkError(meta.url, index, full)
    shape = meta.block_shape(index)
    block = full[tuple(slice(0, s) for s in shape)]
    if pool is None and not block.flags.owndata and block.base is not None:
        # Without a pool the caller owns the result; an uncompressed chunk is a view of
        # immutable bytes, so copy it into a writable array.
        block = np.array(block)
    return block, crc_ident(int.from_bytes(raw[-4:], "little"))


#: The identity of a chunk absent from a foreign array (read as its fill value).
FILL_IDENT = "fill"


def crc_ident(crc: int) -> str:
    """The identity of a chunk stored with checksum ``crc``."""
    return f"c{crc:08x}"


def block_ident(store: Store, meta: ArrayMeta, index: BlockIndex) -> str | None:
    """The identity of the stored chunk behind block ``index``, without decoding it.

    blocklin's codecs: the chunk's crc32c trailer (a 4-byte read). Sparse blocks: the
    three components' trailers. Arrays read through zarr (other codecs, v2, shards):
    the chunk object's size and modification time (or ETag), one ``stat``. A chunk
    absent from a foreign array is ``FILL_IDENT``; absent from an array blocklin
    wrote, None (it is lost, so nothing computed from it can be trusted).
    """
    if meta.format != "dense":
        from blocklin.storage.sparse import sparse_block_ident

        return sparse_block_ident(store, index)
    if meta.codec is None:
        if meta.foreign is None:
            keys = [_zarr_chunk_key(store, index)]
        else:
            meta.check_index(index)
            keys = [meta.foreign.object_key(o)
                    for o in meta.foreign.objects(meta.block_slices(index))]
        tokens = [store.stat(k) for k in keys]
        if meta.owned and None in tokens:
            return None
        return objects_ident(tokens)
    tail = store.get_tail(meta.chunk_key(index), 4)
    if tail is None or len(tail) != 4:
        return None if meta.owned else FILL_IDENT
    return crc_ident(int.from_bytes(tail, "little"))


def _zarr_chunk_key(store: Store, index: BlockIndex) -> str:
    import zarr

    arr = zarr.open_array(store.zarr_store(), mode="r")
    key: str = arr.metadata.encode_chunk_key(tuple(index))
    return key


def _read_foreign(store: Store, meta: ArrayMeta, region: tuple[slice, ...],
                  pool: BufferPool | None) -> np.ndarray:
    """A region of a foreign array through its fast decoder (``storage/foreign.py``)."""
    assert meta.foreign is not None
    shape = tuple(r.stop - r.start for r in region)
    dtype = meta.np_dtype
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if pool is None:
        out = np.empty(shape, dtype=dtype)
        local = BufferPool()  # scratch for this read only; the result is the caller's
        acquire = local.acquire
    else:
        out = np.frombuffer(pool.acquire(nbytes)[:nbytes], dtype=dtype).reshape(shape)
        acquire = pool.acquire

    def missing(unit: BlockIndex) -> None:
        if meta.owned:
            raise MissingChunkError(meta.url, unit)

    read_region_into(store, meta.foreign, region, out, meta.fill_value, meta.url, acquire,
                     missing)
    return out


def _fill(meta: ArrayMeta, index: BlockIndex) -> np.ndarray:
    if meta.owned:
        raise MissingChunkError(meta.url, index)
    return np.full(meta.block_shape(index), meta.fill_value, dtype=meta.np_dtype)


def _read_generic(store: Store, meta: ArrayMeta, region: tuple[slice, ...],
                  index: BlockIndex | None) -> np.ndarray:
    import zarr

    try:
        arr = zarr.open_array(store.zarr_store(), mode="r")
        return np.asarray(arr[region])
    except Exception as exc:
        if "checksum" in str(exc).lower() or "crc" in str(exc).lower():
            raise CorruptChunkError(meta.url, index or (), str(exc)) from exc
        raise


def read_region(store: Store, meta: ArrayMeta, region: tuple[slice, ...]) -> np.ndarray:
    """Read an arbitrary rectangular region (assembled from whole blocks)."""
    if meta.codec is None:
        if meta.foreign is not None and meta.foreign.pipeline is not None:
            full = tuple(slice(r.start or 0, s if r.stop is None else r.stop)
                         for r, s in zip(region, meta.shape, strict=True))
            return _read_foreign(store, meta, full, None)
        return _read_generic(store, meta, region, None)
    starts = [r.start or 0 for r in region]
    stops = [s if r.stop is None else r.stop for r, s in zip(region, meta.shape, strict=True)]
    out = np.empty([b - a for a, b in zip(starts, stops, strict=True)], dtype=meta.np_dtype)
    ranges = [range(a // c, -(-b // c)) for a, b, c in zip(starts, stops, meta.chunks, strict=True)]
    from itertools import product

    for index in product(*ranges):
        block: Any = read_block(store, meta, index)
        if meta.format != "dense":
            block = block.toarray()
        sl = meta.block_slices(index)
        src, dst = [], []
        for s, a, b in zip(sl, starts, stops, strict=True):
            lo, hi = max(s.start, a), min(s.stop, b)
            src.append(slice(lo - s.start, hi - s.start))
            dst.append(slice(lo - a, hi - a))
        out[tuple(dst)] = block[tuple(src)]
    return out


def write_block(store: Store, meta: ArrayMeta, index: BlockIndex, block: Any) -> int:
    """Encode and write block ``index``; return the crc32c of the stored chunk.

    Edge blocks are padded to the full chunk shape, as zarr stores them.
    """
    if meta.codec is None:
        raise IncompleteArrayError(f"array {meta.url} uses codecs blocklin does not write")
    arr = np.asarray(block, dtype=meta.np_dtype)
    expected = meta.block_shape(index)
    if arr.shape != expected:
        raise ValueError(f"block {index} of {meta.url} has shape {arr.shape}, expected {expected}")
    if expected != meta.chunks:
        padded = np.zeros(meta.chunks, dtype=meta.np_dtype)
        padded[tuple(slice(0, s) for s in expected)] = arr
        arr = padded
    parts, crc = meta.codec.encode(arr)
    store.put_parts(meta.chunk_key(index), parts)
    return crc
