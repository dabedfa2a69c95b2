"""The refinement pass in double-double from error-free transforms: the residual and
gradient against exact rational arithmetic, the same bits with ``np.longdouble`` gone,
and the refinement path of ``LinearRegression`` never reaching for it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp

from blocklin.ml import LinearRegression
from blocklin.ops.glm.passes import run_local
from blocklin.ops.glm.refine import RefineLayout, refine_spec


def _problem(seed: int, rows: int = 90, cols: int = 3, intercept: bool = True,
             zeros: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A nearly exact fit at large offsets (``zeros`` of X's entries zero): y − Zβ
    cancels some 12 digits."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * 1e3 + 5e3
    x[rng.uniform(size=x.shape) < zeros] = 0.0
    beta = rng.standard_normal(cols + int(intercept))
    y = x @ beta[:cols] + (beta[cols] if intercept else 0.0) + 1e-9 * rng.standard_normal(rows)
    w = rng.uniform(0.5, 2.0, rows)
    return x, y, w, beta


def _exact(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, beta: np.ndarray,
           intercept: bool) -> tuple[Fraction, list[Fraction], float, np.ndarray]:
    """Σw r² and Zᵀw r in rational arithmetic from the float64 inputs, and the scales a
    double-double computation's error is relative to: Σ|terms| of each sum, the
    residuals' own terms (|y|, |xⱼβⱼ|, |b|) carried through."""
    p = x.shape[1]
    b = [Fraction(v) for v in beta]
    r, wr = [], []
    for i in range(x.shape[0]):
        ri = Fraction(y[i]) - sum(Fraction(x[i, j]) * b[j] for j in range(p))
        if intercept:
            ri -= b[p]
        r.append(ri)
        wr.append(ri if w is None else Fraction(w[i]) * ri)
    sse = sum(a * c for a, c in zip(wr, r, strict=True))
    grad = [sum(Fraction(x[i, j]) * wr[i] for i in range(x.shape[0])) for j in range(p)]
    if intercept:
        grad.append(sum(wr))
    wt = np.ones(x.shape[0]) if w is None else w
    terms = np.abs(y) + np.abs(x) @ np.abs(beta[:p]) + (abs(beta[p]) if intercept else 0.0)
    ar = np.abs(np.array([float(v) for v in r]))
    per_row = wt * (terms + ar)  # |w r|'s scale: its own size plus r's rounding scale
    z = np.hstack([np.abs(x), np.ones((x.shape[0], 1))]) if intercept else np.abs(x)
    return sse, grad, float(2 * per_row @ ar), z.T @ per_row


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("intercept", [True, False])
def test_refinement_pass_equals_exact_arithmetic(sparse: bool, weighted: bool,
                                                 intercept: bool) -> None:
    """Every digit a double-double keeps: the partials' (hi, lo) sums differ from the
    rational residual sum of squares and gradient by under 2⁻¹⁰⁰ of the terms."""
    x, y, w, coef = _problem(3, intercept=intercept, zeros=0.4 if sparse else 0.0)
    ww = w if weighted else None
    X = sp.csr_matrix(x) if sparse else x
    packed = run_local(refine_spec(coef, intercept, weighted, 1), X, y[:, None], ww, 25)
    sse, grad, sse_scale, grad_scale = _exact(x, y, ww, coef, intercept)
    got = [Fraction(packed[0, k]) + Fraction(packed[1, k]) for k in range(packed.shape[1])]
    # float64 arithmetic would be off by about 2⁻⁵³ of these scales, long double 2⁻⁶⁴.
    assert abs(float(got[0] - sse)) <= 2.0**-100 * sse_scale
    for g, e, s in zip(got[1:], grad, grad_scale, strict=True):
        assert abs(float(g - e)) <= 2.0**-100 * s
    # Rounded to double: the exact values' nearest doubles (or one ulp off).
    out = RefineLayout(coef.size).unpack(packed)
    exact = np.array([float(e) for e in grad])
    assert np.all(np.abs(out.grad - exact) <= np.spacing(np.abs(exact)))
    assert out.sse == pytest.approx(float(sse), rel=2e-16)


def test_refinement_never_touches_longdouble(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``np.longdouble`` gone (as good as gone on Windows and arm64 macOS, where it
    is float64), the refinement pass runs and gives the same bits, and ``auto``'s TSQR
    fit on an ill-conditioned design still takes its refinement pass to the same
    coefficients."""
    x, y, w, beta = _problem(5, rows=400, cols=4)
    spec = refine_spec(beta, True, True, 1)
    X = np.vander(np.linspace(0.0, 5.0, 300), 8, increasing=True)[:, 1:]
    t = np.linspace(0.0, 5.0, 300)
    Y = sum(t**k for k in range(8))
    with_ld = run_local(spec, x, y[:, None], w, 64)
    fit_ld = LinearRegression(solver="auto").fit(X, Y)
    monkeypatch.delattr(np, "longdouble")
    without = run_local(spec, x, y[:, None], w, 64)
    np.testing.assert_array_equal(without, with_ld)
    fit = LinearRegression(solver="auto").fit(X, Y)
    assert fit.solver_ == "qr" and fit.n_passes_ == 2  # TSQR, then the refinement pass
    np.testing.assert_array_equal(fit.coef_, fit_ld.coef_)
    np.testing.assert_allclose(fit.coef_, np.ones(7), rtol=1e-7)


def test_a_panel_refined_in_chunks_agrees_with_small_panels() -> None:
    """A panel larger than the kernel's working chunk (2¹⁹ entries) is refined chunk by
    chunk: the same double-double values (to 2⁻¹⁰⁰ of the terms) as many small panels."""
    x, y, w, coef = _problem(8, rows=300_000, cols=2)
    spec = refine_spec(coef, True, True, 1)
    one = run_local(spec, x, y[:, None], w, 300_000)
    many = run_local(spec, x, y[:, None], w, 1000)
    z = np.hstack([np.abs(x), np.ones((x.shape[0], 1))])
    scale = z.T @ (w * (np.abs(y) + np.abs(x) @ np.abs(coef[:2]) + abs(coef[2])))
    for k in range(1, 4):
        diff = (Fraction(one[0, k]) + Fraction(one[1, k])) - (Fraction(many[0, k])
                                                              + Fraction(many[1, k]))
        assert abs(float(diff)) <= 2.0**-100 * scale[k - 1]
