"""The co-occurrence block pass: per row block sparse partial counts, summed by a tree.

Partial counts are sparse, but a block task writes one dense block of a shape fixed at
planning time. A partial is therefore a *key/value block*: a ``(cap, 2)`` float64
array whose first column holds ``row·n + col`` of C (sorted, padded with −1) and whose
second holds the summed weight. Keys are exact in float64 while ``n² < 2⁵³``.

C's rows are split into *panels*, each its own leaf stage and tree. A part's
capacity must be fixed when the plan is built, so it comes from the data: when C
does not fit one part (``n² > PANEL_CELLS``), a *sizing pass* first counts each row
block's distinct pairs per fine panel of ``PANEL_CELLS // n`` rows (sums and maxima
over blocks, a ``2 × F`` small result); consecutive fine panels are joined while
their total stays within ``PANEL_CELLS`` entries, a leaf part holds the largest
block's count for its panel, and a tree level the least of its children's total,
the panel's measured total and its cells. The leaf stages of all panels read the
same row blocks, so :func:`~blocklin.plan.finalize.finalize` fuses them: each row
block is read once per pass, its pairs generated once (kept for the next panel
kernel of the same task by a one-slot per-thread memo), and each panel keeps its
key range.

Token windows cross block boundaries. A leaf counts the pairs inside its block and
keeps the block's first and last w tokens in ``2w`` leading rows of its part (token,
present); a tree task adds, for each seam between consecutive children, the pairs
with one token in the left child's tail and one in the right child's head
(:func:`seam_pairs`), and passes its first child's head and last child's tail up. So
A is read once, and a pair is counted once, by the node joining its two blocks. This
needs every block but the last to hold at least w tokens when there are more than
two blocks (a pair then spans at most one seam).

Weights are integers (window weights are scaled by ``lcm(1..w)`` for ``harmonic``,
by ``w`` for ``linear``), so every partial sum is an exact integer in float64: the
result is bitwise the same whatever the tree, the executor or the order rows were
counted in (a refresh adding new rows equals a recompute).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from blocklin.errors import InputValueError
from blocklin.executors.lazy import Lazy
from blocklin.ops.inputs import MatrixInput, hstack_panel, row_panel_tasks
from blocklin.plan.graph import ArrayNode, Plan, StageInput, TaskContext, TreeTasks, make_stage
from blocklin.plan.reduce import DEFAULT_FAN_IN
from blocklin.storage.codecs import ChunkCodec

__all__ = ["PANEL_CELLS", "Panel", "Weighting", "count_spec", "pair_counts", "partial_plan",
           "plan_panels", "seam_pairs", "sizing_plan", "static_panels", "weight_scale",
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


def seam_pairs(tail: np.ndarray, head: np.ndarray, n: int, window: int,
               weighting: Weighting, boundary: int | None,
               diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keys and weights of the pairs with one token in ``tail`` (the last w tokens
    before a seam) and the other in ``head`` (the first w after it): the pairs whose
    left token is in the tail, minus those wholly inside it. Exact: integer weights."""
    t = np.asarray(tail, dtype=np.int64)
    k1, v1 = window_pairs(np.concatenate([t, np.asarray(head, dtype=np.int64)]), t.size, n,
                          window, weighting, boundary, diagonal)
    k0, v0 = window_pairs(t, t.size, n, window, weighting, boundary, diagonal)
    keys, inv = np.unique(np.concatenate([k1, k0]), return_inverse=True)
    vals = np.bincount(inv.reshape(-1), weights=np.concatenate([v1, -v0]),
                       minlength=keys.size)
    live = vals != 0
    return keys[live], vals[live]


@dataclass(frozen=True)
class _Count:
    """What a part counts: n items; for a token window, w, weighting and separators."""

    n: int
    window: int | None
    weighting: Weighting
    boundary: int | None
    binary: bool
    diagonal: bool

    @property
    def edge(self) -> int:
        """Rows a part reserves for the first and the last w tokens of its range."""
        return 2 * (self.window or 0)


def _pack(spec: _Count, keys: np.ndarray, vals: np.ndarray, cap: int,
          head: np.ndarray | None = None, tail: np.ndarray | None = None) -> np.ndarray:
    """A part: ``edge`` rows of (token, present) for the head then the tail of the
    range (window counts), then ``cap`` rows of (key, value), keys padded with −1."""
    if keys.size > cap:  # the capacities are bounds; reaching this is a planning bug
        raise RuntimeError(f"co-occurrence part of {keys.size} entries over its capacity {cap}")
    e = spec.edge
    out = np.zeros((1, e + cap, 2))
    w = e // 2
    for off, toks in ((0, head), (w, tail)):
        if toks is not None and toks.size:
            out[0, off: off + toks.size, 0] = toks
            out[0, off: off + toks.size, 1] = 1.0
    out[0, e:, 0] = -1.0
    out[0, e: e + keys.size, 0] = keys
    out[0, e: e + keys.size, 1] = vals
    return out


def _edges(spec: _Count, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(part).reshape(-1, 2)
    w = spec.edge // 2
    head, tail = p[:w], p[w: 2 * w]
    return (head[head[:, 1] > 0, 0].astype(np.int64), tail[tail[:, 1] > 0, 0].astype(np.int64))


def _unpack(part: np.ndarray, edge: int = 0) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(part).reshape(-1, 2)[edge:]
    live = p[:, 0] >= 0
    return p[live, 0].astype(np.int64), p[live, 1]


def _in_rows(keys: np.ndarray, vals: np.ndarray, n: int, r0: int,
             r1: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.searchsorted(keys, [r0 * n, r1 * n])
    return keys[lo:hi], vals[lo:hi]


_MEMO = threading.local()


@dataclass(frozen=True)
class PairPartial:
    """Leaf kernel: the pairs of one row block whose C row lies in ``[r0, r1)``, as a
    part (for a token window also the block's first and last w tokens, so the tree
    counts the pairs across block seams)."""

    spec: _Count
    r0: int
    r1: int
    cap: int

    def _window_pairs(self, block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The panel kernels of one fused task see the same block object: pair it once.
        held = getattr(_MEMO, "slot", None)
        if held is not None and held[0] == self.spec and held[1] is block:
            return held[2], held[3], held[4]
        spec = self.spec
        assert spec.window is not None
        toks = np.asarray(block).reshape(-1)
        keys, vals = window_pairs(toks, toks.size, spec.n, spec.window, spec.weighting,
                                  spec.boundary, spec.diagonal)
        _MEMO.slot = (spec, block, keys, vals, toks)
        return keys, vals, toks

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        spec = self.spec
        if spec.window is None:  # item sets: this panel's rows of BᵀB only
            keys, vals = _set_pairs(hstack_panel(blocks), spec.n, spec.binary, spec.diagonal,
                                    self.r0, self.r1)
            return _pack(spec, keys, vals, self.cap)
        keys, vals, toks = self._window_pairs(blocks[0])
        keys, vals = _in_rows(keys, vals, spec.n, self.r0, self.r1)
        w = spec.window
        return _pack(spec, keys, vals, self.cap,
                     toks[:w].astype(np.int64), toks[-w:].astype(np.int64))


@dataclass(frozen=True)
class MergeParts:
    """Tree kernel: the key-wise sum of its children's parts, plus (token windows) the
    pairs across each seam between consecutive children; its head is its first
    child's, its tail its last child's. Integer-valued weights: exact, so the order of
    the sum does not change a bit."""

    spec: _Count
    r0: int
    r1: int
    cap: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        spec = self.spec
        pairs = [_unpack(b, spec.edge) for b in blocks]
        head = tail = None
        if spec.window is not None:
            edges = [_edges(spec, b) for b in blocks]
            for (_, left), (right, _) in itertools.pairwise(edges):
                k, v = seam_pairs(left, right, spec.n, spec.window, spec.weighting,
                                  spec.boundary, spec.diagonal)
                pairs.append(_in_rows(k, v, spec.n, self.r0, self.r1))
            head, tail = edges[0][0], edges[-1][1]
        keys = np.concatenate([k for k, _ in pairs])
        vals = np.concatenate([v for _, v in pairs])
        uniq, inv = np.unique(keys, return_inverse=True)
        sums = np.bincount(inv.reshape(-1), weights=vals, minlength=uniq.size)
        return _pack(spec, uniq, sums, self.cap, head, tail)


_CODEC = ChunkCodec("zstd", 1)  # padding (-1, 0) compresses to almost nothing


@dataclass(frozen=True)
class Panel:
    """Rows ``[r0, r1)`` of C, a bound on the entries of one leaf part of them
    (``leaf``) and on the entries of all of them (``total``)."""

    r0: int
    r1: int
    leaf: int
    total: int


@dataclass(frozen=True)
class SizePart:
    """Sizing kernel: per fine panel of ``rows`` rows of C, how many distinct pairs one
    row block holds, as a (1, 2, F) part (row 0 summed over blocks, row 1 their max)."""

    spec: _Count
    rows: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        spec = self.spec
        nf = -(-spec.n // self.rows)
        counts = np.zeros(nf)
        if spec.window is None:
            b = hstack_panel(blocks)
            # BᵀB a slab of rows at a time: never more than ~PANEL_CELLS entries held.
            step = max(1, PANEL_CELLS // max(spec.n, 1))
            for r0 in range(0, spec.n, step):
                keys, _ = _set_pairs(b, spec.n, spec.binary, spec.diagonal, r0,
                                     min(spec.n, r0 + step))
                counts += np.bincount(keys // spec.n // self.rows, minlength=nf)
        else:
            toks = np.asarray(blocks[0]).reshape(-1)
            keys, _ = window_pairs(toks, toks.size, spec.n, spec.window, spec.weighting,
                                   spec.boundary, spec.diagonal)
            counts += np.bincount(keys // spec.n // self.rows, minlength=nf)
        return np.stack([counts, counts])[None]


@dataclass(frozen=True)
class SizeMerge:
    """Tree kernel of the sizes: sums of row 0, maxima of row 1 (exact integers)."""

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        parts = np.concatenate([np.asarray(b) for b in blocks])
        return np.stack([parts[:, 0].sum(axis=0), parts[:, 1].max(axis=0)])[None]


def sizing_plan(m: MatrixInput, spec: _Count, rows: int) -> Lazy:
    """The pass measuring, per fine panel of ``rows`` rows of C, the distinct pairs per
    block (sum and max over blocks): the counting pass sizes its parts from it."""
    from blocklin.plan.reduce import tree_reduce

    nf = -(-spec.n // rows)
    # A block's window pairs at once; item sets a slab of BᵀB of ~PANEL_CELLS entries.
    pairs = 2 * spec.window * m.node.chunks[0] if spec.window is not None else PANEL_CELLS
    work = 56 * pairs
    stage = make_stage("cooccurrence/sizes", SizePart(spec, rows), [m.input],
                       row_panel_tasks([m]), shape=(m.grid[0], 2, nf), chunks=(1, 2, nf),
                       dtype="float64", params={**_params(spec), "rows": rows},
                       extra_memory=work + 16 * nf, keeps_sparse=True)
    plan, out = tree_reduce(m.plan.add(stage), stage.output, SizeMerge(),
                            op="cooccurrence/sizes")
    return Lazy(plan, out, "small", lambda p: p[0], label="cooccurrence.sizes")


def plan_panels(sizes: np.ndarray, n: int, rows: int, grouped: bool,
                budget: int = PANEL_CELLS) -> list[Panel]:
    """Panels from a sizing pass: fine panels of ``rows`` rows, joined (``grouped``)
    while their total stays within ``budget`` entries."""
    total, peak = np.asarray(sizes[0]), np.asarray(sizes[1])
    out: list[Panel] = []
    f, nf = 0, total.size
    while f < nf:
        g = f + 1
        if grouped:
            while g < nf and total[f:g + 1].sum() <= budget:
                g += 1
        r0, r1 = f * rows, min(n, g * rows)
        out.append(Panel(r0, r1, int(peak[f:g].sum()), int(total[f:g].sum())))
        f = g
    return out


def static_panels(m: MatrixInput, n: int, window: int | None, rows: int) -> list[Panel]:
    """Panels sized from shapes alone (a pass fewer): bounded by the panel's cells and,
    for a window, by a block's 2·w·rows pairs."""
    block = 2 * window * m.node.chunks[0] if window is not None else n * n
    out = []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        out.append(Panel(r0, r1, min(block, (r1 - r0) * n), (r1 - r0) * n))
    return out


def _params(spec: _Count) -> dict[str, Any]:
    return {"n": spec.n, "window": spec.window, "weighting": spec.weighting,
            "boundary": spec.boundary, "binary": spec.binary, "diagonal": spec.diagonal}


def count_spec(n: int, window: int | None, weighting: Weighting, boundary: int | None,
               binary: bool, diagonal: bool) -> _Count:
    if n * n >= _MAX_KEY:
        raise InputValueError(f"{n:,} items: keys row·n + col would exceed 2**53")
    return _Count(n, window, weighting, boundary, binary, diagonal)


def partial_plan(m: MatrixInput, spec: _Count, panels: Sequence[Panel]) -> list[tuple[int, int, Lazy]]:
    """Per panel, the lazy root part of its counts."""
    window = spec.window
    rows = m.node.chunks[0]
    pair_bound = 2 * window * rows if window is not None else 0
    seam = 2 * window * window if window is not None else 0
    tasks = row_panel_tasks([m])
    out = []
    for i, pan in enumerate(panels):
        cells = (pan.r1 - pan.r0) * spec.n
        cap = max(1, min(pan.leaf, cells))
        # Window: the block's pairs (keys, weights, unique's inverse, sort buffers),
        # made once per task and shared by the panels' fused kernels, so declared by
        # the first panel only (a fused group's projection sums its members). Item
        # sets: the panel's rows of BᵀB. Plus the packed part.
        if window is not None:
            work = (48 * pair_bound if i == 0 else 0) + 16 * (cap + spec.edge)
        else:
            work = 48 * cap + 16 * cap
        stage = make_stage("cooccurrence/pairs", PairPartial(spec, pan.r0, pan.r1, cap),
                           [m.input], tasks, shape=(m.grid[0], spec.edge + cap, 2),
                           chunks=(1, spec.edge + cap, 2), dtype="float64",
                           params={**_params(spec), "rows": [pan.r0, pan.r1], "cap": cap},
                           extra_memory=work, codec=_CODEC, keeps_sparse=True)
        limit = max(1, min(cells, pan.total + seam * (m.grid[0] - 1)))
        plan, root = _merge_levels(m.plan.add(stage), stage.output, spec, cap, limit,
                                   seam, (pan.r0, pan.r1))
        out.append((pan.r0, pan.r1, Lazy(plan, root, "small", label="cooccurrence")))
    return out


def _merge_levels(plan: Plan, parts: ArrayNode, spec: _Count, cap: int, limit: int,
                  seam_bound: int, rows: tuple[int, int]) -> tuple[Plan, ArrayNode]:
    """Fixed fan-in tree over block index; a level's capacity is its children's total
    (and their seams' pairs), bounded by ``limit`` (the panel's cells or its measured
    total)."""
    level = 0
    while parts.shape[0] > 1:
        nparts = parts.shape[0]
        cap = min(limit, cap * DEFAULT_FAN_IN + seam_bound * (DEFAULT_FAN_IN - 1))
        stage = make_stage(f"cooccurrence/reduce{level}", MergeParts(spec, *rows, cap),
                           [StageInput(parts)], TreeTasks(nparts, DEFAULT_FAN_IN, 3),
                           shape=(-(-nparts // DEFAULT_FAN_IN), spec.edge + cap, 2),
                           chunks=(1, spec.edge + cap, 2), dtype="float64",
                           params={"rows": list(rows), "level": level, "cap": cap},
                           extra_memory=48 * cap * (DEFAULT_FAN_IN + 1), codec=_CODEC)
        plan = plan.add(stage)
        parts = stage.output
        level += 1
    return plan, parts


def pair_counts(roots: Sequence[tuple[int, int, np.ndarray]], n: int,
                window: int | None) -> sp.csr_matrix:
    """The n × n CSR of summed weights from each panel's root part."""
    edge = 2 * (window or 0)
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for _, _, part in roots:
        k, v = _unpack(part, edge)
        keys.append(k)
        vals.append(v)
    k = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0)
    out = sp.csr_matrix((v, (k // n, k % n)), shape=(n, n))
    out.sum_duplicates()
    out.sort_indices()
    return out
