"""Move matrices between Spark DataFrames and BlockMatrix, in Spark's executors.

``from_spark`` writes a DataFrame's numeric columns partition by partition; the rows
never pass through the driver. ``to_spark`` reads row blocks in executors. pyspark is
imported inside the functions only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from blocklin.errors import InputDtypeError, InputValueError
from blocklin.storage.blockmatrix import (
    BlockMatrix,
    _parse_chunks,
    open_matrix,
    prepare_target,
    provenance_attrs,
)
from blocklin.storage.chunkio import read_region, write_block
from blocklin.storage.codecs import choose_codec
from blocklin.storage.dataset import LABEL_DIMS, column_names, label_path_for, write_coordinates
from blocklin.storage.meta import ArrayMeta, check_numeric_dtype, write_meta
from blocklin.storage.records import fingerprint_from_crcs
from blocklin.storage.stores import Store
from blocklin.types import BlockIndex

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession  # noqa: TID251

__all__ = ["from_spark", "label_path_for", "to_spark"]

# A piece of a row block: (offset of its first row inside the block, rows).
Piece = tuple[int, np.ndarray]


def _check_columns(df: DataFrame, columns: Any, label: str | None) -> list[str]:
    from pyspark.sql.types import NumericType  # noqa: TID251

    if isinstance(columns, str) or not isinstance(columns, Iterable):
        raise InputDtypeError(f"columns must be a list of column names; got {columns!r}")
    cols = list(columns)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise InputValueError(f"columns must be a non-empty list of names; got {cols!r}")
    if len(set(cols)) != len(cols):
        raise InputValueError(f"columns holds duplicates: {cols}")
    if label is not None and label in cols:
        raise InputValueError(f"label column {label!r} is also among the feature columns")
    types = {f.name: f.dataType for f in df.schema.fields}
    for c in [*cols, *([label] if label is not None else [])]:
        if c not in types:
            raise InputValueError(f"DataFrame has no column {c!r}; it has {sorted(types)}")
        if not isinstance(types[c], NumericType):
            raise InputDtypeError(f"column {c!r} is {types[c].simpleString()}, not numeric; "
                                  "cast it or leave it out")
    return cols


class _RowStream:
    """One partition's rows as 2-D arrays, taken ``k`` rows at a time across Arrow batches."""

    def __init__(self, batches: Iterable[Any], dtype: str) -> None:
        self._batches = iter(batches)
        self._dtype = dtype
        self._cur: np.ndarray | None = None
        self._pos = 0

    def _advance(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            return False
        cols = [c.to_numpy(zero_copy_only=False) for c in batch.columns]  # nulls -> NaN
        self._cur = np.column_stack(cols).astype(self._dtype, copy=False)
        self._pos = 0
        return True

    def take(self, k: int) -> np.ndarray:
        parts = []
        while k > 0:
            if self._cur is None or self._pos == self._cur.shape[0]:
                if not self._advance():
                    break
                continue
            n = min(k, self._cur.shape[0] - self._pos)
            parts.append(self._cur[self._pos: self._pos + n])
            self._pos += n
            k -= n
        if not parts:
            return np.empty((0, 0), dtype=self._dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _row_pieces(pid: int, rows: _RowStream, offsets: list[int], counts: list[int],
                nrows: int, step: int) -> Iterator[tuple[int, Piece]]:
    """Cut one partition's rows at block boundaries: (block, (offset in block, rows))."""
    pos, end = offsets[pid], offsets[pid] + counts[pid]
    while pos < end:
        b = pos // step
        take = min((b + 1) * step, nrows, end) - pos
        arr = rows.take(take)
        if arr.shape[0] != take:
            raise RuntimeError(f"partition {pid} changed between passes (expected {counts[pid]} "
                               "rows); cache a non-deterministic DataFrame before from_spark")
        yield b, (pos - b * step, arr)
        pos += take
    if rows.take(1).shape[0]:
        raise RuntimeError(f"partition {pid} grew between passes; cache a non-deterministic "
                           "DataFrame before from_spark")


def _write_row_block(b: int, pieces: Iterable[Piece], metas: list[ArrayMeta],
                     splits: list[int]) -> tuple[int, list[int]]:
    """Assemble a row block from its pieces (in row order) and write each target."""
    from blocklin.storage.stores import store_for

    parts = sorted(pieces, key=lambda p: p[0])
    block = parts[0][1] if len(parts) == 1 else np.vstack([p[1] for p in parts])
    want = metas[0].block_shape((b, 0))[0]
    if block.shape[0] != want:
        raise RuntimeError(f"row block {b} got {block.shape[0]} rows, expected {want}")
    crcs = []
    for meta, lo, hi in zip(metas, splits[:-1], splits[1:], strict=True):
        crcs.append(write_block(store_for(meta.url), meta, (b, 0), block[:, lo:hi]))
    return b, crcs


_COUNT_SCHEMA = "pid int, n long"
_PIECE_SCHEMA = "block long, kind string, off long, nrows long, crcs array<long>, data binary"


def _map_in_arrow(df: DataFrame, fn: Any, schema: str) -> DataFrame:
    # pyspark checks its pandas version on every mapInArrow and warns about pandas >= 3,
    # which an Arrow-only map does not use.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)
        return df.mapInArrow(fn, schema)


def _count_partition(batches: Iterable[Any]) -> Iterator[Any]:
    """Rows of this partition (runs in an executor, over Arrow batches)."""
    import pyarrow as pa
    from pyspark import TaskContext  # noqa: TID251

    ctx = TaskContext.get()
    n = sum(b.num_rows for b in batches)
    yield pa.RecordBatch.from_pydict({"pid": pa.array([ctx.partitionId() if ctx else 0],
                                                      pa.int32()),
                                      "n": pa.array([n], pa.int64())})


def _piece_batch(b: int, kind: str, off: int, arr: np.ndarray | None,
                 crcs: list[int]) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_pydict({
        "block": pa.array([b], pa.int64()), "kind": pa.array([kind]),
        "off": pa.array([off], pa.int64()),
        "nrows": pa.array([0 if arr is None else arr.shape[0]], pa.int64()),
        "crcs": pa.array([crcs], pa.list_(pa.int64())),
        "data": pa.array([b"" if arr is None else np.ascontiguousarray(arr).tobytes()],
                         pa.binary())})


def _write_partition(batches: Iterable[Any], offsets: list[int], counts: list[int],
                     metas: list[ArrayMeta], splits: list[int], dtype: str) -> Iterator[Any]:
    """Write whole blocks at once; pass partial ones on to be joined with their neighbours."""
    from pyspark import TaskContext  # noqa: TID251

    ctx = TaskContext.get()
    pid = ctx.partitionId() if ctx else 0
    nrows, step = metas[0].shape[0], metas[0].chunks[0]
    rows = _RowStream(batches, dtype)
    for b, (off, arr) in _row_pieces(pid, rows, offsets, counts, nrows, step):
        if off == 0 and arr.shape[0] == metas[0].block_shape((b, 0))[0]:
            yield _piece_batch(b, "crcs", 0, None, _write_row_block(b, [(0, arr)], metas,
                                                                    splits)[1])
        else:
            yield _piece_batch(b, "piece", off, arr, [])


def _finish_block(b: int, items: Iterable[Any], metas: list[ArrayMeta], splits: list[int],
                  dtype: str) -> tuple[int, list[int]]:
    items = list(items)
    for r in items:
        if r.kind == "crcs":
            return b, list(r.crcs)
    pieces = [(int(r.off), np.frombuffer(r.data, dtype=dtype).reshape(r.nrows, -1))
              for r in items]
    return _write_row_block(b, pieces, metas, splits)


def from_spark(df: DataFrame, columns: Any, path: str | os.PathLike[str],
               label: str | None = None, chunks: Any = None, *, dtype: Any = "float64",
               codec: str = "auto", label_path: str | os.PathLike[str] | None = None,
               overwrite: bool = False, persist: bool = True
               ) -> BlockMatrix | tuple[BlockMatrix, BlockMatrix]:
    """Write numeric columns of a Spark DataFrame to a BlockMatrix, in the executors.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        The data; row order is the DataFrame's partition order.
    columns : list of str
        Numeric feature columns, in the order of the matrix's columns.
    path : str or path-like
        Where to write the matrix; must be reachable from every Spark executor.
    label : str, optional
        A numeric column written as an n × 1 BlockMatrix with the same row blocks.
    chunks : int or (int, None), optional
        Rows per block (default about 64 MiB blocks); all columns in one block.
    dtype : numpy dtype
        Stored dtype (nulls become NaN for float dtypes).
    label_path : str, optional
        Where to write the label matrix (default ``label_path_for(path)``: ``X.zarr`` →
        ``X.label.zarr``, as ``blocklin ingest --label`` names it).
    overwrite : bool
        Replace existing arrays at ``path``/``label_path``.
    persist : bool
        Persist the selected columns (memory and disk, in the executors) for the two
        passes, so a non-deterministic DataFrame (e.g. ``repartitionByRange``, which
        samples) is read the same both times. ``False`` for a cheap deterministic one.

    Returns
    -------
    BlockMatrix, or (X, y) when ``label`` is given

    Raises
    ------
    InputDtypeError
        Non-numeric columns or dtype.
    InputValueError
        Missing or duplicate columns, an empty DataFrame, bad chunks, existing paths.

    Notes
    -----
    Two passes over the selected columns (row counts per partition, then the
    write), over Arrow batches; a partition whose rows differ between the passes
    fails the write rather than misplacing rows. Each executor task holds one
    block; only row counts, checksums and, for the (at most two per partition)
    blocks straddling a partition boundary, their pieces move through Spark's
    shuffle. The driver holds per-partition counts and per-block checksums only.
    """
    np_dtype = check_numeric_dtype(np.dtype(dtype), what="from_spark dtype")
    cols = _check_columns(df, columns, label)
    selected = df.select(*cols, *([label] if label is not None else []))
    if persist:
        from pyspark import StorageLevel  # noqa: TID251

        selected = selected.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _ingest(selected, cols, path, label, chunks, np_dtype, codec, label_path,
                       overwrite)
    finally:
        if persist:
            selected.unpersist()


def _ingest(selected: DataFrame, cols: list[str], path: str | os.PathLike[str],
            label: str | None, chunks: Any, np_dtype: np.dtype[Any], codec: str,
            label_path: str | os.PathLike[str] | None,
            overwrite: bool) -> BlockMatrix | tuple[BlockMatrix, BlockMatrix]:
    counts_by_pid = {r.pid: r.n for r in
                     _map_in_arrow(selected, _count_partition, _COUNT_SCHEMA).collect()}
    counts = [counts_by_pid.get(p, 0) for p in range(max(counts_by_pid, default=-1) + 1)]
    nrows = sum(counts)
    if nrows == 0:
        raise InputValueError("cannot store an empty matrix: the DataFrame has no rows")
    step = _parse_chunks(chunks, (nrows, len(cols)), np_dtype.itemsize)[0]
    sample = np.array(selected.take(min(step, 1000)), dtype=np_dtype)[:, : len(cols)]
    targets = [(path, len(cols))] + ([(label_path or label_path_for(path), 1)] if label else [])
    stores = [prepare_target(p, overwrite) for p, _ in targets]
    metas = [ArrayMeta(url=s.url, shape=(nrows, k), chunks=(step, k), dtype=np_dtype.name,
                       codec=choose_codec(codec, sample if k > 1 else sample[:, :1]),
                       dims=None if i == 0 else LABEL_DIMS)
             for i, (s, (_, k)) in enumerate(zip(stores, targets, strict=True))]
    splits = [0, len(cols), len(cols) + 1][: len(metas) + 1]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    nblocks = metas[0].grid[0]
    try:
        write = partial(_write_partition, offsets=offsets, counts=counts, metas=metas,
                        splits=splits, dtype=np_dtype.name)
        pieces = _map_in_arrow(selected, write, _PIECE_SCHEMA)
        parts = max(1, min(nblocks, selected.sparkSession.sparkContext.defaultParallelism))
        crcs = dict(pieces.rdd.map(lambda r: (r.block, r)).groupByKey(numPartitions=parts)
                    .map(lambda kv: _finish_block(kv[0], kv[1], metas, splits, np_dtype.name))
                    .collect())
        if sorted(crcs) != list(range(nblocks)):
            raise RuntimeError(f"from_spark wrote blocks {sorted(crcs)[:5]}..., not 0..{nblocks - 1}")
        return _seal(stores, metas, crcs, cols, label)
    except BaseException:
        for s in stores:
            s.delete_prefix("")
        raise


def _seal(stores: list[Store], metas: list[ArrayMeta], crcs: dict[int, list[int]],
          cols: list[str], label: str | None) -> BlockMatrix | tuple[BlockMatrix, BlockMatrix]:
    out = []
    for k, (store, meta) in enumerate(zip(stores, metas, strict=True)):
        block_crcs: dict[BlockIndex, int] = {(b, 0): c[k] for b, c in crcs.items()}
        names = cols if k == 0 else [label]
        # ``columns`` as ingest records it: to_spark names the DataFrame's columns so.
        attrs = provenance_attrs("from_spark", params={"columns": names},
                                 fingerprint=fingerprint_from_crcs(meta, block_crcs),
                                 columns=names)
        meta = meta.with_attrs(attrs)
        write_meta(store, meta)
        out.append(BlockMatrix(store, meta))
    # xarray's view of the folder: the column names (and the label's) as coordinates.
    write_coordinates(out[0].url, {"col": cols, **({"label": [label]} if label else {})})
    return (out[0], out[1]) if len(out) == 2 else out[0]


def _read_rows(i: int, url: str) -> Iterator[list[Any]]:
    A = open_matrix(url)
    lo, hi = A.row_block_bounds()[i]
    # read_region assembles the row panel across column blocks (and densifies CSR).
    yield from read_region(A.store, A.meta, (slice(lo, hi), slice(None))).tolist()


def to_spark(A: BlockMatrix | str | os.PathLike[str], spark: SparkSession,
             columns: list[str] | None = None) -> DataFrame:
    """A Spark DataFrame over a BlockMatrix's rows, read block by block in the executors.

    Parameters
    ----------
    A : BlockMatrix or path
        Stored matrix; its location must be reachable from every executor.
    spark : pyspark.sql.SparkSession
        The session to create the DataFrame in.
    columns : list of str, optional
        Column names (default: the names ``blocklin ingest`` or :func:`from_spark`
        recorded for A's columns, else ``c0, c1, ...``).

    Returns
    -------
    pyspark.sql.DataFrame
        One partition per row block, rows in matrix order; float columns are
        DoubleType/FloatType, integer columns LongType.

    Notes
    -----
    Lazy, like any DataFrame: each action reads A once; per-task memory is one row
    panel plus its rows as Python objects.
    """
    from pyspark.sql.types import DoubleType, FloatType, LongType, StructField, StructType  # noqa: TID251

    mat = A if isinstance(A, BlockMatrix) else open_matrix(A)
    n = mat.shape[1]
    names = columns if columns is not None else \
        (column_names(mat.attrs, n) or [f"c{j}" for j in range(n)])
    if len(names) != n:
        raise InputValueError(f"to_spark: {len(names)} column names for {n} columns")
    kind = mat.dtype
    spark_type = (DoubleType() if kind == np.float64 else FloatType() if kind == np.float32
                  else LongType() if kind.kind in "iub" else DoubleType())
    schema = StructType([StructField(c, spark_type, nullable=False) for c in names])
    url = mat.url
    rows = spark.sparkContext.parallelize(range(mat.nblocks[0]), mat.nblocks[0]) \
        .flatMap(lambda i: _read_rows(i, url))
    return spark.createDataFrame(rows, schema=schema, verifySchema=False)
