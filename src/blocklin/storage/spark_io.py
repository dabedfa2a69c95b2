"""Move matrices between Spark DataFrames and BlockMatrix, in Spark's executors.

``from_spark`` writes a DataFrame's numeric columns partition by partition; the rows
never pass through the driver. ``to_spark`` reads row blocks in executors. pyspark is
imported inside the functions only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from blocklin.errors import InputDtypeError, InputValueError
from blocklin.storage.blockmatrix import (
    BlockMatrix,
    _parse_chunks,
    _prepare_target,
    open_matrix,
    provenance_attrs,
)
from blocklin.storage.chunkio import write_block
from blocklin.storage.codecs import choose_codec
from blocklin.storage.meta import ArrayMeta, check_numeric_dtype, write_meta
from blocklin.storage.records import fingerprint_from_crcs
from blocklin.storage.stores import Store
from blocklin.types import BlockIndex

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession  # noqa: TID251

__all__ = ["from_spark", "label_path_for", "to_spark"]

# A piece of a row block: (offset of its first row inside the block, rows).
Piece = tuple[int, np.ndarray]


def label_path_for(path: str | os.PathLike[str]) -> str:
    """Default location of the label matrix written beside ``path`` (``A.zarr`` → ``A_label.zarr``)."""
    p = os.fspath(path).rstrip("/")
    return p[:-5] + "_label.zarr" if p.endswith(".zarr") else p + "_label"


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


def _row_pieces(pid: int, rows: Iterable[Any], offsets: list[int], counts: list[int],
                nrows: int, step: int, dtype: str) -> Iterator[tuple[int, Piece]]:
    """Cut one partition's rows at block boundaries: (block, (offset in block, rows))."""
    pos, end = offsets[pid], offsets[pid] + counts[pid]
    rows = iter(rows)  # consumed block by block with islice
    while pos < end:
        b = pos // step
        take = min((b + 1) * step, nrows, end) - pos
        arr = np.array(list(islice(rows, take)), dtype=dtype).reshape(take, -1)
        if arr.shape[0] != take:
            raise RuntimeError(f"partition {pid} changed between passes (expected {counts[pid]} "
                               "rows); cache a non-deterministic DataFrame before from_spark")
        yield b, (pos - b * step, arr)
        pos += take


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


def _write_partition(pid: int, rows: Iterable[Any], offsets: list[int], counts: list[int],
                     metas: list[ArrayMeta], splits: list[int],
                     dtype: str) -> Iterator[tuple[int, Any]]:
    """Write whole blocks at once; pass partial ones on to be joined with their neighbours."""
    nrows, step = metas[0].shape[0], metas[0].chunks[0]
    for b, (off, arr) in _row_pieces(pid, rows, offsets, counts, nrows, step, dtype):
        if off == 0 and arr.shape[0] == metas[0].block_shape((b, 0))[0]:
            yield b, ("crcs", _write_row_block(b, [(0, arr)], metas, splits)[1])
        else:
            yield b, ("piece", (off, arr))


def _finish_block(b: int, items: Iterable[tuple[str, Any]], metas: list[ArrayMeta],
                  splits: list[int]) -> tuple[int, list[int]]:
    items = list(items)
    for kind, value in items:
        if kind == "crcs":
            return b, list(value)
    return _write_row_block(b, [v for _, v in items], metas, splits)


def from_spark(df: DataFrame, columns: Any, path: str | os.PathLike[str],
               label: str | None = None, chunks: Any = None, *, dtype: Any = "float64",
               codec: str = "auto", label_path: str | os.PathLike[str] | None = None,
               overwrite: bool = False) -> BlockMatrix | tuple[BlockMatrix, BlockMatrix]:
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
        Where to write the label matrix (default ``label_path_for(path)``).
    overwrite : bool
        Replace existing arrays at ``path``/``label_path``.

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
    Two passes over ``df`` (row counts per partition, then the write), so ``df``
    must be deterministic; cache it if it is not. Each executor task holds one
    block; only row counts, checksums and, for the (at most two per partition)
    blocks straddling a partition boundary, their pieces move through Spark's
    shuffle. The driver holds per-partition counts and per-block checksums only.
    """
    np_dtype = check_numeric_dtype(np.dtype(dtype), what="from_spark dtype")
    cols = _check_columns(df, columns, label)
    selected = df.select(*cols, *([label] if label is not None else []))
    counts_by_pid = dict(selected.rdd.mapPartitionsWithIndex(
        lambda pid, it: [(pid, sum(1 for _ in it))]).collect())
    counts = [counts_by_pid.get(p, 0) for p in range(max(counts_by_pid, default=-1) + 1)]
    nrows = sum(counts)
    if nrows == 0:
        raise InputValueError("cannot store an empty matrix: the DataFrame has no rows")
    step = _parse_chunks(chunks, (nrows, len(cols)), np_dtype.itemsize)[0]
    sample = np.array(selected.take(min(step, 1000)), dtype=np_dtype)[:, : len(cols)]
    targets = [(path, len(cols))] + ([(label_path or label_path_for(path), 1)] if label else [])
    stores = [_prepare_target(p, overwrite) for p, _ in targets]
    metas = [ArrayMeta(url=s.url, shape=(nrows, k), chunks=(step, k), dtype=np_dtype.name,
                       codec=choose_codec(codec, sample if k > 1 else sample[:, :1]))
             for s, (_, k) in zip(stores, targets, strict=True)]
    splits = [0, len(cols), len(cols) + 1][: len(metas) + 1]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    nblocks = metas[0].grid[0]
    try:
        pieces = selected.rdd.mapPartitionsWithIndex(
            lambda pid, it: _write_partition(pid, it, offsets, counts, metas, splits,
                                             np_dtype.name))
        parts = max(1, min(nblocks, selected.rdd.context.defaultParallelism))
        crcs = dict(pieces.groupByKey(numPartitions=parts)
                    .map(lambda kv: _finish_block(kv[0], kv[1], metas, splits)).collect())
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
        attrs = provenance_attrs("from_spark", params={"columns": names},
                                 fingerprint=fingerprint_from_crcs(meta, block_crcs))
        meta = meta.with_attrs(attrs)
        write_meta(store, meta)
        out.append(BlockMatrix(store, meta))
    return (out[0], out[1]) if len(out) == 2 else out[0]


def _read_rows(i: int, url: str) -> Iterator[list[Any]]:
    A = open_matrix(url)
    block = np.hstack([A.block(i, j) for j in range(A.nblocks[1])])
    yield from block.tolist()


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
        Column names (default ``c0, c1, ...``).

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
    names = columns if columns is not None else [f"c{j}" for j in range(n)]
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
