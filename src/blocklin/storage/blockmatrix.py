"""BlockMatrix: a 2-D zarr v3 array and its block grid."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from blocklin.config import chunk_rows_for
from blocklin.errors import IncompleteArrayError, InputValueError
from blocklin.storage.chunkio import read_block, read_region, write_block
from blocklin.storage.codecs import choose_codec
from blocklin.storage.finite import all_finite, check_block
from blocklin.storage.meta import (
    ATTRS_NAMESPACE,
    ArrayMeta,
    check_numeric_dtype,
    read_meta,
    read_meta_v2,
    write_meta,
)
from blocklin.storage.records import compute_fingerprint, fingerprint_from_crcs
from blocklin.storage.stores import Store, register_storage_options, store_for
from blocklin.types import BlockIndex

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["BlockMatrix", "Transposed", "from_array", "open_matrix", "prepare_target",
           "provenance_attrs"]


def _version() -> str:
    from blocklin import __version__

    return __version__


def provenance_attrs(operator: str, params: dict[str, Any] | None = None,
                     inputs: list[str] | None = None, seed: int | None = None,
                     fingerprint: str | None = None, **extra: Any) -> dict[str, Any]:
    """The ``blocklin`` attribute block recorded on every array blocklin writes."""
    doc: dict[str, Any] = {
        "operator": operator,
        "params": params or {},
        "seed": seed,
        "inputs": inputs or [],
        "version": _version(),
        "complete": True,
    }
    if fingerprint is not None:
        doc["fingerprint"] = fingerprint
    doc.update(extra)
    return {ATTRS_NAMESPACE: doc}


class BlockMatrix:
    """A 2-D matrix stored as a zarr v3 array, read and written block by block.

    Obtain one with :func:`blocklin.from_array` or :func:`blocklin.open`.

    Attributes
    ----------
    shape, dtype : the matrix's shape and numpy dtype.
    chunks : tuple of int
        The block shape (zarr's chunk shape); edge blocks may be smaller.
    nblocks : tuple of int
        Number of blocks along rows and columns.
    """

    def __init__(self, store: Store, meta: ArrayMeta) -> None:
        if len(meta.shape) != 2:
            raise InputValueError(f"a BlockMatrix is 2-D; array {meta.url} has shape {meta.shape}")
        self.store = store
        self.meta = meta

    # -- description ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.meta.url

    @property
    def shape(self) -> tuple[int, int]:
        return (self.meta.shape[0], self.meta.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.meta.np_dtype

    @property
    def chunks(self) -> tuple[int, int]:
        return (self.meta.chunks[0], self.meta.chunks[1])

    @property
    def nblocks(self) -> tuple[int, int]:
        g = self.meta.grid
        return (g[0], g[1])

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.meta.attrs)

    @property
    def provenance(self) -> dict[str, Any]:
        """The ``blocklin`` attributes: operator, params, seed, inputs, version, fingerprint."""
        doc = self.meta.attrs.get(ATTRS_NAMESPACE, {})
        return dict(doc) if isinstance(doc, dict) else {}

    @property
    def fingerprint(self) -> str:
        """Content fingerprint (hash of layout and chunk checksums)."""
        fp = self.provenance.get("fingerprint")
        if isinstance(fp, str):
            return fp
        return compute_fingerprint(self.store, self.meta)

    @property
    def T(self) -> Transposed:
        """A lazy transpose, understood by :func:`blocklin.ops.matmul` (``A.T @ B``)."""
        return Transposed(self)

    def __repr__(self) -> str:
        return (f"BlockMatrix(url={self.url!r}, shape={self.shape}, dtype={self.dtype}, "
                f"chunks={self.chunks}, nblocks={self.nblocks})")

    # -- reading -------------------------------------------------------------------
    def block(self, i: int, j: int = 0) -> np.ndarray:
        """Block ``(i, j)`` as a numpy array (checksum verified)."""
        return read_block(self.store, self.meta, (i, j))

    def blocks(self) -> Iterator[tuple[BlockIndex, np.ndarray]]:
        """Iterate over ``(index, block)`` in C order of the block grid."""
        for index in self.meta.indices():
            yield index, read_block(self.store, self.meta, index)

    def row_block_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` rows of each row block."""
        r = self.chunks[0]
        return [(i * r, min((i + 1) * r, self.shape[0])) for i in range(self.nblocks[0])]

    def to_numpy(self) -> np.ndarray:
        """Read the whole matrix into memory."""
        return read_region(self.store, self.meta, (slice(0, self.shape[0]), slice(0, self.shape[1])))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.to_numpy()
        return out if dtype is None else out.astype(dtype)

    def to_dask(self) -> da.Array:
        """A dask array whose tasks read (and verify) one block each."""
        import dask.array as da
        from dask.base import tokenize

        name = "blocklin-read-" + tokenize(self.url, self.fingerprint)
        dsk = {(name, *index): (read_block, self.store, self.meta, index)
               for index in self.meta.indices()}
        chunks = tuple(
            tuple(min(c, s - k * c) for k in range(g))
            for s, c, g in zip(self.shape, self.chunks, self.nblocks, strict=True)
        )
        return da.Array(dsk, name, chunks=chunks, dtype=self.dtype)


class Transposed:
    """``A.T`` for a BlockMatrix: a marker that products read A's blocks transposed."""

    def __init__(self, base: BlockMatrix) -> None:
        self.base = base

    @property
    def shape(self) -> tuple[int, int]:
        return (self.base.shape[1], self.base.shape[0])

    @property
    def T(self) -> BlockMatrix:
        return self.base

    def __repr__(self) -> str:
        return f"Transposed({self.base!r})"


# ---------------------------------------------------------------------------------------
def _parse_chunks(chunks: Any, shape: tuple[int, int], itemsize: int) -> tuple[int, int]:
    if chunks is None or chunks == "auto":
        chunks = (None, None)
    if isinstance(chunks, int) and not isinstance(chunks, bool):
        chunks = (chunks, None)
    if not isinstance(chunks, tuple | list) or len(chunks) != 2:
        raise InputValueError(f"chunks must be (rows, cols) with None for 'all'; got {chunks!r}")
    out = []
    for dim, (c, s) in enumerate(zip(chunks, shape, strict=True)):
        if c is None:
            c = chunk_rows_for(s, shape[1], itemsize) if dim == 0 else s
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c <= 0:
            raise InputValueError(f"chunks must be positive ints or None; got {chunks!r}")
        out.append(int(min(c, s)))
    return (out[0], out[1])


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        hint = " Use x.reshape(-1, 1) for a single column." if len(shape) == 1 else ""
        raise InputValueError(f"a BlockMatrix is 2-D; got an array of shape {shape}.{hint}")
    if 0 in shape:
        raise InputValueError(f"cannot store an empty matrix (shape {shape})")
    return (int(shape[0]), int(shape[1]))


def prepare_target(path: str | os.PathLike[str], overwrite: bool,
                    how: str = "pass overwrite=True") -> Store:
    """The empty store to write a new array to; an existing one is an error unless replaced."""
    store = store_for(path)
    if store.list("") or store.exists("zarr.json"):
        if not overwrite:
            raise InputValueError(f"{store.url} already exists; {how} to replace it")
        store.delete_prefix("")
    return store


def from_array(x: Any, path: str | os.PathLike[str], chunks: Any = None, *,
               codec: str = "auto", overwrite: bool = False, check_finite: bool = True,
               attrs: dict[str, Any] | None = None,
               storage_options: dict[str, Any] | None = None) -> BlockMatrix:
    """Store a numpy or dask array as a BlockMatrix.

    Parameters
    ----------
    x : numpy.ndarray, dask.array.Array or array-like
        A 2-D real-valued matrix. Dask arrays are written block by block, never
        materialized whole.
    path : str or path-like
        Local directory or fsspec URL (``s3://bucket/A.zarr``, ``memory://A.zarr``).
    chunks : (int or None, int or None), int or None
        Block shape. ``None`` in the first place picks row blocks of at most
        ``BLOCKLIN_CHUNK_BYTES`` (64 MiB): one block of the array's own rows when it is
        smaller, else equal blocks (never a small edge block padded up to a full one);
        ``None`` in the second keeps all columns in one block (row panels). A block
        larger than the array is cut to the array.
    codec : {"auto", "none", "lz4", "zstd"}
        Chunk compression; every chunk also carries a crc32c checksum. ``auto``
        compresses only when a trial block shrinks by 15% or more.
    overwrite : bool
        Replace an existing array at ``path``; otherwise that is an error.
    check_finite : bool, default True
        Refuse NaN and infinity, checked block by block as each is written (one read
        of the block, no temporary); on failure nothing is left at ``path``. Pass
        False to store them anyway, for tools that are defined on them: blocklin's
        operators raise :class:`~blocklin.errors.NonFiniteError` when they read them.
    attrs : dict, optional
        Extra provenance attributes recorded under ``blocklin``.
    storage_options : dict, optional
        fsspec options for ``path`` (``key``, ``secret``, ``endpoint_url``...). They
        stay with ``path`` for the rest of the process (every later compute reading
        it, on every worker) and are never written to storage or printed.

    Returns
    -------
    BlockMatrix

    Raises
    ------
    InputDtypeError
        For non-numeric dtypes.
    InputValueError
        For non-2-D or empty input, bad chunks, or an existing path.
    NonFiniteError
        With ``check_finite``, for NaN or infinity: names ``path``, the block and the
        global row and column of the first one (an ``InputValueError``).

    Notes
    -----
    One pass over ``x``; memory per write task is one block plus its encoded bytes.
    """
    import dask.array as da

    register_storage_options(path, storage_options)
    if isinstance(x, BlockMatrix):
        from blocklin.storage.locations import check_no_alias

        # overwrite=True would delete the source before reading it.
        check_no_alias([("target", os.fspath(path))], [("source array", x.url)])
        x = x.to_dask()
    is_dask = isinstance(x, da.Array)
    if not is_dask:
        if hasattr(x, "tocsr") and hasattr(x, "nnz"):
            from blocklin.storage.sparse import from_sparse

            return from_sparse(x, path, chunks, overwrite=overwrite, check_finite=check_finite,
                               attrs=attrs)
        x = np.asarray(x)
    dtype = check_numeric_dtype(x.dtype)
    shape = _check_shape(tuple(x.shape))
    chunk_shape = _parse_chunks(chunks, shape, dtype.itemsize)
    store = prepare_target(path, overwrite)
    sample = np.asarray(x[: chunk_shape[0], : chunk_shape[1]])
    meta = ArrayMeta(url=store.url, shape=shape, chunks=chunk_shape, dtype=dtype.name,
                     codec=choose_codec(codec, sample))
    try:
        crcs = (_write_dask(x, store, meta, check_finite) if is_dask
                else _write_numpy(x, store, meta, check_finite))
        fp = fingerprint_from_crcs(meta, crcs)
        doc = provenance_attrs("from_array", params={"codec": meta.codec.compressor
                                                     if meta.codec else None},
                               fingerprint=fp)
        doc[ATTRS_NAMESPACE].update(attrs or {})
        meta = meta.with_attrs(doc)
        write_meta(store, meta)
    except BaseException:
        store.delete_prefix("")
        raise
    return BlockMatrix(store, meta)


_ALLOW_NONFINITE = "pass check_finite=False to store them anyway"


def _block_origin(meta: ArrayMeta, index: BlockIndex) -> tuple[int, int]:
    return index[0] * meta.chunks[0], index[1] * meta.chunks[1]


def _write_numpy(x: np.ndarray, store: Store, meta: ArrayMeta,
                 check_finite: bool) -> dict[BlockIndex, int]:
    def one(index: BlockIndex) -> tuple[BlockIndex, int]:
        block = x[meta.block_slices(index)]
        if check_finite:
            check_block(block, meta.url, index, _block_origin(meta, index), _ALLOW_NONFINITE)
        return index, write_block(store, meta, index, block)

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        futures = [pool.submit(one, index) for index in meta.indices()]
        try:
            # In block order, so the error names the first bad block.
            return dict(f.result() for f in futures)
        except BaseException:
            for f in futures:  # blocks not started yet are not written
                f.cancel()
            raise


_NOT_FINITE = -1  # a crc32c is never negative


def _write_dask_block(block: np.ndarray, store: Store, meta: ArrayMeta, check_finite: bool,
                      block_id: tuple[int, int] = (0, 0)) -> np.ndarray:
    if check_finite and not all_finite(block):
        # Reported after every task has finished: raising here would let the caller
        # delete the target while sibling tasks are still writing into it.
        return np.array([[_NOT_FINITE]], dtype=np.int64)
    crc = write_block(store, meta, tuple(block_id), block)
    return np.array([[crc]], dtype=np.int64)


def _write_dask(x: da.Array, store: Store, meta: ArrayMeta,
                check_finite: bool) -> dict[BlockIndex, int]:
    x = x.astype(meta.np_dtype).rechunk(meta.chunks)
    grid = meta.grid
    crcs = x.map_blocks(_write_dask_block, store, meta, check_finite,  # type: ignore[arg-type]
                        dtype=np.int64,
                        chunks=((1,) * grid[0], (1,) * grid[1])).compute()
    bad = [index for index in meta.indices() if crcs[index] == _NOT_FINITE]
    if bad:
        # Only the failure path computes the bad block again, to name row and column.
        block = np.asarray(x.blocks[bad[0]])
        check_block(block, meta.url, bad[0], _block_origin(meta, bad[0]), _ALLOW_NONFINITE)
    return {index: int(crcs[index]) for index in meta.indices()}


def open_matrix(path: str | os.PathLike[str], *, allow_incomplete: bool = False,
                storage_options: dict[str, Any] | None = None) -> BlockMatrix:
    """Open a stored BlockMatrix (local path or fsspec URL).

    Parameters
    ----------
    path : str or path-like
        Local directory or fsspec URL.
    allow_incomplete : bool
        Open an array whose producing run has not finished.
    storage_options : dict, optional
        fsspec options for ``path`` (credentials, ``endpoint_url``...); they stay with
        ``path`` for the rest of the process, reach every worker reading it, and are
        never written or printed.

    Raises
    ------
    FileNotFoundError
        If no zarr array is at ``path``.
    IncompleteArrayError
        If the array's producing run has not finished (its blocks may be partial).
    """
    register_storage_options(path, storage_options)
    store = store_for(path)
    meta = read_meta(store)
    if meta is None:
        from blocklin.storage.sparse import read_sparse_meta

        meta = read_sparse_meta(store)
    if meta is None:
        if store.exists(".zarray"):
            return _open_v2(store)
        raise FileNotFoundError(f"no zarr array at {store.url}")
    doc = meta.attrs.get(ATTRS_NAMESPACE, {})
    if isinstance(doc, dict) and doc.get("complete") is False and not allow_incomplete:
        raise IncompleteArrayError(f"{store.url} is incomplete: the run writing it has not "
                                   "finished (resume it, or pass allow_incomplete=True)")
    check_numeric_dtype(meta.dtype, what=f"array {store.url}")
    return BlockMatrix(store, meta)


def _open_v2(store: Store) -> BlockMatrix:
    meta = read_meta_v2(store)
    if meta is None:
        raise FileNotFoundError(f"no zarr array at {store.url}")
    check_numeric_dtype(meta.dtype, what=f"array {store.url}")
    return BlockMatrix(store, meta)
