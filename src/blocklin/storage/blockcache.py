"""A bounded per-process cache of decoded blocks, for solvers that pass over data often.

Iterative solvers (L-BFGS, OWL-QN, Newton, preconditioned CG) read every block of X
once per pass; a compute run with ``cache_bytes`` keeps the decoded blocks of its
source arrays in the memory of the process that read them, so the next pass on that
process takes them from memory instead of re-reading and re-decoding the chunk. There
is one cache per process, module-level, shared by the threads of a dask worker (or of
the embedded threaded scheduler) and kept between computes: a distributed worker or a
reused Spark Python worker serves the next pass from it; a fresh process simply misses.

Keys and content
----------------
A block is keyed by (array URL, content token, block index, dtype). The token
(:func:`content_token`) hashes the array's fingerprint as the plan knows it together
with the ``zarr.json`` stored at the URL when the compute was prepared, so an array
overwritten at the same path (new metadata, new fingerprint) never matches blocks of
its old content, even through a handle opened before the overwrite. Arrays whose
fingerprint does not witness chunk contents (those read through zarr's generic codec
path) are never cached.

Cached arrays are read-only (``flags.writeable = False``, for CSR blocks each
component): a kernel that tried to write into its input in place would raise instead
of corrupting the next pass. A missed block is copied out of the task's pooled read
buffer before it is kept, since those buffers are reused by the thread's next task.

Budget and eviction
-------------------
Each compute states its budget (bytes per process, already fitted into the process's
memory bound by the executor). Blocks of earlier computes are evicted least recently
used first; blocks used by the running compute are not evicted to admit another block
of the same compute, so a cyclic scan over more data than fits keeps a fixed resident
set and re-reads only the rest (plain LRU would re-read everything). A compute with a
smaller budget, or none, trims the cache to it as its first task in a process starts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BlockCache", "CacheKey", "block_nbytes", "content_token", "process_cache"]

#: (array URL, content token, block index, dtype)
CacheKey = tuple[str, str, tuple[int, ...], str]


@dataclass
class _Entry:
    value: Any
    nbytes: int
    run: str
    ident: str = ""


def content_token(fingerprint: str, metadata: bytes | None) -> str:
    """Identity of an array's content: its fingerprint and its current ``zarr.json``."""
    h = hashlib.sha256(fingerprint.encode())
    h.update(b"\0" if metadata is None else metadata)
    return h.hexdigest()[:32]


def block_nbytes(block: Any) -> int:
    """Bytes a decoded block holds (dense array or CSR components)."""
    if isinstance(block, np.ndarray):
        return int(block.nbytes)
    return int(sum(getattr(block, c).nbytes for c in ("data", "indices", "indptr")))


def _frozen(block: Any) -> Any:
    """A read-only copy the cache may keep (dense) or the block made read-only (CSR)."""
    if isinstance(block, np.ndarray):
        out = np.array(block, order="C", copy=True)
        out.flags.writeable = False
        return out
    # CSR blocks are read into fresh arrays (never pooled): freezing them is enough.
    for c in ("data", "indices", "indptr"):
        getattr(block, c).flags.writeable = False
    return block


class BlockCache:
    """A thread-safe, byte-bounded map of decoded blocks (see the module notes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of blocks held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def trim(self, budget: int) -> None:
        """Evict least recently used blocks until at most ``budget`` bytes are held."""
        with self._lock:
            while self._bytes > budget and self._entries:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        self.trim(0)

    def fetch(self, key: CacheKey, load: Callable[[], Any], budget: int,
              run: str) -> tuple[Any, bool]:
        """The block under ``key``, from the cache or from ``load()``; and whether it hit.

        A loaded block is kept (as a read-only copy, returned in its place) when it can
        be admitted within ``budget``; otherwise the loaded block itself is returned and
        the next pass reads it again.
        """
        block, _, hit = self.fetch_with_ident(key, lambda: (load(), ""), budget, run)
        return block, hit

    def fetch_with_ident(self, key: CacheKey, load: Callable[[], tuple[Any, str]], budget: int,
                         run: str, current: Callable[[], str | None] | None = None,
                         ) -> tuple[Any, str, bool]:
        """:meth:`fetch` of a loader that also returns the stored chunk's identity
        (kept beside the block, so a hit still says which chunk it came from).

        ``current()``, when given, returns the stored chunk's identity now (a 4-byte
        read): a cached block whose chunk was rewritten since is dropped and read again.
        """
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and current is not None and current() != entry.ident:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
                    self._bytes -= entry.nbytes
            entry = None
        if entry is not None:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                entry.run = run
            return entry.value, entry.ident, True
        block, ident = load()
        nbytes = block_nbytes(block)
        with self._lock:
            if key in self._entries or not self._make_room(nbytes, budget, run):
                return block, ident, False
            self._bytes += nbytes  # reserved before the copy, so concurrent admits see it
        try:
            kept = _frozen(block)
        except BaseException:
            with self._lock:
                self._bytes -= nbytes
            raise
        with self._lock:
            self._entries[key] = _Entry(kept, nbytes, run, ident)
        return kept, ident, False

    def _make_room(self, nbytes: int, budget: int, run: str) -> bool:
        """Evict blocks of other runs (LRU first) until ``nbytes`` fit; caller holds the lock."""
        if nbytes > budget:
            return False
        if self._bytes + nbytes <= budget:
            return True
        for key in [k for k, e in self._entries.items() if e.run != run]:
            old = self._entries.pop(key)
            self._bytes -= old.nbytes
            if self._bytes + nbytes <= budget:
                return True
        return False


_PROCESS_CACHE = BlockCache()


def process_cache() -> BlockCache:
    """This process's block cache (one per worker process, shared by its threads)."""
    return _PROCESS_CACHE
