"""Appending row batches to stored inputs that several pipelines may share.

An input array records the batches it holds in its attributes (``batches``: id,
content fingerprint, row range, source, time): that record is the source of truth
for which rows it holds. Two pipelines with different output directories may
extend the same input, so an append

1. holds the array's own lock (:func:`~blocklin.pipelines.lock.array_lock`,
   ``<array>/.blocklin/append.lock``; a second appender waits for it);
2. re-reads the array's metadata under the lock and plans from that version: a
   batch already recorded (by id, or by the content fingerprint of its rows,
   whoever appended it) is not appended again;
3. writes the new chunks (the last partial block is rewritten with the same
   leading rows), checks that the metadata is still the version it planned from,
   and commits the new ``zarr.json`` with the batch record (compare and swap: a
   writer that bypassed the lock is detected, never overwritten).

A pipeline whose input gained batches it has not seen (appended by another
pipeline) reads their rows from the input by the recorded row range
(:func:`copy_rows`): rows of a committed batch never change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import scipy.sparse as sp

from blocklin.errors import InputChangedError, InputValueError
from blocklin.pipelines.ingest import BlockWriter
from blocklin.pipelines.lock import array_lock
from blocklin.pipelines.manifest import utc_now
from blocklin.storage import BlockMatrix, open_matrix, provenance_attrs
from blocklin.storage.chunkio import read_region
from blocklin.storage.codecs import ChunkCodec
from blocklin.storage.meta import ATTRS_NAMESPACE, ArrayMeta, read_meta
from blocklin.storage.sparse import CSR, append_sparse, from_sparse, read_sparse_meta
from blocklin.storage.stores import store_for

__all__ = ["append_batch", "append_rows", "batch_records", "copy_rows", "find_batch",
           "locked_arrays"]


def batch_records(m: BlockMatrix) -> list[dict[str, Any]]:
    """The batches ``m`` records, in the order they were appended."""
    recs = m.provenance.get("batches", [])
    return [r for r in recs if isinstance(r, dict)] if isinstance(recs, list) else []


def find_batch(m: BlockMatrix, batch_id: str | None,
               content: str | None = None) -> dict[str, Any] | None:
    """The record of a batch ``m`` holds, matched by id or by its rows' content fingerprint."""
    for rec in batch_records(m):
        if (batch_id is not None and rec.get("fingerprint") == batch_id) \
                or (content is not None and rec.get("content") == content):
            return rec
    return None


@contextmanager
def locked_arrays(urls: Sequence[str], command: str = "blocklin refresh") -> Iterator[None]:
    """Hold the append locks of several arrays, taken in a fixed order (no deadlock)."""
    with ExitStack() as stack:
        for url in sorted(set(urls)):
            stack.enter_context(array_lock(url, command))
        yield


def _version(meta: ArrayMeta) -> str:
    return json.dumps(meta.to_json(), sort_keys=True, default=str)


def append_rows(target_url: str, rows: BlockMatrix, source: str, batch_id: str,
                match_content: bool = True) -> BlockMatrix:
    """Append ``rows`` to the array at ``target_url`` unless it holds them; return it.

    The caller holds the array's lock (:func:`locked_arrays`). The array is read
    afresh here: that version is what the append plans from and checks before its
    commit. The batch is held when a record has id ``batch_id``, or (with
    ``match_content``) the fingerprint of the same rows; labels are matched by id
    only, since equal labels may belong to different rows.

    A sparse (CSR) target gets CSR row blocks (:func:`blocklin.storage.sparse.append_sparse`):
    its last partial block is rewritten with the same leading rows, the batch's rows
    follow; the batch's blocks (CSR from a ``.npz`` batch, or dense) never densify.

    Raises
    ------
    InputValueError
        A dtype that differs.
    InputChangedError
        The metadata changed between planning and commit (a writer that did not
        take the lock); this append committed nothing.

    Notes
    -----
    One pass over ``rows``; the target's last partial block is read and rewritten.
    """
    target = open_matrix(target_url)
    if find_batch(target, batch_id, rows.fingerprint if match_content else None) is not None:
        return target
    if rows.dtype != target.dtype:
        raise InputValueError(f"batch dtype {rows.dtype} differs from {target.url}'s "
                              f"{target.dtype}")
    planned = _version(target.meta)

    def check_unchanged() -> None:
        now = (read_sparse_meta if target.meta.format == CSR else read_meta)(target.store)
        if now is None or _version(now) != planned:
            raise InputChangedError(
                f"{target.url} changed while batch {batch_id} was being appended (a writer "
                "that did not take its append lock); this append committed nothing, but it "
                f"may have rewritten the array's last block: run `blocklin verify "
                f"{target.url}`, then rerun the refresh")

    start = target.shape[0]
    record = {"fingerprint": batch_id, "content": rows.fingerprint,
              "rows": [start, start + rows.shape[0]], "source": source, "applied": utc_now()}
    batches = [*batch_records(target), record]
    if target.meta.format == CSR:
        return append_sparse(target, (rows.block(i, 0) for i in range(rows.nblocks[0])),
                             {"batches": batches}, before_commit=check_unchanged)
    writer = BlockWriter(target.store, target.shape[1], target.dtype, target.chunks[0],
                         target.meta.codec, base=target)
    for _, block in rows.blocks():
        writer.append(block)
    doc = {**target.provenance, "batches": batches}
    return writer.close({**target.meta.attrs, ATTRS_NAMESPACE: doc}, before_commit=check_unchanged)


def append_batch(target: BlockMatrix, batch: BlockMatrix, source: str,
                 fingerprint: str | None = None,
                 command: str = "blocklin refresh") -> BlockMatrix:
    """Append ``batch``'s rows to ``target`` unless it holds them already; return the input.

    Takes the array's append lock (waiting for another appender), then
    :func:`append_rows`.

    Raises
    ------
    LockError
        Another process held the lock for longer than the wait.
    InputValueError, InputChangedError
        As :func:`append_rows`.
    """
    with locked_arrays([target.url], command):
        return append_rows(target.url, batch, source, fingerprint or batch.fingerprint)


def copy_rows(m: BlockMatrix, start: int, stop: int, dest: str) -> BlockMatrix:
    """Copy rows ``[start, stop)`` of ``m`` into a new array at ``dest`` with ``m``'s row blocks.

    Notes
    -----
    Reads the row blocks overlapping the range once; memory about one row block.
    """
    if not 0 <= start < stop <= m.shape[0]:
        raise InputValueError(f"rows [{start}, {stop}) are not inside {m.url} "
                              f"({m.shape[0]} rows)")
    r = m.chunks[0]
    if m.meta.format == CSR:  # CSR rows stay CSR: the overlapping blocks, cut
        first, last = start // r, (stop - 1) // r
        part = sp.vstack([m.block(i, 0) for i in range(first, last + 1)], format="csr")
        lo = start - first * r
        return from_sparse(part[lo:lo + stop - start], dest, chunks=(r, None),
                           attrs={"operator": "refresh/copy",
                                  "params": {"source": m.url, "rows": [start, stop]}})
    writer = BlockWriter(store_for(dest), m.shape[1], m.dtype, r, ChunkCodec())
    for lo in range(start, stop, r):
        hi = min(lo + r, stop)
        writer.append(read_region(m.store, m.meta, (slice(lo, hi), slice(0, m.shape[1]))))
    return writer.close(provenance_attrs("refresh/copy", params={"source": m.url,
                                                                 "rows": [start, stop]}))
