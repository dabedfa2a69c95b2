"""Double-double kernels against exact rational arithmetic (``fractions``)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from tests.rational import solve_rational

from blocklin.ops.extended import (
    CHUNK_BITS,
    dd_back_substitute,
    dd_cholesky,
    dd_dot,
    dd_forward_substitute,
    dd_mul_exact,
    dd_sum,
    dd_sum_segments,
    exact_gram,
    kappa_limit,
    slices_for,
)


def _exact(v: float) -> Fraction:
    return Fraction(float(v))


def _dd_value(hi: float, lo: float) -> Fraction:
    return _exact(hi) + _exact(lo)


@pytest.mark.parametrize(("rows", "slices", "bound"),
                         [(5, 3, 2.0**-100), (2**CHUNK_BITS + 37, 3, 2.0**-100),
                          (2**CHUNK_BITS + 37, 2, 2.0**-85), (2**CHUNK_BITS + 37, 1, 2.0**-65)])
def test_exact_gram_matches_rational_gram(rows: int, slices: int, bound: float) -> None:
    """Columns over 14 decades, one nearly collinear pair and a zero column: every
    entry within 2^(8 − 20·slices − 53) of the exact |z|ᵀ|z| (2⁻¹⁰⁰ for three slices),
    where float64 misses by 10⁻¹⁶ or more."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((rows, 5)) * np.array([1e-7, 1.0, 1e7, 3.7, 0.0])
    z[:, 3] = z[:, 1] * 1e3 + z[:, 0]
    g = exact_gram(z, slices)
    cols = [[_exact(v) for v in z[:, j]] for j in range(5)]
    worst_dd, worst_double = 0.0, 0.0
    for i in range(5):
        for j in range(i, 5):
            exact = sum(a * b for a, b in zip(cols[i], cols[j], strict=True))
            scale = sum(abs(a * b) for a, b in zip(cols[i], cols[j], strict=True)) or Fraction(1)
            worst_dd = max(worst_dd, float(abs(_dd_value(g[0, i, j], g[1, i, j]) - exact) / scale))
            worst_double = max(worst_double, float(abs(_exact(z[:, i] @ z[:, j]) - exact) / scale))
            assert g[0, i, j] == g[0, j, i] and g[1, i, j] == g[1, j, i]
    assert worst_dd < bound
    assert worst_double > 2.0**-60  # the test data does defeat double precision


def test_slices_follow_the_condition_number() -> None:
    """One slice up to κ ≈ 400, two up to 4·10⁸, three beyond (serving any κ)."""
    assert [slices_for(k) for k in (1.0, 400.0, 1e3, 4e8, 1e9, np.inf)] == [1, 1, 2, 2, 3, 3]
    assert kappa_limit(1) < kappa_limit(2) < kappa_limit(3) == np.inf


def test_dd_cholesky_solves_hilbert_far_beyond_double() -> None:
    """The 9×9 Hilbert matrix (κ ≈ 5·10¹¹): double-double Cholesky and the two
    triangular solves give x to 10⁻²⁰ of the exact rational solution; LAPACK in double
    gets about 10⁻⁵."""
    n = 9
    H = np.array([[1.0 / (i + j + 1) for j in range(n)] for i in range(n)])
    b = np.arange(1.0, n + 1.0)
    exact = solve_rational([[_exact(v) for v in row] for row in H], [_exact(v) for v in b])
    factor = dd_cholesky(np.stack([H, np.zeros_like(H)]))
    assert factor is not None
    y = dd_forward_substitute(factor, (b, np.zeros(n)))
    xh, xl = dd_back_substitute(factor, y)
    err = max(float(abs(_dd_value(xh[i], xl[i]) - exact[i]) / abs(exact[i])) for i in range(n))
    lapack = np.linalg.solve(H, b)
    err_double = max(float(abs(_exact(lapack[i]) - exact[i]) / abs(exact[i])) for i in range(n))
    assert err < 1e-20 < 1e-9 < err_double


def test_dd_cholesky_refuses_singular_and_dd_dot_cancels_exactly() -> None:
    singular = np.ones((3, 3))
    assert dd_cholesky(np.stack([singular, np.zeros((3, 3))])) is None
    # 1e16 + 1 − 1e16 in double-double: the 1 survives (double gives 0).
    hi = np.array([1e16, 1.0, -1e16])
    assert dd_dot((hi, np.zeros(3)), (np.ones(3), np.zeros(3))) == 1.0
    assert float(hi.sum()) != 1.0


def test_dd_sum_is_exact_to_double_double_and_independent_of_order() -> None:
    """Terms spanning 60 binades that cancel to 1e-20 of their size: the extracted sum is
    the rational sum to 2⁻¹⁰⁰ of Σ|terms|, and permuting the terms (numpy then adds in
    another order) gives the same bits, as do the segment sums of the same terms."""
    rng = np.random.default_rng(11)
    big = rng.standard_normal((6, 500)) * 2.0 ** rng.integers(-30, 30, (6, 500))
    ph, pl = dd_mul_exact(big, rng.standard_normal((6, 500)))
    v = np.concatenate([ph, -ph[:, ::-1], pl, rng.standard_normal((6, 4)) * 1e-20], axis=1)
    hi, lo = dd_sum(v, axis=1)
    for i in range(6):
        exact = sum((Fraction(float(t)) for t in v[i]), Fraction(0))
        scale = float(np.abs(v[i]).sum())
        assert abs(float(_dd_value(hi[i], lo[i]) - exact)) <= 2.0**-100 * scale
    perm = rng.permutation(v.shape[1])
    hp, lp = dd_sum(v[:, perm], axis=1)
    np.testing.assert_array_equal(hp, hi)
    np.testing.assert_array_equal(lp, lo)
    ht, lt = dd_sum(np.ascontiguousarray(v.T), axis=0)
    np.testing.assert_array_equal(ht, hi)
    np.testing.assert_array_equal(lt, lo)
    # The same rows as CSR-like segments (one empty), two columns per entry.
    flat = v.reshape(-1, 2)
    indptr = np.array([0, 0] + [(i + 1) * v.shape[1] // 2 for i in range(6)])
    hs, ls = dd_sum_segments(flat, indptr)
    assert hs[0] == 0.0 and ls[0] == 0.0
    np.testing.assert_array_equal(hs[1:], hi)
    np.testing.assert_array_equal(ls[1:], lo)
