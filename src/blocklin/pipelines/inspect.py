"""``inspect`` and ``verify``: what a stored array is, and whether every chunk is intact."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

from blocklin.errors import CorruptChunkError, InputValueError
from blocklin.storage import BlockMatrix, open_matrix
from blocklin.storage.chunkio import read_block
from blocklin.storage.meta import METADATA_KEY
from blocklin.storage.records import fingerprint_from_crcs

__all__ = ["DEFAULT_MAX_BLOCKS", "inspect_array", "verify_array"]

#: Most blocks ``verify`` reads unless told otherwise: at a few milliseconds per block
#: this is hours of reading, and a grid beyond it is more likely a hostile or mistaken
#: ``zarr.json`` (1 x 1 chunks on a 10^6 x 10^6 shape) than an array to check.
DEFAULT_MAX_BLOCKS = 10_000_000


def _stored_bytes(m: BlockMatrix) -> int:
    if "://" not in m.url:
        return sum(p.stat().st_size for p in Path(m.url).rglob("*") if p.is_file())
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(m.url)
    return int(fs.du(root))


def _is_sparse(m: BlockMatrix) -> bool:
    return getattr(m.meta, "format", None) == "csr"


def _block_count(m: BlockMatrix, max_blocks: int) -> int:
    """The number of blocks, counted from the grid (never by listing them), within limit."""
    count = math.prod(m.meta.grid)
    if count > max_blocks:
        raise InputValueError(
            f"array {m.url} has {count} blocks (grid {' x '.join(map(str, m.meta.grid))} of "
            f"chunks {tuple(m.meta.chunks)}), over verify's limit of {max_blocks}; check its "
            "zarr.json, or raise the limit with --max-blocks (max_blocks=) to read them all")
    return count


def _indices(m: BlockMatrix) -> Iterator[tuple[int, ...]]:
    """Block indices in C order, one at a time."""
    return product(*(range(g) for g in m.meta.grid))


def _check_sparse(m: BlockMatrix, count: int) -> dict[str, Any]:
    from blocklin.storage.sparse import read_csr_block

    corrupt = []
    for index in _indices(m):
        try:
            read_csr_block(m.store, m.meta, index)
        except CorruptChunkError as exc:
            corrupt.append({"chunk": f"b/{index[0]}", "reason": str(exc).split(": ", 1)[-1]})
    return {"url": m.url, "ok": not corrupt, "checked": count,
            "corrupt": corrupt, "missing": [], "fingerprint_ok": None}


def inspect_array(path: str) -> dict[str, Any]:
    """Shape, blocks, codecs, stored size and provenance of a stored array.

    Raises
    ------
    FileNotFoundError
        If no zarr array is at ``path``.
    """
    m = open_matrix(path, allow_incomplete=True)
    raw = m.store.get(METADATA_KEY)
    codecs = [c.get("name") for c in (json.loads(raw).get("codecs", []) if raw else [])]
    if _is_sparse(m):
        codecs = ["csr (data, indices, indptr)", "bytes", "crc32c"]
    stored = _stored_bytes(m)
    return {
        "url": m.url,
        "shape": list(m.shape),
        "dtype": str(m.dtype),
        "chunks": list(m.chunks),
        "blocks": list(m.nblocks),
        "nblocks": m.nblocks[0] * m.nblocks[1],
        "format": "csr" if _is_sparse(m) else "dense",
        "codecs": codecs,
        "nbytes": m.nbytes,
        "stored_bytes": stored,
        "ratio": round(m.nbytes / stored, 3) if stored else None,
        "missing_chunks": m.meta.missing_chunks,
        "read_path": m.meta.read_path,
        "provenance": m.provenance,
    }


def verify_array(path: str, max_blocks: int = DEFAULT_MAX_BLOCKS) -> dict[str, Any]:
    """Read every chunk and check its checksum; compare the recorded fingerprint.

    Parameters
    ----------
    path : str
        Zarr array path or URL.
    max_blocks : int
        Refuse an array of more blocks than this before reading any (the count comes
        from the metadata's shape and chunk shape).

    Returns
    -------
    dict
        ``ok``, ``checked``, ``corrupt`` (chunk keys and reasons), ``missing`` chunk keys
        and ``fingerprint_ok`` (None when the array records no fingerprint).

    Raises
    ------
    InputValueError
        If the array has more than ``max_blocks`` blocks.

    Notes
    -----
    One pass over the array, one chunk in memory at a time; block indices are
    generated as they are read, never listed.
    """
    m = open_matrix(path, allow_incomplete=True)
    count = _block_count(m, max_blocks)
    if _is_sparse(m):
        return _check_sparse(m, count)
    corrupt: list[dict[str, str]] = []
    missing: list[str] = []
    crcs: dict[tuple[int, ...], int] = {}
    codec = m.meta.codec
    for index in _indices(m):
        key = m.meta.chunk_key(index)
        if codec is not None and not m.store.exists(key):
            missing.append(key)
            continue
        try:
            read_block(m.store, m.meta, index)
        except CorruptChunkError as exc:
            corrupt.append({"chunk": key, "reason": str(exc).split(": ", 1)[-1]})
            continue
        if codec is not None:
            tail = m.store.get_tail(key, 4)
            crcs[index] = int.from_bytes(tail or b"", "little")
    recorded = m.provenance.get("fingerprint")
    fp_ok = None
    if codec is not None and isinstance(recorded, str) and not corrupt and not missing:
        fp_ok = fingerprint_from_crcs(m.meta, crcs) == recorded
    return {"url": m.url, "ok": not corrupt and not missing and fp_ok is not False,
            "checked": count, "corrupt": corrupt, "missing": missing,
            "fingerprint_ok": fp_ok}
