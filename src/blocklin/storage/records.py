"""Completion records and content fingerprints.

A block is recorded complete (``.blocklin/done/<i>.<j>``, holding the chunk's crc32c)
only after its chunk is fully written; resume trusts records, never bare chunks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from blocklin.storage.meta import ArrayMeta
from blocklin.storage.stores import Store
from blocklin.types import BlockIndex

__all__ = ["clear_records", "compute_fingerprint", "done_blocks", "fingerprint_from_crcs",
           "mark_done"]

_DONE = ".blocklin/done"


def _record_key(index: BlockIndex) -> str:
    return f"{_DONE}/" + ".".join(str(i) for i in index)


def mark_done(store: Store, index: BlockIndex, crc: int) -> None:
    """Record block ``index`` as fully written with checksum ``crc``."""
    store.put(_record_key(index), f"{crc:08x}".encode())


def done_blocks(store: Store) -> dict[BlockIndex, int]:
    """Blocks recorded complete, with their checksums (one listing of the store)."""
    out: dict[BlockIndex, int] = {}
    for key in store.list(_DONE):
        name = key.rsplit("/", 1)[-1]
        try:
            index = tuple(int(p) for p in name.split("."))
        except ValueError:
            continue
        raw = store.get(key)
        if raw:
            out[index] = int(raw.decode(), 16)
    return out


def clear_records(store: Store) -> None:
    store.delete_prefix(_DONE)


def fingerprint_from_crcs(meta: ArrayMeta, crcs: Mapping[BlockIndex, int]) -> str:
    """Content fingerprint: a hash of the layout and every chunk's checksum, in C order."""
    h = hashlib.sha256()
    h.update(json.dumps([list(meta.shape), list(meta.chunks), meta.dtype]).encode())
    for index in meta.indices():
        h.update(f"{crcs.get(index, -1)};".encode())
    return h.hexdigest()[:32]


def compute_fingerprint(store: Store, meta: ArrayMeta, indices: Iterable[BlockIndex] = ()) -> str:
    """Fingerprint an array from its chunks' checksum trailers (4 bytes read per chunk).

    Arrays with other codecs are fingerprinted from their metadata and chunk listing.
    """
    if meta.codec is None:
        h = hashlib.sha256(json.dumps(meta.to_json(), sort_keys=True, default=str).encode())
        for key in store.list("") if not indices else []:
            h.update(key.encode())
        return h.hexdigest()[:32]
    crcs = {}
    for index in meta.indices():
        tail = store.get_tail(meta.chunk_key(index), 4)
        if tail is not None and len(tail) == 4:
            crcs[index] = int.from_bytes(tail, "little")
    return fingerprint_from_crcs(meta, crcs)
