"""Counter-based random sketching matrices, regenerated piece by piece, never stored.

A sketching matrix S (k × m) is described by a :class:`SketchSpec`. Its transpose
Sᵀ (m × k) is cut into *granules* of :data:`GRANULE_ROWS` consecutive rows; granule
``g`` is drawn from its own Philox stream keyed by
``SeedSequence(seed, spawn_key=(kind, side, 0, g))``. A task that needs rows
``[start, stop)`` of Sᵀ regenerates the granules they touch and slices them, so the
random matrix depends only on (seed, kind, side, k, s) — never on chunking, executor
or worker count — and no task ever holds more than one granule beyond its rows.

Granules are always drawn on the host, with numpy's Philox, and a task computing on a
GPU copies them to the device (:func:`blocklin.plan.device.like`): the same stream on
every device by construction, with no device generator to prove equal to it. The
cost is a host draw and a copy of ``rows × k`` floats per task, small beside the
task's block.

Kinds and their scaling (every kind has E[SᵀS] = I, so (SA)ᵀ(SB) is unbiased for AᵀB):

``gaussian``      i.i.d. N(0, 1/k).
``rademacher``    i.i.d. ±1/√k.
``sparse_sign``   each column of S (each row of A) has ``min(s, k)`` nonzeros ±1/√s at
                  distinct uniformly random rows (Floyd's subset sampling).
``countsketch``   one nonzero ±1 per column at a uniform random row.
``srht``          block SRHT (Balabanov, Beaupère, Grigori, Lederer 2022): with granules
                  as blocks, S = [D̃₁RHD₁, …, D̃_pRHD_p]·√(G/k), where H is the orthonormal
                  Walsh–Hadamard matrix of order G = GRANULE_ROWS, R samples k of its rows
                  (shared by every granule), and D_g (G signs) and D̃_g (k signs) are drawn
                  per granule. Each granule is an SRHT; the per-granule output signs D̃_g
                  decorrelate granules so their sum is an embedding of the whole row
                  dimension. The last granule is zero-padded implicitly. For k > G the
                  granule is zero-padded to order N, the next power of two ≥ k, and H
                  is the Walsh–Hadamard matrix of order N restricted to its first G
                  columns (an SRHT of the padded granule); k ≤ G keeps N = G.
``fjlt``          Ailon–Chazelle's fast Johnson–Lindenstrauss transform per granule:
                  S = [P₁HD₁, …, P_pHD_p] with D_g random signs (G), H the orthonormal
                  Walsh–Hadamard matrix of order G, and P_g (k × G) sparse Gaussian:
                  each entry is nonzero with probability q, then N(0, 1/(qk)).
                  q = min(1, ln²(G)/G) (≈ 0.017, about 69 nonzeros per row of P per
                  granule), the paper's density with the number of points taken as G,
                  so that S does not depend on the matrix sketched (two matrices
                  sketched with one seed share S). Sᵀ's granule D·H·Pᵀ is formed by a
                  fast Walsh–Hadamard transform of Pᵀ (G·k·log₂G additions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp

__all__ = [
    "FJLT_DENSITY",
    "GRANULE_ROWS",
    "SKETCH_KINDS",
    "SketchKind",
    "SketchSpec",
    "fjlt_factors",
    "fwht",
    "granule_rng",
    "hadamard_order",
    "sketch_rows",
    "uniform_priorities",
]

#: Rows per granule of the random matrix; a power of two (the SRHT's Hadamard order).
GRANULE_ROWS = 4096

#: The sketch kinds, defined here once (``sketch``, ``sketched_matmul`` and the pipeline
#: registry import them).
SketchKind = Literal["gaussian", "rademacher", "sparse_sign", "countsketch", "srht", "fjlt"]
SKETCH_KINDS: tuple[SketchKind, ...] = get_args(SketchKind)

# Stable stream identifiers: never renumber (they key every stored sketch's randomness).
_STREAM_IDS = {"gaussian": 1, "rademacher": 2, "sparse_sign": 3, "countsketch": 4, "srht": 5,
               "coordinated": 6, "mlmc": 7, "fjlt": 8}
SIDES = {"left": 0, "right": 1}
_PER_GRANULE, _SHARED = 0, 1


def granule_rng(seed: int, stream: str, side: int, granule: int,
                tag: int = _PER_GRANULE) -> np.random.Generator:
    """The Philox generator of one granule (or, with ``tag=1``, a stream shared by all)."""
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(_STREAM_IDS[stream], side, tag, granule))
    return np.random.Generator(np.random.Philox(ss))


@dataclass(frozen=True)
class SketchSpec:
    """A sketching matrix S (k × m): kind, size, seed, side, and nonzeros per column."""

    kind: SketchKind
    k: int
    seed: int
    side: int = 0
    s: int = 8

    @property
    def is_sparse(self) -> bool:
        return self.kind in ("sparse_sign", "countsketch")


def _sign(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2, size=shape, dtype=np.int8).astype(np.float64) * 2.0 - 1.0


def _floyd_subsets(rng: np.random.Generator, n: int, k: int, s: int) -> np.ndarray:
    """``n`` independent uniformly random s-subsets of range(k) (Floyd's algorithm)."""
    sel = np.empty((n, s), dtype=np.int64)
    for pos, j in enumerate(range(k - s, k)):
        t = rng.integers(0, j + 1, size=n)
        dup = (sel[:, :pos] == t[:, None]).any(axis=1)
        sel[:, pos] = np.where(dup, j, t)
    return sel


def hadamard_order(k: int) -> int:
    """The order N of the Hadamard matrix an SRHT of size k samples: G, or the next
    power of two ≥ k beyond it."""
    return max(GRANULE_ROWS, 1 << (int(k) - 1).bit_length())


@lru_cache(maxsize=4)
def _hadamard_rows(seed: int, side: int, k: int) -> np.ndarray:
    """±1 entries of the k sampled Walsh–Hadamard rows, as a (G, k) float matrix.

    H[r, c] = (-1)^popcount(r & c) (Sylvester order), rows sampled from the order
    N = :func:`hadamard_order` (G for k ≤ G: the same rows as before N could exceed
    G), columns the granule's G; cached per process because every granule shares
    the sampled rows R.
    """
    rng = granule_rng(seed, "srht", side, 0, tag=_SHARED)
    # int32 halves the (G, k) temporaries; the parities are those of the int64 indices.
    rows = rng.choice(hadamard_order(k), size=k, replace=False).astype(np.int32)
    cols = np.arange(GRANULE_ROWS, dtype=np.int32)
    parity = np.bitwise_count(cols[:, None] & rows[None, :]) & 1
    out: np.ndarray = 1.0 - 2.0 * parity
    out.flags.writeable = False
    return out


#: FJLT density: Ailon–Chazelle's q = min(1, log²n/d) with n = d = G (see module docs).
FJLT_DENSITY = min(1.0, float(np.log(GRANULE_ROWS)) ** 2 / GRANULE_ROWS)


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalized fast Walsh–Hadamard transform along axis 0, in place (Sylvester
    order, length a power of two): returns H·x with H[r, c] = (-1)^popcount(r & c)."""
    n = x.shape[0]
    h = 1
    while h < n:
        y = x.reshape(n // (2 * h), 2, h, -1)
        a = y[:, 0].copy()
        y[:, 0] += y[:, 1]
        np.subtract(a, y[:, 1], out=y[:, 1])
        h *= 2
    return x


def fjlt_factors(spec: SketchSpec, g: int) -> tuple[np.ndarray, np.ndarray]:
    """The random factors of granule ``g`` of an FJLT: signs D (G,) and Pᵀ (G × k),
    dense with about q·G·k nonzeros."""
    G, k = GRANULE_ROWS, spec.k
    rng = granule_rng(spec.seed, spec.kind, spec.side, g)
    d = _sign(rng, (G,))
    pt = np.zeros((G, k))
    mask = rng.random((G, k)) < FJLT_DENSITY
    pt[mask] = rng.standard_normal(int(mask.sum())) * (1.0 / np.sqrt(FJLT_DENSITY * k))
    return d, pt


def _granule(spec: SketchSpec, g: int) -> np.ndarray | sp.csr_matrix:
    """Granule ``g`` of Sᵀ: a (GRANULE_ROWS, k) block, dense or CSR."""
    G, k = GRANULE_ROWS, spec.k
    rng = granule_rng(spec.seed, spec.kind, spec.side, g)
    if spec.kind == "gaussian":
        out = rng.standard_normal((G, k))
        out *= 1.0 / np.sqrt(k)
        return out
    if spec.kind == "rademacher":
        return _sign(rng, (G, k)) * (1.0 / np.sqrt(k))
    if spec.kind == "fjlt":
        d, pt = fjlt_factors(spec, g)
        # Sᵀ = (P·H·D)ᵀ = D·H·Pᵀ (H symmetric), H orthonormal: the FWHT scaled by 1/√G.
        out = fwht(pt)
        out *= d[:, None] * (1.0 / np.sqrt(G))
        return out
    if spec.kind == "srht":
        d = _sign(rng, (G, 1))
        d_out = _sign(rng, (1, k)) * (1.0 / np.sqrt(k))
        # Orthonormal H has entries ±1/√G; the √(G/k) scaling leaves ±1/√k.
        signs: np.ndarray = _hadamard_rows(spec.seed, spec.side, k) * d * d_out
        return signs
    s = 1 if spec.kind == "countsketch" else min(spec.s, k)
    cols = np.sort(_floyd_subsets(rng, G, k, s), axis=1)
    vals = _sign(rng, (G, s)) * (1.0 / np.sqrt(s))
    indptr = np.arange(0, G * s + 1, s, dtype=np.int64)
    return sp.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(G, k))


def sketch_rows(spec: SketchSpec, start: int, stop: int) -> np.ndarray | sp.csr_matrix:
    """Rows ``[start, stop)`` of Sᵀ (shape ``(stop - start, k)``), dense or CSR.

    Notes
    -----
    Regenerates each granule the rows touch; memory is the result plus one granule.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"bad row range [{start}, {stop})")
    G = GRANULE_ROWS
    pieces = []
    for g in range(start // G, -(-stop // G)):
        lo, hi = max(start, g * G) - g * G, min(stop, (g + 1) * G) - g * G
        pieces.append(_granule(spec, g)[lo:hi])
    if spec.is_sparse:
        if not pieces:
            return sp.csr_matrix((0, spec.k))
        return sp.csr_matrix(sp.vstack(pieces, format="csr"))
    if not pieces:
        return np.zeros((0, spec.k))
    return pieces[0] if len(pieces) == 1 else np.vstack(pieces)


def uniform_priorities(seed: int, start: int, stop: int) -> np.ndarray:
    """Shared uniform hashes h(i) ∈ (0, 1] of rows ``[start, stop)`` (coordinated sampling).

    Any matrix sampled with the same seed sees the same h(i) for its row i, which is
    what couples the samples of A and B.
    """
    G = GRANULE_ROWS
    pieces = []
    for g in range(start // G, -(-stop // G)):
        lo, hi = max(start, g * G) - g * G, min(stop, (g + 1) * G) - g * G
        # 1 - U lies in (0, 1]: no row ever gets a zero hash (its rank would be 0/0).
        u = 1.0 - granule_rng(seed, "coordinated", 0, g).random(G)
        pieces.append(u[lo:hi])
    return np.concatenate(pieces) if pieces else np.zeros(0)
