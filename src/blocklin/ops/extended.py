"""Double-double arithmetic for one-pass statistics far more exact than float64's.

A double-double number is an unevaluated sum ``hi + lo`` of two float64 values with
``|lo| ≤ ulp(hi)/2``, about 32 significant digits. Everything here is vectorized numpy
on (hi, lo) array pairs, built from the error-free transformations TwoSum (Knuth) and
TwoProduct (Dekker's split); none of it needs an extended hardware type, so results
are the same on every platform and executor.

:func:`exact_gram` forms ``ZᵀZ`` of a float64 panel with BLAS matrix products that are
free of rounding (Ozaki's error-free splitting): each column is scaled by a power of
two and cut into slices of ``SLICE_BITS`` bits, so that every product of two slices,
summed over up to ``2**CHUNK_BITS`` rows, is an integer multiple of a power of two
below 2⁵³ -- exact in float64 whatever order the BLAS sums in. The slice products are
then added in double-double; one to three slices (:func:`slices_for`) leave a relative
error of 2⁻⁶⁵ to 2⁻¹⁰⁵. :func:`dd_cholesky` and the triangular solves solve the
resulting normal equations with a relative error about κ(ZᵀZ) times that, which beats
a double-precision Householder solve (κ(Z)·2⁻⁵³) for the κ the slices were chosen for.

:func:`dd_sum` and :func:`dd_sum_segments` sum many float64 terms (exact products from
:func:`dd_mul_exact`, say) to double-double accuracy by Rump, Ogita and Oishi's
error-free extraction: every extracted part is summed exactly, in whatever order numpy
or BLAS adds, so a residual ``y − Xβ`` or a gradient ``Xᵀr`` comes out the same on
every platform, with or without an extended hardware type.

References
----------
S. M. Rump, T. Ogita, S. Oishi. Accurate floating-point summation part I: faithful
rounding. SIAM J. Sci. Comput. 31(1), 2008.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dd_add", "dd_back_substitute", "dd_cholesky", "dd_dot", "dd_forward_substitute",
           "dd_mul_exact", "dd_sum", "dd_sum_parts", "dd_sum_segments", "exact_gram",
           "kappa_limit", "slices_for"]

#: Rows per exact product: slice products summed over 2¹² rows stay below 2⁵² (13 bits
#: would give the same slice width and twice the buffers).
CHUNK_BITS = 12
#: Bits per slice: (53 − CHUNK_BITS) / 2.
SLICE_BITS = (53 - CHUNK_BITS) // 2
#: Most exact slices per column (see :func:`exact_gram`): 60 of the 53 + 53 bits a
#: product needs, the remainder's products carrying rounding below 2⁻¹¹³.
SLICES = 3

_SPLIT = 134217729.0  # 2**27 + 1, Dekker's splitter for 53-bit significands

Pair = tuple[np.ndarray, np.ndarray]


def _two_sum(a: np.ndarray, b: np.ndarray) -> Pair:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _fast_two_sum(a: np.ndarray, b: np.ndarray) -> Pair:
    s = a + b  # requires |a| ≥ |b| (or a = 0)
    return s, b - (s - a)


def _two_prod(a: np.ndarray, b: np.ndarray) -> Pair:
    p = a * b
    ca = _SPLIT * a
    ah = ca - (ca - a)
    al = a - ah
    cb = _SPLIT * b
    bh = cb - (cb - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def dd_mul_exact(a: np.ndarray, b: np.ndarray) -> Pair:
    """``a·b`` elementwise as the exact (hi, lo) pair (TwoProduct; barring underflow)."""
    return _two_prod(a, b)


#: Extraction levels of :func:`dd_sum`: each level's parts sum exactly. What is left
#: after three is below about 8·n³·2⁻¹⁵⁹ of the largest of n terms, far under a
#: double-double's 2⁻¹⁰⁶ of their sum, and is dropped: every sum taken is then exact, so
#: the result does not depend on the order in which numpy adds.
_EXTRACT_LEVELS = 3


def _extract_unit(big: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """σ = 2^(M + e) with 2^M > count + 1 and 2^e > ``big``: adding σ to a term of
    magnitude at most ``big`` and subtracting it back leaves its high part q exactly, the
    rest ``term − q`` is exact and below 2⁻⁵³σ, and any sum of ``count`` such q is exact
    (Rump, Ogita and Oishi 2008, Lemma 3.3)."""
    m = np.ceil(np.log2(np.asarray(count, dtype=np.float64) + 2.0)).astype(np.int32)
    out: np.ndarray = np.ldexp(1.0, m + np.frexp(big)[1])
    return out


def dd_sum(v: np.ndarray | Sequence[np.ndarray], axis: int) -> Pair:
    """Σ along ``axis`` of ``v`` (2-D), or of several 2-D arrays as if joined along it,
    in double-double: the same bits whatever order numpy adds in (every sum it takes is
    exact).

    The error is about 2⁻¹⁰⁶ of Σ|v| (against float64's 2⁻⁵³·n), so a sum that cancels
    to a small fraction of its terms keeps its digits: the residual of a nearly exact
    fit, the gradient at an optimum. Costs three extractions (about ten sweeps over v,
    which is copied once).
    """
    parts = [np.array(a, dtype=np.float64) for a in ([v] if isinstance(v, np.ndarray) else v)]
    count = sum(a.shape[axis] for a in parts)
    taus = []
    for _ in range(_EXTRACT_LEVELS):
        big = parts[0].max(axis=axis, initial=0.0)
        for a in parts:
            big = np.maximum(big, a.max(axis=axis, initial=0.0))
            big = np.maximum(big, -a.min(axis=axis, initial=0.0))
        sigma = np.expand_dims(_extract_unit(big, count), axis)
        tau = np.zeros_like(big)
        for a in parts:
            q = a + sigma
            q -= sigma
            a -= q
            tau += q.sum(axis=axis)
        taus.append(tau)
    return _dd_total(taus)


def dd_sum_segments(v: np.ndarray, indptr: np.ndarray) -> Pair:
    """Σ of ``v``'s rows ``indptr[s]:indptr[s + 1]`` (all columns) per segment s, in
    double-double (as :func:`dd_sum`); empty segments sum to 0. CSR and CSC index
    pointers are such segments."""
    counts = np.diff(indptr)
    nonempty = counts > 0
    starts = indptr[:-1][nonempty]
    size = counts[nonempty] * v.shape[1]
    zeros = np.zeros(counts.shape[0])
    if not starts.size:
        return zeros, zeros.copy()

    def segment(values: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        # Only non-empty segments: reduceat would give an empty one the next entry.
        return np.asarray(ufunc.reduceat(values, starts))

    taus = []
    for _ in range(_EXTRACT_LEVELS):
        big = segment(np.max(np.abs(v), axis=1, initial=0.0), np.maximum)
        sigma = np.repeat(_extract_unit(big, size), counts[nonempty])[:, None]
        q = (sigma + v) - sigma
        v = v - q
        taus.append(segment(np.sum(q, axis=1), np.add))
    hi, lo = _dd_total(taus)
    out_hi, out_lo = zeros, zeros.copy()
    out_hi[nonempty], out_lo[nonempty] = hi, lo
    return out_hi, out_lo


def _dd_total(taus: list[np.ndarray]) -> Pair:
    """The exact level sums, added in double-double (largest first)."""
    acc: Pair = (taus[0], np.zeros_like(taus[0]))
    for t in taus[1:]:
        acc = dd_add(acc, (t, np.zeros_like(t)))
    return acc


def dd_add(a: Pair, b: Pair) -> Pair:
    """a + b in double-double (the accurate, IEEE-style addition)."""
    s, e = _two_sum(a[0], b[0])
    t, f = _two_sum(a[1], b[1])
    s, e = _fast_two_sum(s, e + t)
    return _fast_two_sum(s, e + f)


def _dd_neg(a: Pair) -> Pair:
    return -a[0], -a[1]


def _dd_mul(a: Pair, b: Pair) -> Pair:
    p, e = _two_prod(a[0], b[0])
    return _fast_two_sum(p, e + (a[0] * b[1] + a[1] * b[0]))


def _dd_div(a: Pair, b: Pair) -> Pair:
    q1 = a[0] / b[0]
    r = dd_add(a, _dd_neg(_dd_mul((q1, np.zeros_like(q1)), b)))
    q2 = r[0] / b[0]
    r = dd_add(r, _dd_neg(_dd_mul((q2, np.zeros_like(q2)), b)))
    q3 = r[0] / b[0]
    q = _fast_two_sum(q1, q2)
    return dd_add(q, (q3, np.zeros_like(q3)))


def _dd_sqrt(a: Pair) -> Pair:
    x = np.sqrt(a[0])
    p, e = _two_prod(x, x)
    r = dd_add(a, (-p, -e))
    return _fast_two_sum(x, r[0] / (2.0 * x))


def slices_for(kappa: float) -> int:
    """Exact slices a Gram needs so that solving its normal equations is as accurate as a
    Householder solve, for a design of condition number (estimate) ``kappa``.

    S slices leave a Gram error of about 2^(8 − 20S − 53) relative (8 bits spare for
    row-count growth); the normal equations turn it into κ²·that, which must stay below
    a tenth of QR's u·κ: κ ≤ 2^(20S − 8)/10 (S = 1: 409, S = 2: 4.3·10⁸, S = 3 beyond
    any design double precision can solve).
    """
    for s in range(1, SLICES):
        if kappa <= kappa_limit(s):
            return s
    return SLICES


def kappa_limit(slices: int) -> float:
    """The largest condition number a Gram of ``slices`` exact slices serves (see
    :func:`slices_for`); unbounded for the most slices."""
    return np.inf if slices >= SLICES else 2.0 ** (SLICE_BITS * slices - 8) / 10.0


def _slices(z: np.ndarray, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Error-free split ``z = X₁ + … + X_S + rest`` of a column-scaled panel (|z| < 1).

    Slice t holds integer multiples of 2^-(SLICE_BITS·t), at most 2^SLICE_BITS of them:
    adding σ = 1.5·2^(52 − SLICE_BITS·t) rounds to that grid exactly (the sum stays in
    σ's binade), and subtracting it back is exact, as is each remainder. Returns the
    slices and the remainders ``z − X₁ − … − X_t`` for t = 0 … S.
    """
    slices, rests = [], [z]
    for t in range(1, count + 1):
        sigma = 1.5 * 2.0 ** (52 - SLICE_BITS * t)
        s = (rests[-1] + sigma) - sigma
        slices.append(s)
        rests.append(rests[-1] - s)
    return slices, rests


def exact_gram(z: np.ndarray, slices: int = SLICES) -> np.ndarray:
    """``zᵀz`` in double-double, (2, c, c): high parts, then low parts.

    With slices X₁ … X_S (S = ``slices``) and the remainder X_{S+1} (|X_t| < 2^-20(t−1)),
    ``zᵀz = Σ_{a,b} X_aᵀX_b``. The products with a + b ≤ S + 1 are exact in float64;
    the others sum to ``Σ_a X_aᵀ T_a`` with T_a the remainder after S + 1 − a slices,
    products of size 2^-20S formed in float64, so their rounding is about 2^-(20S+53)
    of ``|z|ᵀ|z|`` (2⁻¹¹³ for three slices), against a float64 Gram's 2⁻⁵³. Costs 3, 5
    or 8 matrix products of the panel for S = 1, 2, 3 (each twice a symmetric Gram's
    flops), so callers keep it for panels whose conditioning needs it, with the fewest
    slices that serve (:func:`slices_for`).
    """
    m, c = z.shape
    hi = np.zeros((c, c))
    lo = np.zeros((c, c))
    if m == 0:
        return np.stack([hi, lo])
    big = np.max(np.abs(z), axis=0)
    if not np.all(np.isfinite(big)):
        return np.stack([hi + np.nan, lo])
    # Scale each column by a power of two to |z| < 1 (exact; zero columns stay put),
    # chunk by chunk so that no scaled copy of the whole panel is held.
    exps = np.where(big > 0, np.frexp(big)[1], 0)
    step = 2**CHUNK_BITS
    for start in range(0, m, step):
        parts, rests = _slices(np.ldexp(z[start:start + step], -exps), slices)
        terms = []
        for a in range(slices):  # exact: slices a ≤ b, a + b ≤ S − 1 (0-based)
            for b in range(a, slices - a):
                block = parts[a].T @ parts[b]
                terms += [block] if a == b else [block, block.T]
        # The rest, in float64: slice a against the remainder after S − a slices, and
        # the final remainder against the whole chunk; symmetric as a sum.
        tail = rests[slices].T @ rests[0]
        for a in range(slices):
            tail += parts[a].T @ rests[slices - a]
        terms.append(0.5 * (tail + tail.T))
        for term in terms:
            hi, err = _two_sum(hi, term)
            lo += err
    hi, lo = _fast_two_sum(hi, lo)
    # Mirror the upper triangle: the two triangles summed their terms in other orders.
    hi, lo = np.triu(hi) + np.triu(hi, 1).T, np.triu(lo) + np.triu(lo, 1).T
    scale = np.ldexp(1.0, exps[:, None] + exps[None, :])
    return np.stack([hi * scale, lo * scale])


def dd_sum_parts(parts: list[np.ndarray]) -> np.ndarray:
    """Sum (2, …) double-double arrays in list order (a fixed-order tree combine)."""
    acc: Pair = (parts[0][0].copy(), parts[0][1].copy())
    for p in parts[1:]:
        acc = dd_add(acc, (p[0], p[1]))
    return np.stack(acc)


def dd_cholesky(g: np.ndarray) -> Pair | None:
    """Upper Cholesky factor of a symmetric (2, c, c) double-double matrix, or None.

    Right-looking, one vectorized trailing update per column. None when a pivot is not
    positive (the matrix is singular to double-double precision).
    """
    a = (g[0].copy(), g[1].copy())
    c = a[0].shape[0]
    rh = np.zeros((c, c))
    rl = np.zeros((c, c))
    for j in range(c):
        d = (a[0][j, j:j + 1], a[1][j, j:j + 1])
        if not d[0][0] > 0:
            return None
        rjj = _dd_sqrt(d)
        row = _dd_div((a[0][j, j + 1:], a[1][j, j + 1:]), rjj)
        rh[j, j], rl[j, j] = rjj[0][0], rjj[1][0]
        rh[j, j + 1:], rl[j, j + 1:] = row
        if j + 1 < c:
            outer = _dd_mul((row[0][:, None], row[1][:, None]), (row[0][None, :], row[1][None, :]))
            trail = dd_add((a[0][j + 1:, j + 1:], a[1][j + 1:, j + 1:]), _dd_neg(outer))
            a[0][j + 1:, j + 1:], a[1][j + 1:, j + 1:] = trail
    return rh, rl


def dd_back_substitute(r: Pair, b: Pair) -> Pair:
    """Solve the upper-triangular double-double system ``r x = b`` (column-oriented)."""
    n = b[0].shape[0]
    rhs = (b[0].copy(), b[1].copy())
    xh = np.zeros(n)
    xl = np.zeros(n)
    for i in range(n - 1, -1, -1):
        xi = _dd_div((rhs[0][i:i + 1], rhs[1][i:i + 1]), (r[0][i, i:i + 1], r[1][i, i:i + 1]))
        xh[i], xl[i] = xi[0][0], xi[1][0]
        if i:
            col = _dd_mul((r[0][:i, i], r[1][:i, i]), xi)
            head = dd_add((rhs[0][:i], rhs[1][:i]), _dd_neg(col))
            rhs[0][:i], rhs[1][:i] = head
    return xh, xl


def dd_forward_substitute(r: Pair, b: Pair) -> Pair:
    """Solve ``rᵀ x = b`` for upper-triangular double-double r (r reversed is upper)."""
    rev = (r[0].T[::-1, ::-1].copy(), r[1].T[::-1, ::-1].copy())
    xh, xl = dd_back_substitute(rev, (b[0][::-1].copy(), b[1][::-1].copy()))
    return xh[::-1].copy(), xl[::-1].copy()


def dd_dot(a: Pair, b: Pair) -> float:
    """``a·b`` of double-double vectors, accumulated in double-double, rounded to double."""
    ph, pl = _dd_mul(a, b)
    acc: Pair = (np.zeros(1), np.zeros(1))
    for i in range(ph.shape[0]):
        acc = dd_add(acc, (ph[i:i + 1], pl[i:i + 1]))
    return float(acc[0][0] + acc[1][0])
