"""The ``sketch`` solver of LinearRegression: LSQR over X, one pass an iteration.

References are independent of the solver: LAPACK's least squares (``numpy.linalg.lstsq``)
on the stacked ridge system, scipy's LSQR on an explicit preconditioned matrix, and
objectives recomputed from the returned coefficients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
from scipy.sparse.linalg import lsqr

import blocklin as bl
from blocklin.ml import LinearRegression
from blocklin.ml._lsqr import _lsqr
from blocklin.ops.glm.lsqr import lsqr_spec
from blocklin.ops.glm.passes import run_local


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def full_coef(m: LinearRegression) -> np.ndarray:
    return np.r_[m.coef_, m.intercept_]


def ridge_lstsq(X: np.ndarray, y: np.ndarray, w: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """LAPACK's solution of min Σw(y − Xβ − b)² + W·Σ l2ⱼβⱼ² (the stacked system)."""
    n, p = X.shape
    sw = np.sqrt(w)
    Z = np.column_stack([X, np.ones(n)]) * sw[:, None]
    pen = np.column_stack([np.diag(np.sqrt(w.sum() * l2)), np.zeros(p)])
    beta: np.ndarray = np.linalg.lstsq(np.vstack([Z, pen]), np.r_[y * sw, np.zeros(p)],
                                       rcond=None)[0]
    return beta


def objective(X: Any, y: np.ndarray, w: np.ndarray, m: LinearRegression,
              l2: np.ndarray) -> float:
    r = y - X @ m.coef_ - m.intercept_
    return float(0.5 * (w @ r**2) / w.sum() + 0.5 * l2 @ m.coef_**2)


def ill_conditioned(n: int = 3000, p: int = 40, kappa: float = 1e6,
                    seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """X = U·diag(s)·Vᵀ·50 + offsets with s log-spaced from 1 to 1/κ (κ of the centred X
    about κ), and y = Xβ + 2 + a residual orthogonal to [X 1] of relative size ~1e-6."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(n, p)))
    V, _ = np.linalg.qr(rng.normal(size=(p, p)))
    X = (U * np.logspace(0, -np.log10(kappa), p)) @ V.T * 50 + rng.normal(size=p) * 3
    Z = np.column_stack([X, np.ones(n)])
    e = rng.normal(size=n)
    Q, _ = np.linalg.qr(Z)
    e -= Q @ (Q.T @ e)
    return X, Z @ np.r_[rng.normal(size=p), 2.0] + 1e-5 * e


def test_ill_conditioned_stored_design_reaches_lstsq_accuracy(tmp_path: Path) -> None:
    X, y = ill_conditioned()
    Xc = X - X.mean(axis=0)
    assert 5e5 < np.linalg.cond(Xc) < 2e6
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(700, None))  # 5 row blocks
    m = LinearRegression(solver="sketch", tol=1e-12, max_iter=100,
                         work_dir=str(tmp_path / "w")).fit(A, y)
    ref = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)[0]
    # The preconditioned operator has condition number about 3 (sketch of 4p rows), so
    # LSQR halves the error about every iteration: 1e-12 in under 40. Its test on ‖Āᵀr‖
    # bounds the coefficient error by about κ(X)·tol·κ(Ā)²·‖r‖/‖ỹ‖ ≈ 1e-10 here;
    # lstsq's own error is about u·κ(X) ≈ 2e-10.
    assert rel(full_coef(m), ref) <= 1e-9
    assert m.n_iter_ <= 40
    assert m.n_passes_ == 3 + m.n_iter_
    assert len(m.objective_history_) == m.n_iter_ + 1


def test_ridge_with_standardization_matches_closed_form() -> None:
    rng = np.random.default_rng(11)
    n, p = 800, 25
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 20.0, size=p) + rng.normal(size=p) * 5
    y = X @ rng.normal(size=p) + 3.0 + rng.normal(size=n)
    lam = 0.05
    m = LinearRegression(solver="sketch", reg_param=lam, standardization=True, tol=1e-13,
                         max_iter=200).fit(X, y)
    # MLlib's standardization: the L2 weight of βⱼ is λ·σⱼ² (σ unbiased).
    l2 = lam * X.std(axis=0, ddof=1) ** 2
    ref = ridge_lstsq(X, y, np.ones(n), l2)
    np.testing.assert_allclose(full_coef(m), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_weighted_ridge_on_stored_blocks_matches_closed_form(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    n, p = 900, 30
    X = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) + rng.normal(size=p) * 4
    y = X @ rng.normal(size=p) - 1.0 + rng.normal(size=n)
    w = rng.uniform(0.1, 5.0, size=n)
    lam = 0.3
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(200, 8))  # 5 × 4 blocks
    m = LinearRegression(solver="sketch", reg_param=lam, tol=1e-13, max_iter=200,
                         work_dir=str(tmp_path / "w")).fit(A, y, sample_weight=w)
    ref = ridge_lstsq(X, y, w, np.full(p, lam))
    np.testing.assert_allclose(full_coef(m), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    unweighted = LinearRegression(solver="sketch", reg_param=lam, tol=1e-13, max_iter=200).fit(X, y)
    assert rel(full_coef(unweighted), ref) > 1e-3  # the weights matter here


@pytest.mark.parametrize("intercept", [True, False])
def test_sparse_input_agrees_with_dense(intercept: bool) -> None:
    Xs = scipy.sparse.random(1500, 12, density=0.15, random_state=3, format="csr")
    rng = np.random.default_rng(13)
    y = Xs @ rng.normal(size=12) + 0.7 + 0.1 * rng.normal(size=1500)
    kw = {"solver": "sketch", "fit_intercept": intercept, "reg_param": 0.01, "tol": 1e-13,
          "max_iter": 200}
    sparse = LinearRegression(**kw).fit(Xs, y)  # type: ignore[arg-type]
    dense = LinearRegression(**kw).fit(Xs.toarray(), y)  # type: ignore[arg-type]
    np.testing.assert_allclose(sparse.coef_, dense.coef_, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(sparse.intercept_, dense.intercept_, rtol=1e-11, atol=1e-13)
    assert sparse.n_iter_ == dense.n_iter_


def test_objective_history_is_the_objective(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    n, p = 1200, 9
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 3.0, size=p) + 2.0
    y = X @ rng.normal(size=p) + 4.0 + 2.0 * rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    lam = 0.02
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(250, None))
    m = LinearRegression(solver="sketch", reg_param=lam, tol=1e-10, max_iter=100,
                         work_dir=str(tmp_path / "w")).fit(A, y, sample_weight=w)
    l2 = np.full(p, lam)
    hist = np.asarray(m.objective_history_)
    # LSQR's φ̄ is the residual norm of the stacked system: φ̄²/(2W) is the objective.
    np.testing.assert_allclose(hist[-1], objective(X, y, w, m, l2), rtol=1e-10)
    ybar = np.average(y, weights=w)
    np.testing.assert_allclose(hist[0], 0.5 * (w @ (y - ybar) ** 2) / w.sum(), rtol=1e-12)
    assert np.all(np.diff(hist) <= 0)  # LSQR's residual norm never grows


@pytest.mark.parametrize("c", [1.0, 1e-30, -1e30])
def test_lsqr_pass_against_numpy(c: float) -> None:
    rng = np.random.default_rng(15)
    n, p = 700, 5
    dense = rng.normal(size=(n, p)) * (rng.uniform(size=(n, p)) < 0.4)
    y = rng.normal(size=(n, 1))
    w = rng.uniform(0.1, 2.0, size=n)
    coef = rng.normal(size=p + 1)
    t = np.sqrt(w) * (dense @ coef[:p] + coef[p] - c * y[:, 0])
    Z = np.column_stack([dense, np.ones(n)])
    spec = lsqr_spec(coef, c, True, True, 1)
    for x in (dense, scipy.sparse.csr_matrix(dense)):
        out = run_local(spec, x, y, w, 128).reshape(-1)  # six panels, tree-summed
        np.testing.assert_allclose(out[0], t @ t, rtol=1e-12)
        np.testing.assert_allclose(out[1:], Z.T @ (np.sqrt(w) * t), rtol=1e-11,
                                   atol=1e-12 * np.abs(Z).max() * np.abs(t).sum())


def test_lsqr_with_implicit_u_is_lsqr() -> None:
    """Iterates equal scipy's LSQR on the explicit matrix [A; D]·P⁻¹ (u stored there)."""
    rng = np.random.default_rng(16)
    n, p = 400, 7
    A = rng.normal(size=(n, p)) @ np.diag(np.logspace(0, -3, p))
    yt = rng.normal(size=n)
    pen = np.sqrt(np.linspace(0.0, 0.5, p))
    P = np.triu(rng.normal(size=(p, p))) + 3 * np.eye(p)
    K = np.vstack([A, np.diag(pen)])
    Kbar = scipy.linalg.solve_triangular(P, K.T, trans="T").T

    def product(z: np.ndarray, c: float) -> tuple[float, np.ndarray]:
        t = A @ z - c * yt
        return float(t @ t), A.T @ t

    for iters in (1, 4, 9):
        x, norms, it = _lsqr(product, P, pen, iters, 0.0)
        ref = lsqr(Kbar, np.r_[yt, np.zeros(p)], atol=0.0, btol=0.0, conlim=0.0, iter_lim=iters)
        assert it == ref[2] == iters
        np.testing.assert_allclose(x, ref[0], rtol=1e-10, atol=1e-12 * np.abs(ref[0]).max())
        np.testing.assert_allclose(norms[-1], np.linalg.norm(np.r_[yt, np.zeros(p)] - Kbar @ x),
                                   rtol=1e-10)


def test_rank_deficient_design_gives_the_minimum_norm_solution(tmp_path: Path) -> None:
    """A duplicated column, a column that is a combination of two others and a constant
    column: the direct solvers return scikit-learn's (minimum-norm lstsq) solution, not
    merely some least-squares solution (``qr`` used to return 10¹¹-sized coefficients
    here, ``normal`` the least-norm one in equilibrated units)."""
    from sklearn.linear_model import LinearRegression as SkLinearRegression

    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 6))
    X[:, 2] = X[:, 0]
    X[:, 4] = 2.0 * X[:, 1] - X[:, 3]
    X[:, 5] = 3.0
    y = X[:, :4] @ np.array([1.0, -2.0, 0.5, 3.0]) + rng.normal(size=2000)
    ref = SkLinearRegression().fit(X, y)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(500, None))
    for solver in ("sketch", "normal", "qr", "auto"):
        m = LinearRegression(solver=solver, tol=1e-12, work_dir=str(tmp_path / "w")).fit(A, y)
        np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(m.intercept_, ref.intercept_, rtol=1e-8)
