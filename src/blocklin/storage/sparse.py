"""Sparse BlockMatrix storage: each row block as CSR components in zarr v3.

Layout of a sparse matrix at ``A.zarr`` (every component a standard zarr v3 array
with the same ``bytes → crc32c`` codecs as dense chunks, so any zarr reader opens it):

```
A.zarr/zarr.json                 a zarr group; attributes["blocklin"] holds the layout
                                 (format "csr", shape, chunks, dtype, nnz per block)
                                 and provenance (operator, version, fingerprint)
A.zarr/b/<i>/data/               nnz_i values          (dtype of the matrix)
A.zarr/b/<i>/indices/            nnz_i column indices  (int32, int64 beyond 2³¹ columns)
A.zarr/b/<i>/indptr/             rows_i + 1 offsets     (int64)
```

Appending rows (:func:`append_sparse`, for refresh) rewrites the last partial block
with its leading rows unchanged and writes new blocks, then commits the group's
``zarr.json``; a reader of the previous metadata reads the leading rows of a longer
block, so an interrupted append leaves the matrix as it was.

Blocks are row panels (all columns). Reading block ``i`` returns a
``scipy.sparse.csr_matrix`` after verifying each component's crc32c; a corrupt
component raises :class:`~blocklin.errors.CorruptChunkError` naming the array and
block. The fingerprint hashes the layout and, per block, the three components'
checksums, as for dense arrays. The group's ``zarr.json`` is written last, so an
interrupted write leaves no readable matrix (and is removed on failure).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np
import scipy.sparse as sp

from blocklin.config import chunk_rows_for
from blocklin.errors import (
    CorruptChunkError,
    InputValueError,
    MetadataError,
    MissingChunkError,
    NonFiniteError,
)
from blocklin.storage.chunkio import write_block
from blocklin.storage.codecs import ChunkCodec
from blocklin.storage.finite import all_finite, first_nonfinite
from blocklin.storage.meta import (
    ATTRS_NAMESPACE,
    METADATA_KEY,
    ArrayMeta,
    check_numeric_dtype,
    parse_metadata_json,
    parse_shape,
    write_meta,
)
from blocklin.storage.records import fingerprint_from_crcs
from blocklin.storage.stores import Store, store_for
from blocklin.types import BlockIndex

if TYPE_CHECKING:
    from blocklin.storage.blockmatrix import BlockMatrix

__all__ = ["CSR", "CSRBlock", "append_sparse", "csr_block_nbytes", "from_sparse",
           "read_csr_block", "read_sparse_meta", "sparse_block_ident", "to_scipy"]

CSR = "csr"
_COMPONENTS = ("data", "indices", "indptr")
_RAW = ChunkCodec("none")


class CSRBlock(sp.csr_matrix):
    """A CSR row block as read from storage; ``nbytes`` counts its three components."""

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)


def _index_dtype(ncols: int) -> np.dtype[Any]:
    """Column index dtype: int32, int64 beyond 2³¹ columns (written and read alike)."""
    return np.dtype(np.int32 if ncols < 2**31 else np.int64)


def _component_key(i: int, name: str) -> str:
    return f"b/{i}/{name}"


def _write_component(store: Store, i: int, name: str, arr: np.ndarray) -> int:
    child = store.child(_component_key(i, name))
    # A length-0 component has no chunk (zarr's fill value); chunk shapes must be >= 1.
    meta = ArrayMeta(url=child.url, shape=(arr.size,), chunks=(max(arr.size, 1),),
                     dtype=arr.dtype.name, codec=_RAW)
    crc = write_block(child, meta, (0,), arr) if arr.size else 0
    write_meta(child, meta)
    return crc


def _write_block(store: Store, i: int, block: sp.csr_matrix, dtype: np.dtype[Any],
                 index_dtype: np.dtype[Any]) -> tuple[int, int]:
    block.sum_duplicates()  # canonical CSR: sorted, unique column indices per row
    parts = (np.ascontiguousarray(block.data, dtype=dtype),
             np.ascontiguousarray(block.indices, dtype=index_dtype),
             np.ascontiguousarray(block.indptr, dtype=np.int64))
    crcs = [_write_component(store, i, name, arr) for name, arr in
            zip(_COMPONENTS, parts, strict=True)]
    combined = crc32c.crc32c(b"".join(c.to_bytes(4, "little") for c in crcs))
    return int(block.nnz), int(combined)


def _default_rows(x: sp.csr_matrix, itemsize: int) -> int:
    # Same rule as dense panels (dense-equivalent bytes per block at most the target)
    # so that the planner's per-task memory projection, which counts dense chunk bytes,
    # stays valid.
    return chunk_rows_for(int(x.shape[0]), int(x.shape[1]), itemsize)


def _parse_rows(chunks: Any, x: sp.csr_matrix, itemsize: int) -> int:
    if chunks is None or chunks == "auto":
        return _default_rows(x, itemsize)
    if isinstance(chunks, int) and not isinstance(chunks, bool):
        chunks = (chunks, None)
    if not isinstance(chunks, tuple | list) or len(chunks) != 2:
        raise InputValueError(f"chunks must be (rows, None) for a sparse matrix; got {chunks!r}")
    rows, cols = chunks
    if cols is not None and cols < x.shape[1]:
        raise InputValueError(f"sparse matrices are stored in row panels (all columns); got "
                              f"chunks={chunks!r}. Use chunks=({rows}, None)")
    if rows is None:
        return _default_rows(x, itemsize)
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows <= 0:
        raise InputValueError(f"chunks must be positive ints or None; got {chunks!r}")
    return int(min(rows, x.shape[0]))


def from_sparse(x: Any, path: str | os.PathLike[str], chunks: Any = None, *,
                overwrite: bool = False, check_finite: bool = True,
                attrs: dict[str, Any] | None = None) -> BlockMatrix:
    """Store a ``scipy.sparse`` matrix as a sparse BlockMatrix (CSR row panels).

    Called by :func:`blocklin.from_array` for sparse input; parameters as there
    (``chunks`` must be ``(rows, None)``: sparse blocks are row panels).

    Raises
    ------
    InputDtypeError
        For non-numeric dtypes.
    InputValueError
        For non-2-D or empty input, column-split chunks, or an existing path.
    NonFiniteError
        With ``check_finite`` (the default), for a NaN or infinite stored value: names
        ``path``, its row block and the value's row and column. Checked on the stored
        values (``.data``) before anything is written.

    Notes
    -----
    One pass over ``x``; memory per write is one CSR row block.
    """
    from blocklin.storage.blockmatrix import BlockMatrix, prepare_target, provenance_attrs

    dtype = check_numeric_dtype(x.dtype)
    if len(x.shape) != 2 or 0 in x.shape:
        raise InputValueError(f"a BlockMatrix is 2-D and non-empty; got shape {x.shape}")
    csr = sp.csr_matrix(x)
    rows = _parse_rows(chunks, csr, dtype.itemsize)
    if check_finite and not all_finite(csr.data):
        _refuse_nonfinite(csr, rows, store_for(path).url)
    m, n = csr.shape
    index_dtype = _index_dtype(n)
    store = prepare_target(path, overwrite)
    meta = ArrayMeta(url=store.url, shape=(m, n), chunks=(rows, n), dtype=dtype.name,
                     format=CSR)
    try:
        def one(i: int) -> tuple[int, int]:
            return _write_block(store, i, sp.csr_matrix(csr[i * rows: (i + 1) * rows]), dtype,
                                index_dtype)

        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            written = list(pool.map(one, range(meta.grid[0])))
        crcs: dict[BlockIndex, int] = {(i, 0): c for i, (_, c) in enumerate(written)}
        doc = provenance_attrs("from_array", params={"format": CSR},
                               fingerprint=fingerprint_from_crcs(meta, crcs))
        doc[ATTRS_NAMESPACE].update(attrs or {})
        doc[ATTRS_NAMESPACE]["layout"] = {
            "format": CSR, "shape": [m, n], "chunks": [rows, n], "dtype": dtype.name,
            "index_dtype": index_dtype.name, "nnz": [nz for nz, _ in written]}
        meta = meta.with_attrs(doc)
        group = {"zarr_format": 3, "node_type": "group", "attributes": doc}
        store.put(METADATA_KEY, json.dumps(group, indent=1, sort_keys=True).encode())
    except BaseException:
        store.delete_prefix("")
        raise
    return BlockMatrix(store, meta)


def _refuse_nonfinite(csr: sp.csr_matrix, rows: int, url: str) -> None:
    row, col = first_nonfinite(csr) or (0, 0)  # the caller saw a non-finite value
    raise NonFiniteError(url, (row // rows, 0), row, col,
                         detail="pass check_finite=False to store them anyway")


def read_sparse_meta(store: Store) -> ArrayMeta | None:
    """The metadata of a sparse BlockMatrix stored at ``store``, or None if it is not one."""
    raw = store.get(METADATA_KEY)
    if raw is None:
        return None
    doc = parse_metadata_json(raw, store.url)
    attrs = doc.get("attributes", {})
    ns = attrs.get(ATTRS_NAMESPACE, {}) if isinstance(attrs, dict) else {}
    layout = ns.get("layout", {}) if isinstance(ns, dict) else {}
    if doc.get("node_type") != "group" or not isinstance(layout, dict) \
            or layout.get("format") != CSR:
        return None
    field = "attributes.blocklin.layout."
    shape = parse_shape(layout.get("shape"), store.url, field + "shape", allow_zero=True)
    chunks = parse_shape(layout.get("chunks"), store.url, field + "chunks", allow_zero=False)
    if len(shape) != 2 or len(chunks) != 2:
        raise MetadataError(store.url, field + "shape", "must be 2-D for a CSR matrix")
    if not isinstance(layout.get("dtype"), str):
        raise MetadataError(store.url, field + "dtype", f"must be a string; got {layout.get('dtype')!r}")
    return ArrayMeta(url=store.url, shape=shape, chunks=chunks, dtype=layout["dtype"], format=CSR,
                     attrs=attrs)


def sparse_block_ident(store: Store, index: BlockIndex) -> str | None:
    """The identity of row block ``index``: its components' checksums combined, as
    written (an absent data or indices component is an empty one); None when the
    block is lost (its ``indptr``, always written, is absent)."""
    crcs = []
    for name in _COMPONENTS:
        tail = store.get_tail(_component_key(index[0], name) + "/c/0", 4)
        if tail is None or len(tail) != 4:
            if name == "indptr":
                return None
            crcs.append(0)
        else:
            crcs.append(int.from_bytes(tail, "little"))
    return f"c{crc32c.crc32c(b''.join(c.to_bytes(4, 'little') for c in crcs)):08x}"


def _read_component(store: Store, meta: ArrayMeta, index: BlockIndex, name: str,
                    dtype: np.dtype[Any]) -> np.ndarray:
    raw = store.get(_component_key(index[0], name) + "/c/0")
    if raw is None:
        if name == "indptr":
            # Every block has rows + 1 offsets, so blocklin always wrote this one.
            raise MissingChunkError(meta.url, index, "its indptr component is absent")
        return np.zeros(0, dtype=dtype)
    n = (len(raw) - 4) // dtype.itemsize
    arr = _RAW.decode_view(memoryview(raw), dtype, (n,), None)
    if isinstance(arr, str):
        raise CorruptChunkError(meta.url, index, f"{name}: {arr}")
    return arr


def read_csr_block(store: Store, meta: ArrayMeta, index: BlockIndex) -> CSRBlock:
    """Read row block ``index`` of a sparse matrix as CSR, verifying its checksums.

    Raises
    ------
    CorruptChunkError
        If a component's checksum does not match or the components are inconsistent.
    """
    meta.check_index(index)
    rows, n = meta.block_shape(index)
    indptr = _read_component(store, meta, index, "indptr", np.dtype(np.int64))
    if indptr.size == 0:
        indptr = np.zeros(rows + 1, dtype=np.int64)
    total = int(indptr[-1])
    index_dtype = _index_dtype(n)
    indices = _read_component(store, meta, index, "indices", index_dtype)
    data = _read_component(store, meta, index, "data", meta.np_dtype)
    # A last block that an append extended (uncommitted, or read with the metadata of
    # before it) holds more rows than this metadata's: its leading rows are these.
    if indptr.size < rows + 1 or indices.size != total or data.size != total:
        raise CorruptChunkError(meta.url, index, f"CSR components disagree: {rows} rows, "
                                f"indptr {indptr.size}, indices {indices.size}, data {data.size}")
    if indptr.size > rows + 1:
        indptr = indptr[:rows + 1]
        nnz = int(indptr[-1])
        indices, data = indices[:nnz], data[:nnz]
    return CSRBlock((data, indices, indptr), shape=(rows, n), copy=False)


def _block_crc(store: Store, meta: ArrayMeta, i: int) -> int:
    ident = sparse_block_ident(store, (i, 0))
    if ident is None:
        raise MissingChunkError(meta.url, (i, 0), "its indptr component is absent")
    return int(ident[1:], 16)


def append_sparse(target: BlockMatrix, blocks: Iterable[Any], provenance: dict[str, Any],
                  before_commit: Callable[[], None] | None = None) -> BlockMatrix:
    """Append the rows of ``blocks`` (CSR or dense row blocks) to a sparse BlockMatrix.

    The last partial block is rewritten with its leading rows unchanged and then the
    new rows; full blocks follow; the group's metadata (shape, per-block nnz,
    fingerprint and ``provenance`` merged into the ``blocklin`` attributes) is written
    last, after ``before_commit`` (a compare-and-swap check) has passed. The caller
    holds the array's lock.

    Raises
    ------
    InputValueError
        A block with another number of columns.
    NonFiniteError
        A NaN or infinite value (unless the target allows them); nothing committed.

    Notes
    -----
    One pass over ``blocks``; memory one CSR row block. The old blocks are not read
    (their checksums are: 12 bytes each), except the last partial one.
    """
    from blocklin.storage.blockmatrix import BlockMatrix

    meta, store = target.meta, target.store
    (m, n), r = meta.shape, int(meta.chunks[0])
    attrs = copy.deepcopy(meta.attrs)
    ns = attrs.setdefault(ATTRS_NAMESPACE, {})
    layout = ns.get("layout", {})
    nnz = [int(v) for v in layout.get("nnz", [])]
    index_dtype = _index_dtype(n)
    check = ns.get("allow_nonfinite") is not True
    crcs: dict[BlockIndex, int] = {(i, 0): _block_crc(store, meta, i)
                                   for i in range(meta.grid[0])}
    last = meta.grid[0] - 1
    held = m - last * r
    pending: list[sp.csr_matrix] = []
    cur = last + 1
    if 0 < held < r:
        pending, cur = [sp.csr_matrix(read_csr_block(store, meta, (last, 0)))], last
    count = sum(b.shape[0] for b in pending)
    added = 0

    def flush() -> None:
        nonlocal pending, count, cur
        block = sp.csr_matrix(sp.vstack(pending, format="csr"))
        nz, crc = _write_block(store, cur, block, meta.np_dtype, index_dtype)
        crcs[(cur, 0)] = crc
        nnz[cur:cur + 1] = [nz]
        pending, count, cur = [], 0, cur + 1

    for raw in blocks:
        block = sp.csr_matrix(raw)
        if block.shape[1] != n:
            raise InputValueError(f"rows of {block.shape[1]} columns cannot extend "
                                  f"{meta.url} ({n} columns)")
        if check and not all_finite(block.data):
            row, col = first_nonfinite(block) or (0, 0)
            raise NonFiniteError(meta.url, ((m + added + row) // r, 0), m + added + row, col,
                                 detail="refused on append; nothing was committed")
        start = 0
        while start < block.shape[0]:
            take = min(r - count, block.shape[0] - start)
            pending.append(block[start:start + take])
            count, start, added = count + take, start + take, added + take
            if count == r:
                flush()
    if count:
        flush()
    new = ArrayMeta(url=meta.url, shape=(m + added, n), chunks=(r, n), dtype=meta.dtype,
                    format=CSR)
    ns.update(provenance)
    ns["fingerprint"] = fingerprint_from_crcs(new, crcs)
    ns["layout"] = {**layout, "shape": [m + added, n], "nnz": nnz}
    if before_commit is not None:
        before_commit()
    group = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    store.put(METADATA_KEY, json.dumps(group, indent=1, sort_keys=True).encode())
    return BlockMatrix(store, new.with_attrs(attrs))


def to_scipy(A: BlockMatrix) -> sp.csr_matrix:
    """The whole sparse BlockMatrix as one ``scipy.sparse.csr_matrix`` (dense ones too)."""
    if A.meta.format != CSR:
        return sp.csr_matrix(A.to_numpy())
    blocks = [sp.csr_matrix(A.block(i, 0)) for i in range(A.nblocks[0])]
    return sp.csr_matrix(sp.vstack(blocks, format="csr"))


def csr_block_nbytes(meta: ArrayMeta) -> int | None:
    """Bytes of the fullest CSR row block of ``meta`` once read (data, indices, indptr).

    From the per-block nnz recorded at write time; None for dense arrays (and for a
    layout without nnz), whose blocks take ``rows × cols × itemsize``.
    """
    if meta.format != CSR:
        return None
    layout = meta.attrs.get(ATTRS_NAMESPACE, {}).get("layout", {})
    nnz = layout.get("nnz") if isinstance(layout, dict) else None
    if not nnz:
        return None
    per_entry = meta.np_dtype.itemsize + _index_dtype(meta.shape[1]).itemsize
    return int(max(nnz)) * per_entry + (int(meta.chunks[0]) + 1) * 8

