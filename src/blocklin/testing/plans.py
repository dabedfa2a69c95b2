"""Arrays for planning at scale: metadata without chunks.

A plan needs an array's metadata only (shape, chunks, dtype, codec, fingerprint);
its chunks are read when tasks run. :func:`metadata_only_matrix` writes the
``zarr.json`` blocklin's own writer would write for a matrix of any size, and no
chunk, so ``explain``, the memory check and the refusal of a plan for an 80 TB
matrix can be tried on a laptop.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from blocklin.storage.blockmatrix import BlockMatrix, open_matrix, provenance_attrs
from blocklin.storage.codecs import ChunkCodec
from blocklin.storage.meta import ArrayMeta, write_meta
from blocklin.storage.stores import store_for

__all__ = ["metadata_only_matrix"]


def metadata_only_matrix(path: str | os.PathLike[str], shape: tuple[int, int],
                         chunks: tuple[int, int], dtype: Any = "float64") -> BlockMatrix:
    """Write the metadata of a blocklin matrix, with no chunk, and open it.

    The fingerprint recorded is a hash of the layout (there are no chunks to hash),
    so opening the array lists and reads no chunk. Computing anything from it fails
    on the first block read (``MissingChunkError``): it is for planning only.

    Parameters
    ----------
    path : str or path-like
        Where to write ``zarr.json`` (a local directory or fsspec URL).
    shape, chunks : tuple of int
        Rows and columns of the matrix and of its blocks.
    dtype : dtype-like
        Element type (default float64).
    """
    dt = np.dtype(dtype)
    store = store_for(path)
    layout = json.dumps([list(shape), list(chunks), dt.name, "metadata-only"]).encode()
    fp = hashlib.sha256(layout).hexdigest()[:32]
    meta = ArrayMeta(url=store.url, shape=tuple(shape), chunks=tuple(chunks), dtype=dt.name,
                     codec=ChunkCodec())
    write_meta(store, meta.with_attrs(provenance_attrs(
        "from_array", params={"codec": meta.codec.compressor if meta.codec else None},
        fingerprint=fp)))
    return open_matrix(path)
