"""zarr-backed storage: BlockMatrix, stores, chunk codecs, completion records."""

from blocklin.storage.blockmatrix import (
    BlockMatrix,
    Transposed,
    from_array,
    open_matrix,
    provenance_attrs,
)
from blocklin.storage.chunkio import BufferPool, read_block, write_block
from blocklin.storage.codecs import ChunkCodec
from blocklin.storage.meta import ArrayMeta, read_meta, write_meta
from blocklin.storage.records import compute_fingerprint, done_blocks, mark_done
from blocklin.storage.stores import Store, register_storage_options, store_for

__all__ = [
    "ArrayMeta",
    "BlockMatrix",
    "BufferPool",
    "ChunkCodec",
    "Store",
    "Transposed",
    "compute_fingerprint",
    "done_blocks",
    "from_array",
    "mark_done",
    "open_matrix",
    "provenance_attrs",
    "read_block",
    "read_meta",
    "register_storage_options",
    "store_for",
    "write_block",
    "write_meta",
]
