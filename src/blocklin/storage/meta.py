"""Array metadata: the block grid, zarr v3 ``zarr.json`` reading and writing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any

import numpy as np

from blocklin.errors import InputDtypeError, InputValueError, MetadataError
from blocklin.storage.codecs import ChunkCodec, codec_from_metadata
from blocklin.storage.foreign import ForeignLayout, block_shape_for, describe_v2, describe_v3
from blocklin.storage.stores import Store
from blocklin.types import BlockIndex, Shape

__all__ = ["MATRIX_DIMS", "MAX_METADATA_BYTES", "ArrayMeta", "check_numeric_dtype",
           "default_dims", "ensure_group",
           "metadata_bytes", "parse_fill_value", "parse_metadata_json", "parse_shape", "read_meta",
           "read_meta_v2", "write_meta", "written_by_blocklin"]

METADATA_KEY = "zarr.json"
ATTRS_NAMESPACE = "blocklin"
_SUPPORTED_KINDS = "fiub"


def check_numeric_dtype(dtype: Any, what: str = "matrix") -> np.dtype[Any]:
    """Return ``dtype`` as a numpy dtype if it is a real numeric type, else raise.

    Raises
    ------
    InputDtypeError
        For complex, object, string, datetime or structured dtypes.
    """
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError:
        raise InputDtypeError(f"{what} has dtype {dtype!r}, which is not a numpy dtype") from None
    if dt.kind not in _SUPPORTED_KINDS or dt.fields is not None:
        raise InputDtypeError(
            f"{what} must hold real numbers (float, int, uint or bool); got dtype {dt}. "
            "Convert it first, e.g. x.astype('float64')"
        )
    return dt


@dataclass(frozen=True)
class ArrayMeta:
    """Where an array lives and how its blocks are laid out and encoded.

    ``codec`` is None for arrays whose codecs blocklin does not decode itself; those
    are read through zarr's generic path.

    ``owned`` says blocklin wrote the array, and so every one of its chunks: a missing
    chunk is then an error (:class:`~blocklin.errors.MissingChunkError`). Arrays
    written by other tools follow zarr's rule instead: a missing chunk reads as
    ``fill_value``.
    """

    url: str
    shape: Shape
    chunks: Shape
    dtype: str
    codec: ChunkCodec | None = field(default_factory=ChunkCodec)
    #: Block layout: "dense" chunks, or "csr" row blocks (see ``storage/sparse.py``).
    format: str = "dense"
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    owned: bool = True
    fill_value: Any = field(default=0, compare=False)
    #: How a foreign array (``codec`` None) is stored: its chunk grid, keys and chunk
    #: pipeline (``storage/foreign.py``). ``chunks`` is then blocklin's block shape, a
    #: whole multiple of the stored chunk (or inner chunk) shape.
    foreign: ForeignLayout | None = None
    #: zarr v3 ``dimension_names``: what xarray calls the axes (None: the defaults of
    #: :func:`default_dims`, ``("row", "col")`` for a matrix).
    dims: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The axes' names written to ``zarr.json`` (xarray's dimensions)."""
        return self.dims if self.dims is not None else default_dims(len(self.shape))

    @property
    def read_path(self) -> str:
        """Which reader decodes the chunks, in words (``inspect`` shows it)."""
        if self.format != "dense":
            return "blocklin (csr blocks)"
        if self.codec is not None:
            return "blocklin codecs (bytes, compressor, crc32c)"
        if self.foreign is not None:
            return self.foreign.read_path
        return "zarr-python (fallback: irregular chunk grid or chunk keys)"

    @property
    def missing_chunks(self) -> str:
        """What reading a chunk absent from storage does, in words (``inspect`` shows it)."""
        if self.owned:
            return "error (blocklin wrote every chunk of this array)"
        return f"read as the fill value {self.fill_value!r} (zarr's rule; blocklin did not write it)"

    @property
    def np_dtype(self) -> np.dtype[Any]:
        dt: np.dtype[Any] = np.dtype(self.dtype)
        return dt

    @property
    def grid(self) -> Shape:
        """Number of blocks along each dimension."""
        return tuple(-(-s // c) if s else 0 for s, c in zip(self.shape, self.chunks, strict=True))

    def block_slices(self, index: BlockIndex) -> tuple[slice, ...]:
        """The region of the array covered by block ``index``."""
        self.check_index(index)
        return tuple(slice(i * c, min((i + 1) * c, s))
                     for i, c, s in zip(index, self.chunks, self.shape, strict=True))

    def block_shape(self, index: BlockIndex) -> Shape:
        return tuple(sl.stop - sl.start for sl in self.block_slices(index))

    def check_index(self, index: BlockIndex) -> None:
        grid = self.grid
        if len(index) != len(grid) or any(not 0 <= i < g for i, g in zip(index, grid, strict=True)):
            raise InputValueError(f"block index {index} is outside the block grid {grid} "
                                  f"of array {self.url}")

    def indices(self) -> list[BlockIndex]:
        """All block indices in C order."""
        return list(product(*(range(g) for g in self.grid)))

    @property
    def chunk_nbytes(self) -> int:
        return int(np.prod(self.chunks)) * self.np_dtype.itemsize

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.np_dtype.itemsize

    @staticmethod
    def chunk_key(index: BlockIndex) -> str:
        return "c/" + "/".join(str(i) for i in index)

    def with_attrs(self, attrs: dict[str, Any]) -> ArrayMeta:
        return replace(self, attrs=attrs)

    def to_json(self) -> dict[str, Any]:
        """zarr v3 array metadata."""
        dt = self.np_dtype
        fill: Any = False if dt.kind == "b" else (0.0 if dt.kind == "f" else 0)
        codec = self.codec or ChunkCodec()
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(self.shape),
            "data_type": dt.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(self.chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill,
            "codecs": codec.zarr_codecs(dt.itemsize),
            "attributes": self.attrs,
            "storage_transformers": [],
            # xarray names a variable's dimensions from these (it refuses a zarr v3
            # array without them).
            "dimension_names": list(self.dimension_names),
        }


#: The dimensions of a matrix blocklin writes: rows, and the columns (the features).
MATRIX_DIMS = ("row", "col")


def default_dims(ndim: int) -> tuple[str, ...]:
    """``("row", "col")`` for a matrix, else xarray's own defaults ``dim_0, dim_1, ...``."""
    return MATRIX_DIMS if ndim == 2 else tuple(f"dim_{i}" for i in range(ndim))


def ensure_group(store: Store) -> None:
    """Make ``store`` a zarr v3 group (the work directory of runs), if it is not one yet."""
    if not store.exists(METADATA_KEY):
        store.put(METADATA_KEY, json.dumps({"zarr_format": 3, "node_type": "group",
                                            "attributes": {}}).encode())


def write_meta(store: Store, meta: ArrayMeta) -> None:
    """Write ``zarr.json``; called last, so an array without it is not (yet) a result."""
    store.put(METADATA_KEY, json.dumps(meta.to_json(), indent=1, sort_keys=True).encode())


#: Largest ``zarr.json`` read (attributes include refresh batch records, a few kB each).
MAX_METADATA_BYTES = 64 * 2**20
#: More dimensions than any zarr array blocklin reads has; bounds what is parsed.
_MAX_NDIM = 32


def read_meta(store: Store) -> ArrayMeta | None:
    """Read an array's metadata, or None if ``store`` holds no zarr v3 array.

    Every field blocklin uses is validated before anything is derived from it.

    Raises
    ------
    MetadataError
        If ``zarr.json`` is too large, not JSON, or a field is malformed (named).
    """
    raw = store.get(METADATA_KEY)
    if raw is None:
        return None
    doc = parse_metadata_json(raw, store.url)
    if doc.get("node_type") != "array":
        return None
    grid = _field(doc, "chunk_grid", dict, store.url, {})
    conf = _field(grid, "configuration", dict, store.url, {}, "chunk_grid.")
    shape = parse_shape(doc.get("shape"), store.url, "shape", allow_zero=True)
    chunks_raw = conf.get("chunk_shape")
    chunks = shape if chunks_raw is None else parse_shape(
        chunks_raw, store.url, "chunk_grid.configuration.chunk_shape", allow_zero=False)
    if len(chunks) != len(shape):
        raise MetadataError(store.url, "chunk_grid.configuration.chunk_shape",
                            f"has {len(chunks)} dimensions for a shape of {len(shape)}")
    codecs = _field(doc, "codecs", list, store.url, [])
    if not all(isinstance(c, dict) for c in codecs):
        raise MetadataError(store.url, "codecs", "must be a list of objects")
    codec = codec_from_metadata(codecs)
    enc = _field(doc, "chunk_key_encoding", dict, store.url, {})
    enc_conf = _field(enc, "configuration", dict, store.url, {}, "chunk_key_encoding.")
    if (grid.get("name") != "regular" or enc.get("name") != "default"
            or enc_conf.get("separator", "/") != "/"):
        codec = None
    dtype = doc.get("data_type")
    if not isinstance(dtype, str):
        raise InputDtypeError(f"array {store.url} has a data type blocklin cannot read: {dtype!r}")
    attrs = _field(doc, "attributes", dict, store.url, {})
    try:
        fill = parse_fill_value(doc.get("fill_value"), dtype)
    except (TypeError, ValueError, OverflowError):
        raise MetadataError(store.url, "fill_value",
                            f"{doc.get('fill_value')!r} is not a value of {dtype}") from None
    foreign = None
    if codec is None:
        foreign = describe_v3(doc, shape, chunks, _np_dtype(dtype, store.url))
        chunks = _block_chunks(foreign, shape, chunks, dtype)
    return ArrayMeta(url=store.url, shape=shape, chunks=chunks, dtype=dtype, codec=codec,
                     attrs=attrs, owned=written_by_blocklin(attrs), fill_value=fill,
                     foreign=foreign, dims=_dimension_names(doc, len(shape)))


def _dimension_names(doc: dict[str, Any], ndim: int) -> tuple[str, ...] | None:
    """The stored ``dimension_names`` when every axis has a name (kept when blocklin
    rewrites the metadata, e.g. on append); else None, the defaults."""
    names = doc.get("dimension_names")
    if isinstance(names, list) and len(names) == ndim \
            and all(isinstance(n, str) and 0 < len(n) <= 256 for n in names):
        return tuple(names)
    return None


#: zarr v2 metadata keys (array, attributes).
V2_METADATA_KEY = ".zarray"
V2_ATTRS_KEY = ".zattrs"


def read_meta_v2(store: Store) -> ArrayMeta | None:
    """Read a zarr v2 array's metadata (``.zarray``, ``.zattrs``); None if there is none.

    Raises
    ------
    MetadataError
        If a field is malformed (named).
    """
    raw = store.get(V2_METADATA_KEY)
    if raw is None:
        return None
    doc = parse_metadata_json(raw, store.url)
    shape = parse_shape(doc.get("shape"), store.url, ".zarray shape", allow_zero=True)
    chunks = parse_shape(doc.get("chunks"), store.url, ".zarray chunks", allow_zero=False)
    if len(chunks) != len(shape):
        raise MetadataError(store.url, ".zarray chunks",
                            f"has {len(chunks)} dimensions for a shape of {len(shape)}")
    stored = _np_dtype(doc.get("dtype"), store.url)
    dtype = stored.newbyteorder("=").name
    raw_attrs = store.get(V2_ATTRS_KEY)
    attrs = parse_metadata_json(raw_attrs, store.url) if raw_attrs else {}
    try:
        fill = parse_fill_value(doc.get("fill_value"), dtype)
    except (TypeError, ValueError, OverflowError):
        raise MetadataError(store.url, ".zarray fill_value",
                            f"{doc.get('fill_value')!r} is not a value of {dtype}") from None
    foreign = describe_v2(doc, chunks, stored)
    return ArrayMeta(url=store.url, shape=shape, chunks=_block_chunks(foreign, shape, chunks, dtype),
                     dtype=dtype, codec=None, attrs=attrs, owned=written_by_blocklin(attrs),
                     fill_value=fill, foreign=foreign)


def metadata_bytes(store: Store) -> bytes | None:
    """The stored metadata document of an array (``zarr.json``, else v2's ``.zarray``
    and ``.zattrs``), as content identity for caches."""
    raw = store.get(METADATA_KEY)
    if raw is not None:
        return raw
    v2 = store.get(V2_METADATA_KEY)
    return None if v2 is None else v2 + b"\0" + (store.get(V2_ATTRS_KEY) or b"")


def _np_dtype(value: Any, url: str) -> np.dtype[Any]:
    try:
        dt: np.dtype[Any] = np.dtype(value)
    except (TypeError, ValueError):
        raise InputDtypeError(f"array {url} has a data type blocklin cannot read: "
                              f"{value!r}") from None
    return dt


def _block_chunks(foreign: ForeignLayout | None, shape: Shape, chunks: Shape, dtype: str) -> Shape:
    """blocklin's block shape for a foreign array (see :func:`block_shape_for`)."""
    from blocklin.config import default_chunk_bytes

    if foreign is None:
        return chunks
    return block_shape_for(foreign, shape, np.dtype(dtype).itemsize, default_chunk_bytes())


def parse_metadata_json(raw: bytes, url: str) -> dict[str, Any]:
    """``zarr.json`` bytes as a dict, refusing oversized or malformed documents."""
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(url, "zarr.json", f"is {len(raw)} bytes, over the "
                            f"{MAX_METADATA_BYTES} bytes blocklin reads")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MetadataError(url, "zarr.json", f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise MetadataError(url, "zarr.json", "must hold a JSON object")
    return doc


def parse_shape(value: Any, url: str, name: str, allow_zero: bool) -> Shape:
    """A shape or chunk shape from metadata: a short list of non-negative (or positive) ints."""
    least = 0 if allow_zero else 1
    if (not isinstance(value, list) or not 0 < len(value) <= _MAX_NDIM
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least
                       for v in value)):
        what = "non-negative" if allow_zero else "positive"
        raise MetadataError(url, name, f"must be a list of 1 to {_MAX_NDIM} {what} integers; "
                                       f"got {value!r}"[:300])
    return tuple(value)


def _field(doc: dict[str, Any], key: str, kind: type, url: str, default: Any,
           prefix: str = "") -> Any:
    value = doc.get(key, default)
    if not isinstance(value, kind):
        raise MetadataError(url, prefix + key, f"must be a JSON {kind.__name__}; "
                                                f"got {type(value).__name__}")
    return value


def written_by_blocklin(attrs: Any) -> bool:
    """Whether array attributes carry blocklin's provenance (so blocklin wrote every chunk)."""
    return isinstance(attrs, dict) and isinstance(attrs.get(ATTRS_NAMESPACE), dict)


def parse_fill_value(value: Any, dtype: str) -> Any:
    """zarr's JSON fill value as a number of ``dtype`` (``"NaN"``, ``"Infinity"`` and
    hex bit patterns included); None reads as 0, as zarr v2 does without one."""
    dt = np.dtype(dtype)
    if value is None:
        return dt.type(0)
    if isinstance(value, str):
        if value.startswith("0x"):
            raw = int(value, 16).to_bytes(dt.itemsize, "big")
            return np.frombuffer(raw, dtype=dt.newbyteorder(">"))[0].astype(dt)
        value = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    return dt.type(value)
