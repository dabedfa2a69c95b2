"""The co-occurrence block pass: per row block sparse partial counts, summed by a tree.

Partial counts are sparse, but a block task writes one dense block of a shape fixed at
planning time. A partial is therefore a *key/value block*: a ``(cap, 2)`` float64
array whose first column holds ``row·n + col`` of C (sorted, padded with −1) and whose
second holds the summed weight. Keys are exact in float64 while ``n² < 2⁵³``.

C's rows are split into *panels* of ``panel_rows`` rows, each its own leaf stage and
tree: a part's capacity is bounded by its panel's ``panel_rows × n`` cells, whatever
the corpus. The leaf stages of all panels read the same row blocks, so
:func:`~blocklin.plan.finalize.finalize` fuses them: each row block is read once, its
pairs generated once (kept for the next panel kernel of the same task by a one-slot
per-thread memo), and each panel keeps its key range.

Weights are integers (window weights are scaled by ``lcm(1..w)`` for ``harmonic``,
by ``w`` for ``linear``), so every partial sum is an exact integer in float64: the
result is bitwise the same whatever the tree, the executor or the order rows were
counted in (a refresh adding new rows equals a recompute).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from blocklin.errors import InputValueError
from blocklin.executors.lazy import Lazy
from blocklin.ops.inputs import MatrixInput, hstack_panel
from blocklin.plan.graph import ArrayNode, Plan, StageInput, Task, TaskContext, TaskSet, TreeTasks, make_stage
from blocklin.plan.reduce import DEFAULT_FAN_IN
from blocklin.storage.codecs import ChunkCodec
from blocklin.types import BlockIndex

__all__ = ["PANEL_CELLS", "Weighting", "pair_counts", "partial_plan", "weight_scale",
           "window_pairs"]

#: How window pairs are weighted by their distance d ≤ w: ``uniform`` 1, ``harmonic``
#: 1/d (GloVe, Swivel's ``fastprep``), ``linear`` (w − d + 1)/w (word2vec's dynamic
#: window, in expectation).
Weighting = Literal["uniform", "harmonic", "linear"]

#: Default cells (rows × n) of C per panel: a key/value part holds at most this many
#: entries, 16 bytes each (64 MiB).
PANEL_CELLS = 1 << 22

_MAX_KEY = 2 ** 53


def weight_scale(window: int | None, weighting: Weighting) -> int:
    """The integer every window weight is multiplied by (1 for item sets)."""
    if window is None or weighting == "uniform":
        return 1
    if weighting == "harmonic":
        return math.lcm(*range(1, window + 1))
    return window


def _weight(d: int, window: int, weighting: Weighting) -> int:
    if weighting == "uniform":
        return 1
    if weighting == "harmonic":
        return weight_scale(window, weighting) // d
    return window - d + 1


def window_pairs(tokens: np.ndarray, first: int, n: int, window: int, weighting: Weighting,
                 boundary: int | None, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``a·n + b`` and integer-scaled weights of the token pairs whose left
    position is below ``first`` (positions from ``first`` on are the next block's
    halo), both orders of each pair, pairs not crossing a document separator."""
    seq = np.asarray(tokens).reshape(-1)
    if seq.dtype.kind == "f" and not np.array_equal(seq, np.round(seq)):
        raise InputValueError("window co-occurrence reads token ids; the block holds "
                              "non-integer values")
    seq = seq.astype(np.int64)
    sep = seq < 0
    if boundary is not None:
        sep |= seq == boundary
    if seq.size and int(seq.max(initial=-1)) >= n:
        raise InputValueError(f"token id {int(seq.max())} is not below vocab_size={n}")
    doc = np.cumsum(sep)
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for d in range(1, window + 1):
        left = np.arange(0, min(first, seq.size - d))
        right = left + d
        ok = ~sep[left] & ~sep[right] & (doc[left] == doc[right])
        a, b = seq[left[ok]], seq[right[ok]]
        wgt = float(_weight(d, window, weighting))
        keys += [a * n + b, b * n + a]
        vals += [np.full(a.size, wgt), np.full(a.size, wgt)]
    return _sum_keys(np.concatenate(keys) if keys else np.zeros(0, np.int64),
                     np.concatenate(vals) if vals else np.zeros(0), n, diagonal)


def _set_pairs(block: Any, n: int, binary: bool, diagonal: bool, r0: int,
               r1: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and counts of ``BᵀB`` restricted to C's rows ``[r0, r1)``."""
    b = sp.csr_matrix(block, dtype=np.float64, copy=True)  # blocks are read-only
    if binary:
        b.data = np.ones_like(b.data)
    b.eliminate_zeros()
    c = (b[:, r0:r1].T @ b).tocoo()
    return _sum_keys((c.row.astype(np.int64) + r0) * n + c.col, c.data.astype(np.float64), n,
                     diagonal)


def _sum_keys(keys: np.ndarray, vals: np.ndarray, n: int,
              diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    if not diagonal:
        off = keys // n != keys % n
        keys, vals = keys[off], vals[off]
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inv.reshape(-1), weights=vals, minlength=uniq.size)


def _pack(keys: np.ndarray, vals: np.ndarray, cap: int) -> np.ndarray:
    if keys.size > cap:  # the capacities are bounds; reaching this is a planning bug
        raise RuntimeError(f"co-occurrence part of {keys.size} entries over its capacity {cap}")
    out = np.zeros((1, cap, 2))
    out[0, :, 0] = -1.0
    out[0, : keys.size, 0] = keys
    out[0, : keys.size, 1] = vals
    return out


def _unpack(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(part).reshape(-1, 2)
    live = p[:, 0] >= 0
    return p[live, 0].astype(np.int64), p[live, 1]


_MEMO = threading.local()


@dataclass(frozen=True)
class PairPartial:
    """Leaf kernel: the pairs of one row block (window: plus the next block's first
    ``window`` tokens) whose C row lies in ``[r0, r1)``, as a key/value block."""

    n: int
    window: int | None
    weighting: Weighting
    boundary: int | None
    binary: bool
    diagonal: bool
    ncol_blocks: int
    r0: int
    r1: int
    cap: int

    def _pairs(self, blocks: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        # The panel kernels of one fused task see the same block objects: pair them once.
        sig = (self.n, self.window, self.weighting, self.boundary, self.binary, self.diagonal)
        held = getattr(_MEMO, "slot", None)
        if held is not None and held[0] == sig and len(held[1]) == len(blocks) \
                and all(a is b for a, b in zip(held[1], blocks, strict=True)):
            return held[2], held[3]
        assert self.window is not None
        main = np.asarray(blocks[0]).reshape(-1)
        halo = [np.asarray(b).reshape(-1)[: self.window] for b in blocks[1:]]
        keys, vals = window_pairs(np.concatenate([main, *halo]), main.size, self.n,
                                  self.window, self.weighting, self.boundary, self.diagonal)
        _MEMO.slot = (sig, tuple(blocks), keys, vals)
        return keys, vals

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        if self.window is None:  # item sets: this panel's rows of BᵀB only
            keys, vals = _set_pairs(hstack_panel(blocks), self.n, self.binary, self.diagonal,
                                    self.r0, self.r1)
            return _pack(keys, vals, self.cap)
        keys, vals = self._pairs(blocks)
        lo, hi = np.searchsorted(keys, [self.r0 * self.n, self.r1 * self.n])
        return _pack(keys[lo:hi], vals[lo:hi], self.cap)


@dataclass(frozen=True)
class MergeParts:
    """Tree kernel: the key-wise sum of its children's key/value parts (integer-valued
    weights: exact, so the order of the sum does not change a bit)."""

    cap: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        pairs = [_unpack(b) for b in blocks]
        keys = np.concatenate([k for k, _ in pairs])
        vals = np.concatenate([v for _, v in pairs])
        uniq, inv = np.unique(keys, return_inverse=True)
        return _pack(uniq, np.bincount(inv.reshape(-1), weights=vals, minlength=uniq.size),
                     self.cap)


@dataclass(frozen=True, eq=True)
class HaloTasks(TaskSet):
    """Task ``i`` reads row block ``i`` (all ``ncol`` column blocks) and, with ``halo``,
    row block ``i + 1``'s first column block (the window's next tokens)."""

    nrows: int
    ncol: int
    halo: bool

    def __len__(self) -> int:
        return self.nrows

    def task(self, pos: int) -> Task:
        reads = [(0, (pos, j)) for j in range(self.ncol)]
        if self.halo and pos + 1 < self.nrows:
            reads.append((0, (pos + 1, 0)))
        return Task(out=(pos, 0, 0), reads=tuple(reads))

    def position(self, out: BlockIndex) -> int | None:
        ok = len(out) == 3 and 0 <= out[0] < self.nrows and not any(out[1:])
        return int(out[0]) if ok else None

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        return {names[0]: self.nrows * self.ncol} if self.nrows else {}

    def every_task_reads(self) -> bool:
        return True


_CODEC = ChunkCodec("zstd", 1)  # padding (-1, 0) compresses to almost nothing


def partial_plan(m: MatrixInput, n: int, *, window: int | None, weighting: Weighting,
                 boundary: int | None, binary: bool, diagonal: bool,
                 panel_rows: int) -> list[tuple[int, int, Lazy]]:
    """Per panel ``[r0, r1)`` of C's rows, the lazy root key/value part of its counts."""
    if n * n >= _MAX_KEY:
        raise InputValueError(f"{n:,} items: keys row·n + col would exceed 2**53")
    rows = m.node.chunks[0]
    # Window: each token pairs with at most w followers, both orders counted. Item
    # sets: only the panel's cells bound a block's BᵀB rows.
    pair_bound = 2 * window * rows if window is not None else n * n
    tasks = HaloTasks(m.grid[0], m.grid[1], window is not None)
    out = []
    for r0 in range(0, n, panel_rows):
        r1 = min(n, r0 + panel_rows)
        cells = (r1 - r0) * n
        cap = max(1, min(pair_bound, cells))
        # Window: the block's pairs (keys, weights, unique's inverse, sort buffers) once
        # per task, shared by the panels. Item sets: the panel's rows of BᵀB. Plus the
        # packed part.
        work = 48 * (pair_bound if window is not None else cap) + 16 * cap
        kernel = PairPartial(n, window, weighting, boundary, binary, diagonal, m.grid[1],
                             r0, r1, cap)
        stage = make_stage("cooccurrence/pairs", kernel, [m.input], tasks,
                           shape=(m.grid[0], cap, 2), chunks=(1, cap, 2), dtype="float64",
                           params={"n": n, "window": window, "weighting": weighting,
                                   "boundary": boundary, "binary": binary,
                                   "diagonal": diagonal, "rows": [r0, r1]},
                           extra_memory=work, codec=_CODEC, keeps_sparse=True)
        plan, root = _merge_levels(m.plan.add(stage), stage.output, cap, cells, [r0, r1])
        out.append((r0, r1, Lazy(plan, root, "small", label="cooccurrence")))
    return out


def _merge_levels(plan: Plan, parts: ArrayNode, cap: int, cells: int,
                  rows: list[int]) -> tuple[Plan, ArrayNode]:
    """Fixed fan-in tree over block index; a level's capacity is its children's total,
    bounded by the panel's cells."""
    level = 0
    while parts.shape[0] > 1:
        nparts = parts.shape[0]
        cap = min(cells, cap * DEFAULT_FAN_IN)
        stage = make_stage(f"cooccurrence/reduce{level}", MergeParts(cap), [StageInput(parts)],
                           TreeTasks(nparts, DEFAULT_FAN_IN, 3),
                           shape=(-(-nparts // DEFAULT_FAN_IN), cap, 2), chunks=(1, cap, 2),
                           dtype="float64", params={"rows": rows, "level": level},
                           extra_memory=48 * cap * (DEFAULT_FAN_IN + 1), codec=_CODEC)
        plan = plan.add(stage)
        parts = stage.output
        level += 1
    return plan, parts


def pair_counts(roots: Sequence[tuple[int, int, np.ndarray]], n: int) -> sp.csr_matrix:
    """The n × n CSR of summed weights from each panel's root part."""
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for _, _, part in roots:
        k, v = _unpack(part)
        keys.append(k)
        vals.append(v)
    k = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0)
    out = sp.csr_matrix((v, (k // n, k % n)), shape=(n, n))
    out.sum_duplicates()
    out.sort_indices()
    return out
