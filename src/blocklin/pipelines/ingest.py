"""Ingest: .npy, CSV, Parquet and zarr sources into BlockMatrix arrays, streamed.

Sources are read in bounded pieces (``.npy`` memory-mapped row ranges, CSV record
batches, Parquet row groups through pyarrow, zarr row ranges) and written block by
block, so a source larger than memory ingests with about one row block of memory
(plus one source batch). Table sources keep their numeric columns (or those given),
and may split a label column into a second array.

Sparse sources become CSR row panels: a ``scipy.sparse.save_npz`` file, or (with
``sparse=True``) a Parquet table of the nonzeros as ``(row, col, value)`` records (the
coordinate layout of interaction logs and term counts): integer ``row`` and ``col``
(0-based), a numeric ``value``; duplicate coordinates are summed; the shape is the
schema metadata key ``shape`` (JSON ``[rows, cols]``) when present, else one past the
largest row and column (``ncols`` fixes the columns, as a refresh batch of an input
has). In-memory ``scipy.sparse`` matrices are stored by :func:`blocklin.from_array`.

On any failure nothing is left at the destination.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blocklin.config import chunk_rows_for, default_chunk_rows
from blocklin.errors import InputDtypeError, InputValueError, NonFiniteError
from blocklin.storage import ArrayMeta, BlockMatrix, Store, provenance_attrs, write_meta
from blocklin.storage.blockmatrix import prepare_target
from blocklin.storage.chunkio import read_block, write_block
from blocklin.storage.codecs import choose_codec
from blocklin.storage.dataset import LABEL_DIMS, label_path_for, write_coordinates
from blocklin.storage.finite import all_finite, first_nonfinite
from blocklin.storage.meta import ATTRS_NAMESPACE, check_numeric_dtype
from blocklin.storage.records import fingerprint_from_crcs

__all__ = ["BlockWriter", "IngestResult", "ingest", "read_source"]

_UNKNOWN_ROWS = 2**62


@dataclass(frozen=True)
class Batch:
    """Rows of a source: features and, for tables with a label column, labels."""

    x: np.ndarray
    y: np.ndarray | None = None


@dataclass(frozen=True)
class SourceInfo:
    format: str
    columns: tuple[str, ...]
    label: str | None
    batches: Iterator[Batch]
    #: Kind of each column as the source stores it (``bool``, ``int``, ``float``),
    #: recorded at ingest so a refresh batch whose column changed kind is refused.
    kinds: tuple[str, ...] = ()
    #: The columns were chosen (``--columns``), not every numeric column of the table.
    selected: bool = False
    #: Columns left out because they are not numeric (name -> source type).
    dropped: tuple[tuple[str, str], ...] = ()
    #: Columns left out on request (``--exclude``); a refresh batch may carry them.
    excluded: tuple[str, ...] = ()
    #: Rows of the source when known before reading it (arrays, Parquet); None for CSV.
    nrows: int | None = None


def column_kind(dtype: Any) -> str:
    """``bool``, ``int`` or ``float`` for a numpy or Arrow type; else the type's name."""
    try:
        import pyarrow as pa

        if isinstance(dtype, pa.DataType):
            if pa.types.is_boolean(dtype):
                return "bool"
            if pa.types.is_integer(dtype):
                return "int"
            if pa.types.is_floating(dtype):
                return "float"
            return str(dtype)
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    dt = np.dtype(dtype)
    kinds = {"b": "bool", "i": "int", "u": "int", "f": "float"}
    return kinds.get(dt.kind, str(dt.name))


def table_schema(src: str) -> dict[str, str]:
    """Column name -> kind of a CSV or Parquet source, from its schema alone.

    Raises
    ------
    InputValueError
        If ``src`` is not a readable CSV or Parquet file.
    """
    import pyarrow as pa

    fmt = detect_format(src)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(src).schema_arrow
        elif fmt == "csv":
            import pyarrow.csv as pcsv

            schema = pcsv.open_csv(src, read_options=pcsv.ReadOptions(block_size=1 << 22)).schema
        else:
            raise InputValueError(f"{src} is a {fmt} source; it has no named columns")
    except pa.ArrowInvalid as exc:
        raise InputValueError(f"cannot read {src} as {fmt}: {str(exc).splitlines()[0]}") from None
    return {f.name: column_kind(f.type) for f in schema}


def detect_format(src: str) -> str:
    s = src.rstrip("/").lower()
    if s.endswith(".npy"):
        return "npy"
    if s.endswith(".npz"):
        return "npz"
    if s.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if s.endswith((".parquet", ".pq")):
        return "parquet"
    if s.endswith(".zarr") or (os.path.isdir(src) and (Path(src) / "zarr.json").exists()) \
            or (os.path.isdir(src) and (Path(src) / ".zarray").exists()):
        return "zarr"
    raise InputValueError(f"cannot tell the format of {src}: expected .npy, .npz (scipy "
                          "sparse), .csv, .parquet or a zarr array")


def _numeric_columns(schema: Any, columns: Sequence[str] | None, label: str | None,
                     src: str, exclude: Sequence[str] = ()) -> list[str]:
    import pyarrow as pa

    names = list(schema.names)
    if label is not None and label not in names:
        raise InputValueError(f"{src} has no label column {label!r} (columns: {', '.join(names)})")
    for c in exclude:
        if c not in names:
            raise InputValueError(f"--exclude {c!r}: {src} has no such column (columns: "
                                  f"{', '.join(names)})")
        if c == label:
            raise InputValueError(f"--exclude {c!r} is the label column")

    def numeric(name: str) -> bool:
        t = schema.field(name).type
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))

    if columns:
        for c in columns:
            if c not in names:
                raise InputValueError(f"{src} has no column {c!r} (columns: {', '.join(names)})")
            if not numeric(c):
                raise InputDtypeError(f"column {c!r} of {src} is {schema.field(c).type}, not "
                                      "numeric")
        chosen = [c for c in columns if c != label and c not in exclude]
    else:
        chosen = [c for c in names if c != label and c not in exclude and numeric(c)]
    if label is not None and not numeric(label):
        raise InputDtypeError(f"label column {label!r} of {src} is {schema.field(label).type}, "
                              "not numeric")
    if not chosen:
        raise InputValueError(f"{src} has no numeric feature columns")
    return chosen


def _table_batches(batches: Iterator[Any], cols: list[str], label: str | None, src: str,
                   dtype: np.dtype[Any]) -> Iterator[Batch]:
    row = 0
    for rb in batches:
        parts = []
        for c in cols + ([label] if label else []):
            col = rb.column(rb.schema.get_field_index(c))
            if col.null_count:
                raise InputValueError(f"column {c!r} of {src} has missing values near row "
                                      f"{row}; fill or drop them first")
            parts.append(col.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
        if rb.num_rows:
            mat = np.column_stack(parts)
            yield Batch(mat[:, : len(cols)], mat[:, len(cols):] if label else None)
        row += rb.num_rows


def read_source(src: str, *, label: str | None = None, columns: Sequence[str] | None = None,
                dtype: str | None = None, batch_rows: int = 65536,
                exclude: Sequence[str] = ()) -> SourceInfo:
    """Open a source for streaming (see the module docstring).

    Raises
    ------
    FileNotFoundError, InputValueError, InputDtypeError
        Missing source, unknown format, bad columns, non-numeric data.
    """
    fmt = detect_format(src)
    if fmt != "zarr" and "://" not in src and not os.path.isfile(src):
        raise FileNotFoundError(f"no such file: {src}")
    if fmt in ("csv", "parquet"):
        return _open_table(src, fmt, label, columns, np.dtype(dtype or "float64"), batch_rows,
                           exclude)
    if label is not None or columns or exclude:
        raise InputValueError(f"--label, --columns and --exclude apply to CSV and Parquet "
                              f"sources, not {fmt}")
    arr = _open_array(src, fmt)
    dt = check_numeric_dtype(dtype or arr.dtype, what=src)
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputValueError(f"{src} holds an array of shape {arr.shape}; a matrix is 2-D and "
                              "non-empty")

    def gen() -> Iterator[Batch]:
        for start in range(0, arr.shape[0], batch_rows):
            yield Batch(np.asarray(arr[start: start + batch_rows], dtype=dt))

    return SourceInfo(fmt, tuple(f"c{i}" for i in range(arr.shape[1])), None, gen(),
                      (column_kind(arr.dtype),) * arr.shape[1], nrows=int(arr.shape[0]))


def _open_array(src: str, fmt: str) -> Any:
    if fmt == "npy":
        try:
            return np.load(src, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputDtypeError(f"{src} is not a numeric .npy array: {exc}") from None
    import zarr

    try:
        return zarr.open_array(src, mode="r")
    except Exception as exc:  # zarr raises several types for a missing or odd array
        raise FileNotFoundError(f"no zarr array at {src} ({type(exc).__name__})") from None


def _open_table(src: str, fmt: str, label: str | None, columns: Sequence[str] | None,
                dtype: np.dtype[Any], batch_rows: int, exclude: Sequence[str]) -> SourceInfo:
    import pyarrow as pa

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(src)
            it_schema = pf.schema_arrow
            cols = _numeric_columns(it_schema, columns, label, src, exclude)
            # iter_batches reads one row group at a time, never the whole file.
            it = pf.iter_batches(batch_size=batch_rows, columns=cols + ([label] if label else []))
            nrows: int | None = int(pf.metadata.num_rows)
        else:
            import pyarrow.csv as pcsv

            reader = pcsv.open_csv(src, read_options=pcsv.ReadOptions(block_size=1 << 22))
            it_schema = reader.schema
            cols = _numeric_columns(it_schema, columns, label, src, exclude)
            it = iter(reader)
            nrows = None  # known only once read
    except pa.ArrowInvalid as exc:
        raise InputValueError(f"cannot read {src} as {fmt}: {str(exc).splitlines()[0]}") from None
    kinds = tuple(column_kind(it_schema.field(c).type) for c in cols)
    used = {*cols, label, *exclude, *(columns or ())}
    dropped = tuple((f.name, str(f.type)) for f in it_schema if f.name not in used)
    return SourceInfo(fmt, tuple(cols), label, _table_batches(it, cols, label, src, dtype), kinds,
                      selected=bool(columns), dropped=dropped, excluded=tuple(exclude),
                      nrows=nrows)


class BlockWriter:
    """Append rows to a BlockMatrix block by block; ``close()`` writes metadata last.

    Starting from an existing array (``base``), the last partial block is read back
    and rewritten with the new rows appended; earlier blocks are untouched. Until
    ``close()`` replaces ``zarr.json``, readers see the old shape, whose rows are a
    prefix of every rewritten chunk, so they never see a half-appended matrix.
    """

    def __init__(self, store: Store, ncols: int, dtype: np.dtype[Any], chunk_rows: int,
                 codec: Any, base: BlockMatrix | None = None,
                 dims: tuple[str, ...] | None = None) -> None:
        self.store = store
        # An append keeps the dimension names the array was written with.
        dims = base.meta.dims if base is not None and dims is None else dims
        self.meta = ArrayMeta(url=store.url, shape=(_UNKNOWN_ROWS, ncols),
                              chunks=(chunk_rows, ncols), dtype=dtype.name, codec=codec,
                              dims=dims)
        self.rows = 0
        self.crcs: dict[tuple[int, ...], int] = {}
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.fresh = base is None
        if base is not None:
            self._start_from(base)

    def _start_from(self, base: BlockMatrix) -> None:
        full = base.shape[0] // self.meta.chunks[0]
        tail = base.shape[0] - full * self.meta.chunks[0]
        from blocklin.storage.records import done_blocks

        known = done_blocks(base.store)
        for i in range(full):
            crc = known.get((i, 0))
            if crc is None:
                tailb = base.store.get_tail(base.meta.chunk_key((i, 0)), 4)
                crc = int.from_bytes(tailb or b"\xff\xff\xff\xff", "little")
            self.crcs[(i, 0)] = crc
        self.rows = full * self.meta.chunks[0]
        if tail:
            self.append(read_block(base.store, base.meta, (full, 0)))

    def append(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.meta.shape[1]:
            raise InputValueError(f"rows have shape {rows.shape}; expected "
                                  f"(n, {self.meta.shape[1]})")
        self.buf.append(np.asarray(rows, dtype=self.meta.np_dtype))
        self.buffered += rows.shape[0]
        r = self.meta.chunks[0]
        while self.buffered >= r:
            self._flush(r)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buf) if len(self.buf) > 1 else self.buf[0]
        block, rest = data[:n], data[n:]
        self.buf = [rest] if rest.shape[0] else []
        self.buffered = rest.shape[0]
        index = (self.rows // self.meta.chunks[0], 0)
        meta = self.meta if n == self.meta.chunks[0] else _with_rows(self.meta, self.rows + n)
        self.crcs[index] = write_block(self.store, meta, index, block)
        self.rows += n

    def close(self, attrs: dict[str, Any],
              before_commit: Callable[[], None] | None = None) -> BlockMatrix:
        """Write the last partial block, then ``zarr.json`` (the commit point).

        ``before_commit`` runs between the two: an append checks there that the
        array's metadata is still the version it started from.
        """
        if self.fresh and self.rows == 0 and 0 < self.buffered < self.meta.chunks[0]:
            # The whole array fits in less than one block: store it as one chunk of its
            # own size, not padded up to a default block (64 MiB for a 442 x 2 table).
            from dataclasses import replace

            self.meta = replace(self.meta, chunks=(self.buffered, self.meta.shape[1]))
        if self.buffered:
            self._flush(self.buffered)
        if self.rows == 0:
            raise InputValueError("the source holds no rows")
        if before_commit is not None:
            before_commit()
        meta = _with_rows(self.meta, self.rows)
        fp = fingerprint_from_crcs(meta, self.crcs)
        doc = attrs.get(ATTRS_NAMESPACE, {})
        doc = {**doc, "fingerprint": fp}
        meta = meta.with_attrs({**attrs, ATTRS_NAMESPACE: doc})
        write_meta(self.store, meta)
        return BlockMatrix(self.store, meta)


def _with_rows(meta: ArrayMeta, rows: int) -> ArrayMeta:
    from dataclasses import replace

    return replace(meta, shape=(rows, meta.shape[1]))


@dataclass(frozen=True)
class IngestResult:
    matrix: BlockMatrix
    label: BlockMatrix | None
    format: str
    columns: tuple[str, ...]
    #: Table columns left out as not numeric: (name, source type).
    dropped: tuple[tuple[str, str], ...] = ()


def _target(path: str, overwrite: bool) -> Store:
    return prepare_target(path, overwrite, how="pass --overwrite")


def ingest(src: str, dest: str, *, label: str | None = None, label_dest: str | None = None,
           columns: Sequence[str] | None = None, chunk_rows: int | None = None,
           dtype: str | None = None, codec: str = "auto", overwrite: bool = False,
           allow_nonfinite: bool = False, exclude: Sequence[str] = (), sparse: bool = False,
           ncols: int | None = None) -> IngestResult:
    """Stream ``src`` into a BlockMatrix at ``dest`` (and labels at ``label_dest``).

    Parameters
    ----------
    sparse : bool
        ``src`` is a Parquet table of nonzeros ``(row, col, value)`` (see the module
        notes): stored as CSR row panels. ``.npz`` sources are sparse whatever this says.
    ncols : int, optional
        Sparse sources: the number of columns (default one past the largest ``col``).
    columns, exclude : sequence of str, optional
        Table sources: the feature columns to keep (default every numeric column but
        the label), and columns to leave out of them. Non-numeric columns are left out
        and named in the result's ``dropped``.
    allow_nonfinite : bool
        Store NaN and infinity (after the ``dtype`` cast) instead of refusing them, for
        data meant for tools that are defined on them; the array records it, and
        refresh batches for it are then accepted alike. blocklin's operators still
        raise :class:`~blocklin.errors.NonFiniteError` when they read such values.

    Raises
    ------
    NonFiniteError
        Without ``allow_nonfinite``, for a NaN or infinite feature or label: names the
        source, its row and column (and the column's name); nothing is left at
        ``dest`` or ``label_dest``.

    Notes
    -----
    One pass over the source. Memory: one source batch plus one row block. Each
    batch's values are checked as it is appended (one read, no temporary).
    """
    if chunk_rows is not None and chunk_rows <= 0:
        raise InputValueError(f"--chunk-rows must be positive; got {chunk_rows}")
    if sparse or ncols is not None:
        if detect_format(src) != "parquet" or label or columns or exclude:
            raise InputValueError("--sparse reads a Parquet table of (row, col, value) records; "
                                  "--label, --columns and --exclude do not apply (.npz files "
                                  "are sparse without it)")
        return _ingest_coo(src, dest, chunk_rows, dtype, overwrite, allow_nonfinite, ncols)
    if detect_format(src) == "npz":
        return _ingest_sparse(src, dest, chunk_rows, dtype, overwrite,
                              label or columns or exclude, allow_nonfinite)
    info = read_source(src, label=label, columns=columns, dtype=dtype, exclude=exclude)
    first = next(info.batches, None)
    if first is None:
        raise InputValueError(f"{src} holds no rows")
    if label is not None and label_dest is None:
        label_dest = _label_path(dest)
    store = _target(dest, overwrite)
    ystore = _target(label_dest, overwrite) if label_dest else None
    try:
        return _write_all(info, first, src, store, ystore, chunk_rows, codec, allow_nonfinite)
    except BaseException:
        store.delete_prefix("")
        if ystore is not None:
            ystore.delete_prefix("")
        raise


def _ingest_sparse(src: str, dest: str, chunk_rows: int | None, dtype: str | None,
                   overwrite: bool, table_opts: Any, allow_nonfinite: bool) -> IngestResult:
    """A ``scipy.sparse.save_npz`` file into sparse (CSR row panel) storage."""
    import scipy.sparse as sp


    if table_opts:
        raise InputValueError("--label and --columns apply to CSV and Parquet sources, not npz")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"no such file: {src}")
    try:
        x = sp.load_npz(src).tocsr()
    except (ValueError, OSError) as exc:
        raise InputValueError(f"{src} is not a scipy.sparse .npz file: {exc}") from None
    if dtype is not None:
        x = x.astype(check_numeric_dtype(dtype, what=src))
    _target(dest, overwrite)
    return _write_csr(x, src, dest, chunk_rows, allow_nonfinite, "npz", {})


def _write_csr(x: Any, src: Any, dest: Any, chunk_rows: int | None, allow_nonfinite: bool,
               kind: str, attrs: dict[str, Any]) -> IngestResult:
    """Store a scipy CSR matrix read from ``src`` as a blocklin CSR array with columns
    c0, c1..."""
    from blocklin.storage import from_array

    columns = [f"c{i}" for i in range(x.shape[1])]
    attrs = {"columns": columns, **attrs}
    if allow_nonfinite:
        attrs["allow_nonfinite"] = True
    try:
        m = from_array(x, dest, chunks=(chunk_rows, None), overwrite=True,
                       check_finite=not allow_nonfinite, attrs=attrs)
    except NonFiniteError as exc:
        raise NonFiniteError(src, None, exc.row, exc.col, detail=_ALLOW) from None
    return IngestResult(m, None, kind, tuple(columns))


#: Columns of the sparse (coordinate) Parquet layout.
COO_COLUMNS = ("row", "col", "value")


def _coo_shape(meta: Any, rmax: int, cmax: int, ncols: int | None, src: str) -> tuple[int, int]:
    """(rows, cols) from the schema's ``shape`` metadata, else the largest indices."""
    raw = (meta or {}).get(b"shape")
    rows, cols = rmax + 1, cmax + 1 if ncols is None else ncols
    if raw is not None:
        import json

        try:
            rows, cols = (int(v) for v in json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise InputValueError(f"{src}: schema metadata 'shape' must be [rows, cols]; got "
                                  f"{raw!r}") from exc
        if ncols is not None and cols != ncols:
            raise InputValueError(f"{src} has {cols} columns (its 'shape'); the input has "
                                  f"{ncols}")
    if rmax >= rows or cmax >= cols or rows <= 0 or cols <= 0:
        raise InputValueError(f"{src}: entries reach row {rmax} and column {cmax}, outside the "
                              f"shape ({rows}, {cols})")
    return rows, cols


def _ingest_coo(src: str, dest: str, chunk_rows: int | None, dtype: str | None,
                overwrite: bool, allow_nonfinite: bool, ncols: int | None) -> IngestResult:
    """A Parquet table of nonzeros ``(row, col, value)`` into CSR row panels.

    Memory: the source's three columns and the CSR matrix (O(nnz)); one pass.
    """
    import pyarrow.parquet as pq
    import scipy.sparse as sp


    if not os.path.isfile(src):
        raise FileNotFoundError(f"no such file: {src}")
    schema = pq.read_schema(src)
    missing = [c for c in COO_COLUMNS if c not in schema.names]
    if missing:
        raise InputValueError(f"{src} is not a sparse (row, col, value) table: no column "
                              f"{', '.join(map(repr, missing))}; it has {', '.join(schema.names)}")
    table = pq.read_table(src, columns=list(COO_COLUMNS))
    r, c = (table.column(n).to_numpy() for n in COO_COLUMNS[:2])
    v = table.column("value").to_numpy()
    for name, arr in (("row", r), ("col", c)):
        if arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
            raise InputValueError(f"{src}: column {name!r} must hold non-negative integers; "
                                  f"got {arr.dtype}")
    out_dtype = check_numeric_dtype(dtype or v.dtype, what=src)
    rmax = int(r.max()) if r.size else -1
    cmax = int(c.max()) if c.size else -1
    shape = _coo_shape(schema.metadata, rmax, cmax, ncols, src)
    x = sp.coo_matrix((v.astype(out_dtype), (r, c)), shape=shape).tocsr()
    _target(dest, overwrite)
    return _write_csr(x, src, dest, chunk_rows, allow_nonfinite, "parquet-coo",
                      {"source_layout": "coo"})


def _label_path(dest: str) -> str:
    return label_path_for(dest)  # the same name from_spark gives: X.zarr -> X.label.zarr


_ALLOW = "nothing was stored; pass allow_nonfinite=True (--allow-nonfinite) to store them anyway"


def _check_batch(batch: Batch, info: SourceInfo, src: str, row: int) -> None:
    """Refuse a batch holding NaN or infinity, naming the source row and column."""
    for part, names in ((batch.x, info.columns), (batch.y, (info.label,))):
        if part is None or all_finite(part):
            continue
        r, c = first_nonfinite(part) or (0, 0)
        name = names[c] if c < len(names) else None
        col = c if part is batch.x else None
        raise NonFiniteError(src, None, row + r, col,
                             detail=f"{'label ' if col is None else ''}column {name!r}; {_ALLOW}")


def _write_all(info: SourceInfo, first: Batch, src: str, store: Store, ystore: Store | None,
               chunk_rows: int | None, codec: str, allow_nonfinite: bool) -> IngestResult:
    x0 = first.x
    # Equal blocks when the row count is known (no edge block padded up to a full one);
    # else target-size blocks, and a table smaller than one is one block of its own rows.
    rows = chunk_rows or (chunk_rows_for(info.nrows, x0.shape[1], x0.dtype.itemsize)
                          if info.nrows else default_chunk_rows(x0.shape[1], x0.dtype.itemsize))
    writer = BlockWriter(store, x0.shape[1], x0.dtype, rows, choose_codec(codec, x0[:rows]))
    ywriter = None
    if ystore is not None and first.y is not None:
        ywriter = BlockWriter(ystore, 1, first.y.dtype, rows, choose_codec("none", first.y[:1]),
                              dims=LABEL_DIMS)
    batch: Batch | None = first
    row = 0
    while batch is not None:
        if not allow_nonfinite:
            _check_batch(batch, info, src, row)
        writer.append(batch.x)
        if ywriter is not None and batch.y is not None:
            ywriter.append(batch.y)
        row += batch.x.shape[0]
        batch = next(info.batches, None)
    extra: dict[str, Any] = {"allow_nonfinite": True} if allow_nonfinite else {}
    attrs = provenance_attrs("ingest", params={"source": os.path.abspath(src) if "://" not in src
                                               else src, "format": info.format,
                                               "label": info.label,
                                               "columns": list(info.columns) if info.selected
                                               else None,
                                               **({"exclude": list(info.excluded)}
                                                  if info.excluded else {})},
                             columns=list(info.columns), column_kinds=list(info.kinds), **extra)
    x = writer.close(attrs)
    y = ywriter.close(provenance_attrs("ingest", params={"source": src, "column": info.label},
                                       columns=[info.label])) \
        if ywriter is not None else None
    # xarray's view: the folder a zarr group, the names of a table's columns (and of its
    # label) as coordinates; an array source's columns have no names.
    coords: dict[str, list[str]] = {}
    if info.format in ("csv", "parquet"):
        coords["col"] = list(info.columns)
        if y is not None and info.label is not None:
            coords["label"] = [info.label]
    write_coordinates(x.url, coords)
    return IngestResult(x, y, info.format, info.columns, info.dropped)
