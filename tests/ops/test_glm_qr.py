"""The ``qr`` solver's one pass: what each panel computes, and its condition estimates.

Issue 19 item 3: on a well-conditioned design with a noisy label, ``qr`` took 4.6x the
time of ``normal``. Part of it was a panel forming its exact double-double Gram because
LAPACK's 1-norm condition estimate (dtrcon) overstated the 2-norm κ of a short panel
tenfold, and the least-squares estimate squares it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.ml import LinearRegression
from blocklin.ops.glm.conditioning import conditioning, ls_condition
from blocklin.ops.glm.passes import run_local
from blocklin.ops.glm.qr import qr_spec

tsqr_module = importlib.import_module("blocklin.ops.tsqr")


def _noisy_gaussian(m: int, p: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, p))
    y = x @ (rng.standard_normal(p) / np.sqrt(p)) + 0.5 + rng.standard_normal(m)
    return x, y


def _exact(T: np.ndarray) -> np.ndarray:
    s = np.linalg.norm(T, axis=0)
    sv: np.ndarray = np.linalg.svd(T / s, compute_uv=False)
    return sv


def test_well_conditioned_noisy_design_forms_no_exact_gram() -> None:
    """500-row panels of a Gaussian 60-column design and a 150-row last panel: κ₂ of
    every equilibrated panel is at most 3, so no panel needs the exact Gram (87a2a84's
    1-norm estimate put the short panel's κ_LS above 10² and formed it)."""
    x, y = _noisy_gaussian(1150, 60)
    c = 62  # [X 1 y]
    part = run_local(qr_spec(60, 1, True, False, 1, extend_above=100.0), x, y[:, None], None,
                     500)
    assert part[c, 1] == 3  # panels
    assert part[c, 0] == 0  # panels that formed an exact Gram
    assert not part[c + 2:].any()
    # The R of the pass is [X 1 y]'s, to rounding.
    z = np.column_stack([x, np.ones(1150), y])
    r_ref = np.linalg.qr(z, mode="r")
    r = np.triu(part[:c])
    signs = np.sign(np.diag(r)) * np.sign(np.diag(r_ref))
    np.testing.assert_allclose(r, signs[:, None] * r_ref, atol=1e-12 * np.abs(r_ref).max())


def test_qr_solver_one_pass_on_wide_panels_matches_lstsq(tmp_path: Path) -> None:
    """The blocked (dgeqrt) panel path of the ``qr`` solver on stored data: one pass,
    LAPACK's least-squares solution, the covariance (ZᵀZ)⁻¹ of the summary."""
    x, y = _noisy_gaussian(1150, 60, seed=1)
    A = bl.from_array(x, tmp_path / "X.zarr", chunks=(500, None))
    m = LinearRegression(solver="qr", work_dir=str(tmp_path / "w")).fit(A, y)
    assert (m.n_passes_, m.n_iter_) == (1, 1)
    Z = np.column_stack([x, np.ones(1150)])
    ref = np.linalg.lstsq(Z, y, rcond=None)[0]
    np.testing.assert_allclose(np.r_[m.coef_, m.intercept_], ref, rtol=1e-12, atol=1e-14)
    resid = y - Z @ ref
    np.testing.assert_allclose(m.objective_history_[0], 0.5 * resid @ resid / 1150, rtol=1e-12)
    se = np.sqrt(np.diag(np.linalg.inv(Z.T @ Z)) * (resid @ resid) / (1150 - 61))
    s = m.summary
    assert s.coefficient_standard_errors is not None
    np.testing.assert_allclose(s.coefficient_standard_errors, se, rtol=1e-10)


@pytest.mark.parametrize("case", ["gaussian", "short", "graded", "polynomial"])
def test_condition_estimate_is_a_close_lower_bound(case: str) -> None:
    """The O(k²) power/inverse-iteration estimate of ‖T‖₂ and κ₂ (columns scaled to unit
    norm) against the singular values: never above them, at least 0.8 of them."""
    rng = np.random.default_rng(3)
    if case == "gaussian":
        z = rng.standard_normal((4000, 120))
    elif case == "short":
        z = rng.standard_normal((130, 120))
    elif case == "graded":
        q, _ = np.linalg.qr(rng.standard_normal((80, 80)))
        z = rng.standard_normal((2000, 80)) @ (np.logspace(0, -6, 80)[:, None] * q)
    else:
        t = np.linspace(0.0, 20.0, 400)
        z = np.column_stack([t**k for k in range(7)])
    T = np.linalg.qr(z, mode="r")
    sv = _exact(T)
    est = conditioning(T)
    exact = conditioning(T, sv)
    assert exact == (sv.max(), sv.max() / sv.min())
    assert 0.8 * exact.norm <= est.norm <= exact.norm * (1 + 1e-12)
    assert 0.8 * exact.kappa <= est.kappa <= exact.kappa * (1 + 1e-9)


def test_condition_of_singular_factors_is_infinite() -> None:
    T = np.triu(np.random.default_rng(4).standard_normal((5, 5)))
    T[2, 2] = 0.0
    assert conditioning(T).kappa == np.inf
    T[:, 3] = 0.0
    assert conditioning(T).kappa == np.inf
    assert ls_condition(T, np.ones(5), 1.0) == np.inf


def test_ls_condition_of_noisy_well_conditioned_design_is_small() -> None:
    """Wedin's κ_LS = κ(1 + κ‖r‖/(‖T‖‖β‖)) in 2-norms for a Gaussian design with unit
    noise: a few units (LAPACK's 1-norm κ would put the short panel near 10²)."""
    x, y = _noisy_gaussian(150, 60)
    z = np.column_stack([x, np.ones(150), y])
    R = np.linalg.qr(z, mode="r")
    T = R[:61, :61]
    beta = np.linalg.solve(T, R[:61, 61])
    kls = ls_condition(T, beta, abs(R[61, 61]))
    sv = _exact(T)
    kappa = sv.max() / sv.min()
    assert kls <= ls_condition(T, beta, abs(R[61, 61]), conditioning(T, sv))
    assert kappa < kls < 3 * kappa**2
    assert kls < 100.0


@pytest.mark.parametrize("shape", [(7, 3), (3, 7), (300, 40), (300, 60), (60, 300), (2000, 130)])
def test_householder_r_is_lapacks(shape: tuple[int, int]) -> None:
    """Narrow panels keep dgeqrf's exact bits (scipy's ``qr``); panels at least
    ``QR_BLOCK`` wide use dgeqrt: the same R to rounding, signs included. Factoring in
    place leaves only R behind; without ``overwrite`` the input is untouched."""
    import scipy.linalg

    a = np.random.default_rng(5).standard_normal(shape)
    k = min(shape)
    ref = scipy.linalg.qr(a, mode="r")[0][:k]
    keep = a.copy()
    r = tsqr_module.householder_r(a)
    np.testing.assert_array_equal(a, keep)
    if k < tsqr_module.QR_BLOCK:
        np.testing.assert_array_equal(r, ref)
    else:
        np.testing.assert_allclose(r, ref, atol=1e-13 * np.abs(ref).max())
    f = np.asfortranarray(a)
    np.testing.assert_array_equal(tsqr_module.householder_r(f, overwrite=True), r)


def test_blocked_householder_runs_without_the_gil() -> None:
    """scipy's f2py ``dgeqrt`` holds the GIL for the whole call, which serialized the
    threaded scheduler's QR tasks; blocklin's call releases it: a thread sleeping 1 ms
    wakes on time while another factors panels (it waited out each whole call before).
    Same routine, same bits as scipy's wrapper."""
    import threading
    import time

    import scipy.linalg.lapack

    lapack = importlib.import_module("blocklin.ops._lapack")
    z = np.asfortranarray(np.random.default_rng(6).standard_normal((6000, 300)))
    ref, t_ref, _ = scipy.linalg.lapack.dgeqrt(48, z.copy(order="F"))
    vr, t = lapack.dgeqrt(z.copy(order="F"), 48)
    np.testing.assert_array_equal(vr, ref)
    c = np.asfortranarray(np.random.default_rng(7).standard_normal((6000, 5)))
    np.testing.assert_array_equal(lapack.dgemqrt(vr, t, c.copy(order="F")),
                                  scipy.linalg.lapack.dgemqrt(ref, t_ref, c)[0])
    start = time.perf_counter()
    one = lapack.dgeqrt(z.copy(order="F"), 48)
    call = time.perf_counter() - start
    assert one[0] is not None
    bufs = [z.copy(order="F") for _ in range(8)]
    worker = threading.Thread(target=lambda: [lapack.dgeqrt(b, 48) for b in bufs])
    waits = []
    worker.start()
    while worker.is_alive():
        t0 = time.perf_counter()
        time.sleep(0.001)
        waits.append(time.perf_counter() - t0)
    worker.join()
    # Woken on time in most rounds (a busy machine may delay some) instead of after
    # every call: the median wait is far below one call's duration.
    assert float(np.median(waits)) < 0.5 * call


def _panel(m: int, p: int, offset: float, noise: float, seed: int = 3,
           const: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian design whose columns sit ``offset`` from zero (ill-conditioned with the
    ones column, well conditioned once centred) and a label with R² = 1 − O(noise²)."""
    rng = np.random.default_rng(seed)
    x = offset + rng.standard_normal((m, p))
    y = x @ rng.standard_normal(p) + const + noise * rng.standard_normal(m)
    return x, y[:, None]


def _householder_r(x: np.ndarray, y: np.ndarray, intercept: bool) -> np.ndarray:
    cols = [x, np.ones((len(y), 1)), y] if intercept else [x, y]
    r: np.ndarray = np.linalg.qr(np.hstack(cols), mode="r")
    return r


@pytest.mark.parametrize("intercept", [True, False])
def test_well_conditioned_panel_takes_r_from_its_gram(intercept: bool) -> None:
    """Issue 19 item 3: Householder's flops are 3x a Gram's, so a panel whose (centred)
    design is well conditioned takes R from the Gram's Cholesky factor. RᵀR is the
    panel's Gram, and R agrees with Householder's (up to row signs) to near machine
    precision -- including its last entry, the residual norm, at R² = 1 − 1e-16 where
    the Gram's yᵀy − ‖q‖² keeps hardly a correct digit."""
    glm = importlib.import_module("blocklin.ops.glm.qr")
    x, y = _panel(2000, 30, offset=50.0 if intercept else 0.0, noise=1e-7,
                  const=2.0 if intercept else 0.0)
    r = glm._gram_r(x, intercept, y)
    assert r is not None
    ref = _householder_r(x, y, intercept)
    signs = np.sign(np.diag(r)) * np.sign(np.diag(ref))
    rel = np.abs(r * signs[:, None] - ref).max() / np.abs(ref).max()
    assert rel < 1e-12
    # Float64 data with R² = 1 − 1e-16 pins each residual to ~1e-7 of itself, so both
    # factorizations agree with the exact residual norm to about 1e-8.
    last = _residual_norm(x, y[:, 0], intercept)
    assert abs(abs(r[-1, -1]) - last) <= 1e-7 * last
    assert abs(abs(ref[-1, -1]) - last) <= 1e-7 * last
    # What the Gram alone would say about the residual: hardly a digit of it.
    z = np.hstack([x, np.ones((len(y), 1)), y] if intercept else [x, y])
    g = z.T @ z
    naive = g[-1, -1] - np.sum(scipy_solve_t(r[:-1, :-1], g[:-1, -1]) ** 2)
    assert abs(np.sqrt(abs(naive)) - last) > 1e-3 * last
    out = glm.QRLeaf(1, False, intercept)(None, [x, y])
    np.testing.assert_array_equal(out[0, : r.shape[0]], r)


def _residual_norm(x: np.ndarray, y: np.ndarray, intercept: bool) -> float:
    """‖y − Zβ‖ of the least-squares β, from a refined solve and residuals summed in
    extended precision (``longdouble``; the refinement step makes β's error second order)."""
    z = np.hstack([x, np.ones((len(y), 1))]) if intercept else x
    beta = np.linalg.lstsq(z, y, rcond=None)[0]
    for _ in range(1):
        resid = y.astype(np.longdouble) - z.astype(np.longdouble) @ beta.astype(np.longdouble)
        beta = beta + np.linalg.lstsq(z, resid.astype(np.float64), rcond=None)[0]
    resid = y.astype(np.longdouble) - z.astype(np.longdouble) @ beta.astype(np.longdouble)
    return float(np.sqrt(np.sum(resid * resid)))


def scipy_solve_t(t: np.ndarray, b: np.ndarray) -> np.ndarray:
    import scipy.linalg

    out: np.ndarray = scipy.linalg.solve_triangular(t, b, trans="T")
    return out


def test_ill_conditioned_panel_keeps_householder() -> None:
    """A centred design with κ₂ above the bound (two nearly equal columns) is factored by
    Householder: the leaf's R is LAPACK's, bit for bit."""
    glm = importlib.import_module("blocklin.ops.glm.qr")
    x, y = _panel(2000, 8, offset=0.0, noise=0.1)
    x[:, 1] = x[:, 0] + 1e-3 * x[:, 1]
    assert glm._gram_r(x, True, y) is None
    out = glm.QRLeaf(1, False, True)(None, [x, y])
    z = np.asfortranarray(np.hstack([x, np.ones((len(y), 1)), y]))
    np.testing.assert_array_equal(out[0, :10], tsqr_module.householder_r(z))


def test_qr_solver_on_a_near_exact_fit_matches_lstsq(tmp_path: Path) -> None:
    """End to end through the Gram route: coefficients to 1e-11 and the residual sum of
    squares (the objective) to 1e-8 of numpy's lstsq at R² = 1 − 1e-12."""
    x, y = _panel(6000, 20, offset=30.0, noise=1e-5, seed=5)
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(1000, None))
    Y = bl.from_array(y, tmp_path / "y.zarr", chunks=(1000, None))
    model = LinearRegression(solver="qr", work_dir=str(tmp_path / "w")).fit(X, Y)
    z = np.hstack([x, np.ones((len(y), 1))])
    ref, *_ = np.linalg.lstsq(z, y[:, 0], rcond=None)
    got = np.concatenate([model.coef_, [model.intercept_]])
    assert np.abs(got - ref).max() <= 1e-11 * np.abs(ref).max()
    rss = float(np.sum((y[:, 0] - z @ ref) ** 2))
    assert abs(model.summary.objective_history[-1] * 2 * len(y) - rss) <= 1e-8 * rss
