"""Completion records and content fingerprints.

A block is recorded complete (``.blocklin/done/<i>.<j>``) only after its chunk is
fully written. The record binds the block to what it was computed from: the stored
chunk's crc32c, the content name of the stage that wrote it (operator, parameters,
input names, layout) and a digest of the identities of the input blocks the task
read (their checksums, see :func:`blocklin.storage.chunkio.block_ident`). Resume
trusts a record only after checking all three against storage (see
:func:`blocklin.executors.base.prepare`); bare chunks are never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from blocklin.storage.meta import ArrayMeta
from blocklin.storage.stores import Store
from blocklin.types import BlockIndex

__all__ = ["BlockRecord", "clear_records", "compute_fingerprint", "done_blocks",
           "fingerprint_from_crcs", "input_digest", "mark_done", "read_records"]

_DONE = ".blocklin/done"
#: Threads reading records and checksum trailers (small reads; object stores need many
#: in flight, local files are served from the page cache either way).
_IO_THREADS = 16


@dataclass(frozen=True)
class BlockRecord:
    """What a completion record says about one written block."""

    crc: int
    stage: str
    inputs: str

    def encode(self) -> bytes:
        return json.dumps({"crc": f"{self.crc:08x}", "stage": self.stage,
                           "inputs": self.inputs}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> BlockRecord | None:
        """The record in ``raw``, or None if it is unreadable (then the block is not done)."""
        try:
            doc = json.loads(raw)
            return cls(int(doc["crc"], 16), str(doc["stage"]), str(doc["inputs"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def input_digest(idents: Sequence[str]) -> str:
    """The digest of the input-block identities a task read, in its read order."""
    return hashlib.sha256("\0".join(idents).encode()).hexdigest()[:32]


def _record_key(index: BlockIndex) -> str:
    return f"{_DONE}/" + ".".join(str(i) for i in index)


def mark_done(store: Store, index: BlockIndex, record: BlockRecord) -> None:
    """Record block ``index`` as fully written (call only after its chunk is)."""
    store.put(_record_key(index), record.encode())


def read_records(store: Store) -> dict[BlockIndex, BlockRecord]:
    """The readable completion records of an array: one listing, one read per record.

    Unreadable records (garbage, an old format, a partial write) are left out: their
    blocks count as not done.
    """
    keys: list[tuple[BlockIndex, str]] = []
    for key in store.list(_DONE):
        name = key.rsplit("/", 1)[-1]
        try:
            keys.append((tuple(int(p) for p in name.split(".")), key))
        except ValueError:
            continue
    out: dict[BlockIndex, BlockRecord] = {}
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        for (index, _), raw in zip(keys, pool.map(lambda k: store.get(k[1]), keys), strict=True):
            rec = BlockRecord.decode(raw) if raw else None
            if rec is not None:
                out[index] = rec
    return out


def done_blocks(store: Store) -> dict[BlockIndex, int]:
    """Blocks with a readable completion record, with their recorded checksums."""
    return {index: rec.crc for index, rec in read_records(store).items()}


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

    Arrays with other codecs (foreign arrays) are fingerprinted from their location,
    their stored metadata and their chunk listing: two foreign arrays of one layout
    are different sources (their chunks carry no checksum to tell them apart), and
    a chunk rewritten in place is caught by its block identity (size and mtime or
    ETag, :func:`blocklin.storage.chunkio.block_ident`).
    """
    if meta.codec is None:
        from blocklin.storage.meta import metadata_bytes

        h = hashlib.sha256(json.dumps(meta.to_json(), sort_keys=True, default=str).encode())
        h.update(b"\0" + meta.url.encode() + b"\0" + (metadata_bytes(store) or b""))
        for key in store.list("") if not indices else []:
            h.update(key.encode())
        return h.hexdigest()[:32]
    crcs = {}
    for index in meta.indices():
        tail = store.get_tail(meta.chunk_key(index), 4)
        if tail is not None and len(tail) == 4:
            crcs[index] = int.from_bytes(tail, "little")
    return fingerprint_from_crcs(meta, crcs)
