"""LinearRegression against closed forms and scikit-learn, on every solver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet, Lasso, Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from tests.rational import exact_least_squares

import blocklin as bl
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.ml import LinearRegression
from blocklin.types import SOLVERS

L1_SOLVERS = ("auto", "normal", "lbfgs", "owlqn")


def make_data(n: int = 400, p: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 4, size=p) + rng.normal(size=p) * 3
    y = X @ rng.normal(size=p) + 5.0 + rng.normal(size=n) * 2
    w = rng.uniform(0.2, 3.0, size=n)
    return X, y, w


def weighted_ols(X: np.ndarray, y: np.ndarray, w: np.ndarray, intercept: bool) -> np.ndarray:
    Z = np.column_stack([X, np.ones(len(y))]) if intercept else X
    sw = np.sqrt(w)
    beta: np.ndarray = np.linalg.lstsq(Z * sw[:, None], y * sw, rcond=None)[0]
    return beta


def tight(solver: str, **kw: object) -> LinearRegression:
    return LinearRegression(solver=solver, tol=1e-13, max_iter=500, **kw)  # type: ignore[arg-type]


# Iterative solvers stop on a relative objective decrease; their coefficients are
# accurate to about the square root of that (1e-13 -> ~1e-6 relative).
TOL = {"auto": 1e-10, "normal": 1e-10, "qr": 1e-10, "sketch": 1e-8, "lbfgs": 1e-5,
       "owlqn": 1e-5}


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("solver", SOLVERS)
def test_weighted_ols_every_solver(solver: str, intercept: bool) -> None:
    X, y, w = make_data()
    model = tight(solver, fit_intercept=intercept).fit(X, y, sample_weight=w)
    ref = weighted_ols(X, y, w, intercept)
    got = np.concatenate([model.coef_, [model.intercept_]]) if intercept else model.coef_
    np.testing.assert_allclose(got, ref, rtol=TOL[solver], atol=TOL[solver] * np.abs(ref).max())
    assert model.solver_ in SOLVERS


@pytest.mark.parametrize("solver", ["normal", "qr", "lbfgs", "sketch"])
def test_ridge_matches_sklearn(solver: str) -> None:
    X, y, w = make_data(seed=1)
    lam = 0.7
    model = tight(solver, reg_param=lam).fit(X, y, sample_weight=w)
    # sklearn's Ridge minimizes Σw r² + a‖β‖²: a = λ·Σw for MLlib's 1/(2W)Σw r² + λ/2‖β‖².
    ref = Ridge(alpha=lam * w.sum()).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=TOL[solver])
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=TOL[solver])


@pytest.mark.parametrize("solver", L1_SOLVERS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_lasso_elastic_net_match_sklearn(solver: str, alpha: float) -> None:
    X, y, _ = make_data(seed=2)
    lam = 0.3
    model = tight(solver, reg_param=lam, elastic_net_param=alpha).fit(X, y)
    # scikit-learn's ElasticNet objective is MLlib's: 1/(2n)‖r‖² + a·ρ‖β‖₁ + a(1−ρ)/2‖β‖².
    ref = (Lasso(alpha=lam, tol=1e-14, max_iter=100_000) if alpha == 1.0 else
           ElasticNet(alpha=lam, l1_ratio=alpha, tol=1e-14, max_iter=100_000)).fit(X, y)
    tol = 1e-8 if solver in ("auto", "normal") else 1e-4
    np.testing.assert_allclose(model.coef_, ref.coef_, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.intercept_, ref.intercept_, rtol=tol)


def test_diabetes_ols_ridge_lasso() -> None:
    X, y = load_diabetes(return_X_y=True)
    n = len(y)
    ols = LinearRegression().fit(X, y)
    np.testing.assert_allclose(ols.coef_, weighted_ols(X, y, np.ones(n), True)[:-1], rtol=1e-9)
    ridge = LinearRegression(reg_param=1e-3).fit(X, y)
    np.testing.assert_allclose(ridge.coef_, Ridge(alpha=1e-3 * n).fit(X, y).coef_, rtol=1e-9)
    lasso = LinearRegression(reg_param=0.05, elastic_net_param=1.0).fit(X, y)
    ref = Lasso(alpha=0.05, tol=1e-14, max_iter=100_000).fit(X, y)
    np.testing.assert_allclose(lasso.coef_, ref.coef_, rtol=1e-7, atol=1e-6)
    assert (lasso.coef_ == 0).sum() == (ref.coef_ == 0).sum() > 0


def test_standardization_penalizes_standardized_coefficients() -> None:
    X, y, _ = make_data(seed=3)
    lam, alpha = 0.2, 0.4
    model = LinearRegression(reg_param=lam, elastic_net_param=alpha,
                             standardization=True).fit(X, y)
    sd = X.std(axis=0, ddof=1)
    # Closed form by change of variables: fit on X/σ with the plain penalty, map back.
    ref = ElasticNet(alpha=lam, l1_ratio=alpha, tol=1e-14, max_iter=100_000).fit(X / sd, y)
    np.testing.assert_allclose(model.coef_, ref.coef_ / sd, rtol=1e-7, atol=1e-9)


def test_label_scaling_mllib_divides_l2_by_label_std() -> None:
    X, y, _ = make_data(seed=4)
    y = 8.0 * y
    lam = 0.1
    plain = LinearRegression(reg_param=lam).fit(X, y)
    mllib = LinearRegression(reg_param=lam, label_scaling="mllib").fit(X, y)
    n = len(y)
    np.testing.assert_allclose(plain.coef_, Ridge(alpha=lam * n).fit(X, y).coef_, rtol=1e-10)
    sy = y.std(ddof=1)
    np.testing.assert_allclose(mllib.coef_, Ridge(alpha=lam * n / sy).fit(X, y).coef_,
                               rtol=1e-10)
    assert np.abs(plain.coef_ - mllib.coef_).max() > 1e-3


def test_partial_fit_equals_refit(tmp_path: Path) -> None:
    X, y, w = make_data(n=1000, seed=5)
    state = str(tmp_path / "state.zarr")
    full = LinearRegression(reg_param=0.05).fit(X, y, sample_weight=w)
    first = LinearRegression(reg_param=0.05, solver="normal", state_path=state)
    first.fit(X[:600], y[:600], sample_weight=w[:600])
    assert first.n_passes_ == 1
    # A new process: a fresh estimator on the same state path reads only the new rows.
    later = LinearRegression(reg_param=0.05, state_path=state)
    later.partial_fit(X[600:], y[600:], sample_weight=w[600:])
    assert later.n_passes_ == 1
    np.testing.assert_allclose(later.coef_, full.coef_, rtol=1e-10)
    np.testing.assert_allclose(later.intercept_, full.intercept_, rtol=1e-10)
    np.testing.assert_allclose(later.sufficient_stats_, full.sufficient_stats_, rtol=1e-10,
                               atol=1e-10 * np.abs(full.sufficient_stats_).max())


def test_partial_fit_on_stored_blocks(tmp_path: Path) -> None:
    X, y, _ = make_data(n=900, seed=6)
    A1 = bl.from_array(X[:500], tmp_path / "a1.zarr", chunks=(128, None))
    A2 = bl.from_array(X[500:], tmp_path / "a2.zarr", chunks=(100, None))
    m = LinearRegression(solver="normal", work_dir=str(tmp_path / "w")).fit(A1, y[:500])
    m.partial_fit(A2, y[500:])
    np.testing.assert_allclose(m.coef_, weighted_ols(X, y, np.ones(900), True)[:-1], rtol=1e-10)


def test_summary_matches_closed_forms() -> None:
    import scipy.stats

    X, y, _ = make_data(n=300, p=4, seed=7)
    for solver in ("normal", "qr"):
        m = LinearRegression(solver=solver).fit(X, y)
        s = m.summary
        pred = m.predict(X)
        n, p = X.shape
        Z = np.column_stack([X, np.ones(n)])
        resid = y - pred
        sigma2 = resid @ resid / (n - p - 1)
        se = np.sqrt(np.diag(np.linalg.inv(Z.T @ Z)) * sigma2)
        assert s.coefficient_standard_errors is not None and s.p_values is not None
        np.testing.assert_allclose(s.coefficient_standard_errors, se, rtol=1e-8)
        tv = np.concatenate([m.coef_, [m.intercept_]]) / se
        np.testing.assert_allclose(s.p_values, 2 * scipy.stats.t.sf(np.abs(tv), n - p - 1),
                                   rtol=1e-6, atol=1e-300)
        np.testing.assert_allclose(s.r2, r2_score(y, pred), rtol=1e-10)
        np.testing.assert_allclose(s.r2adj, 1 - (1 - s.r2) * (n - 1) / (n - p - 1), rtol=1e-12)
        np.testing.assert_allclose(s.mean_absolute_error, mean_absolute_error(y, pred), rtol=1e-10)
        np.testing.assert_allclose(s.root_mean_squared_error, np.sqrt(np.mean(resid**2)),
                                   rtol=1e-10)
        np.testing.assert_allclose(s.explained_variance, np.mean((pred - y.mean()) ** 2),
                                   rtol=1e-10)
        assert s.degrees_of_freedom == n - p - 1
    lb = LinearRegression(solver="lbfgs").fit(X, y)
    assert lb.summary.coefficient_standard_errors is None
    assert len(lb.summary.objective_history) == lb.n_iter_ + 1


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_qr_one_pass_when_well_conditioned(ridge: float, tmp_path: Path) -> None:
    """TSQR alone on a well-conditioned design: one pass, objective from R's last entry."""
    X, y, w = make_data(n=900, seed=11)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(128, None))
    m = LinearRegression(solver="qr", reg_param=ridge,
                         work_dir=str(tmp_path / "w")).fit(A, y, sample_weight=w)
    assert (m.n_passes_, m.n_iter_, len(m.objective_history_)) == (1, 1, 1)
    ref = Ridge(alpha=ridge * w.sum()).fit(X, y, sample_weight=w) if ridge else None
    coef = weighted_ols(X, y, w, True)[:-1] if ref is None else ref.coef_
    np.testing.assert_allclose(m.coef_, coef, rtol=1e-11)
    r = y - X @ m.coef_ - m.intercept_
    objective = 0.5 * (w @ r**2) / w.sum() + 0.5 * ridge * m.coef_ @ m.coef_
    np.testing.assert_allclose(m.objective_history_[0], objective, rtol=1e-12)


def test_qr_solves_ill_conditioned_design_exactly_in_one_pass(tmp_path: Path) -> None:
    """A degree-6 polynomial design on [0, 20] (κ_LS far above 10³): ``qr`` solves it in
    its single pass from the panels' double-double Grams, to the exact solution of the
    stored data (far closer than a double-precision QR solve); ``auto`` refines instead."""
    from blocklin.ml.linear import QR_REFINE_COND
    from blocklin.ops.glm.conditioning import ls_condition

    x = np.linspace(0.0, 20.0, 400)
    X = np.column_stack([x**k for k in range(1, 7)])
    y = X @ np.ones(6) + 1.0 + np.random.default_rng(0).normal(size=400)
    Z = np.column_stack([X, np.ones(400)])
    exact, sse = exact_least_squares(Z, y)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(90, None))
    m = LinearRegression(solver="qr", work_dir=str(tmp_path / "w")).fit(A, y)
    assert (m.n_passes_, m.n_iter_, len(m.objective_history_)) == (1, 1, 1)
    got = np.concatenate([m.coef_, [m.intercept_]])
    np.testing.assert_allclose(got, exact, rtol=1e-14)
    householder = np.linalg.lstsq(Z, y, rcond=None)[0]
    assert np.max(np.abs(householder - exact) / np.abs(exact)) > 1e-12  # what double gives
    np.testing.assert_allclose(m.objective_history_[0], 0.5 * sse / 400, rtol=1e-13)
    R = np.linalg.qr(Z, mode="r")
    assert ls_condition(R, exact, float(np.sqrt(sse))) > QR_REFINE_COND
    auto = LinearRegression(solver="auto", work_dir=str(tmp_path / "w")).fit(A, y)
    assert (auto.n_passes_, auto.n_iter_) == (2, 2)
    np.testing.assert_allclose(np.concatenate([auto.coef_, [auto.intercept_]]), exact, rtol=1e-9)


def test_qr_exact_solve_with_ridge_and_weights(tmp_path: Path) -> None:
    """The one-pass exact solve carries weights (√w inside the task) and ridge (added to
    the double-double Gram) like the TSQR path: closed form on the same data."""
    x = np.linspace(0.0, 20.0, 300)
    X = np.column_stack([x**k for k in range(1, 6)])
    rng = np.random.default_rng(1)
    y = X @ rng.normal(size=5) + rng.normal(size=300)
    w = rng.uniform(0.5, 2.0, 300)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(70, None))
    lam = 1e-9
    m = LinearRegression(solver="qr", reg_param=lam, work_dir=str(tmp_path / "w")).fit(
        A, y, sample_weight=w)
    assert m.n_passes_ == 1
    Z = np.column_stack([X, np.ones(300)])
    pen = np.diag(np.r_[np.full(5, lam * w.sum()), 0.0])
    sw = np.sqrt(w)
    # The closed form by an augmented least-squares problem (no normal equations).
    aug = np.vstack([Z * sw[:, None], np.sqrt(pen)])
    ref = np.linalg.lstsq(aug, np.r_[y * sw, np.zeros(6)], rcond=None)[0]
    got = np.concatenate([m.coef_, [m.intercept_]])
    np.testing.assert_allclose(got, ref, rtol=1e-7)
    r = y - Z @ got
    objective = 0.5 * (w @ r**2) / w.sum() + 0.5 * lam * m.coef_ @ m.coef_
    np.testing.assert_allclose(m.objective_history_[-1], objective, rtol=1e-9)


def test_qr_refines_when_some_panels_skip_the_exact_gram(tmp_path: Path) -> None:
    """A panel well conditioned on its own (zero residual) skips the exact Gram while the
    whole problem is ill-conditioned (large residual): then a refinement pass follows."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 4))
    X[:, 3] = X[:, 2] + 0.05 * rng.normal(size=400)  # κ ≈ 50: panel A's κ_LS, below 10²
    y = X @ np.full(4, 1e-5)
    y[200:] += rng.normal(scale=30.0, size=200)  # only panel B is noisy: κ_LS ≈ 5·10³
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(200, None))
    m = LinearRegression(solver="qr", work_dir=str(tmp_path / "w")).fit(A, y)
    assert (m.n_passes_, m.n_iter_) == (2, 2)
    Z = np.column_stack([X, np.ones(400)])
    np.testing.assert_allclose(np.concatenate([m.coef_, [m.intercept_]]),
                               exact_least_squares(Z, y)[0], rtol=1e-12)


@pytest.mark.parametrize(("decades", "passes", "tol"), [(3, 2, 1e-12), (5, 3, 1e-10)])
@pytest.mark.parametrize("ridge", [0.0, 1e-8])
def test_auto_refines_ill_conditioned_normal_equations(decades: int, passes: int, tol: float,
                                                       ridge: float, tmp_path: Path) -> None:
    """Over 64 features ``auto`` solves the normal equations; when they are
    ill-conditioned (centred κ(X) = 10³ or 10⁵, features off-centre) one or two
    seminormal refinement passes bring the coefficients to QR accuracy (LAPACK's own
    error here is about κ·10⁻¹⁶), which the plain normal solve does not reach."""
    rng = np.random.default_rng(7)
    n, p = 4000, 80
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    X = rng.normal(size=(n, p)) @ (np.logspace(0, -decades, p)[:, None] * q) + 0.2
    y = X @ (rng.normal(size=p) * 100) + rng.normal(size=n)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(512, None))
    Y = bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(512, None))
    Z = np.column_stack([X, np.ones(n)])
    # The penalized least-squares solution, by LAPACK on the stacked system.
    pen = np.sqrt(n * ridge) * np.eye(p + 1)[:p]
    ref = np.linalg.lstsq(np.vstack([Z, pen]), np.r_[y, np.zeros(p)], rcond=None)[0]
    opts = {"work_dir": str(tmp_path / "w")}
    auto = LinearRegression(solver="auto", reg_param=ridge, compute_options=opts).fit(A, Y)
    plain = LinearRegression(solver="normal", reg_param=ridge, compute_options=opts).fit(A, Y)
    err = lambda m: np.linalg.norm(np.r_[m.coef_, m.intercept_] - ref) / np.linalg.norm(ref)  # noqa: E731
    assert auto.solver_ == "normal" and auto.n_passes_ == passes and plain.n_passes_ == 1
    assert err(auto) < tol < err(plain)


def test_blockmatrix_input_multi_column_blocks_and_weights(tmp_path: Path) -> None:
    X, y, w = make_data(n=700, p=7, seed=8)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(128, 3))
    for solver in ("normal", "qr", "lbfgs", "sketch"):
        m = tight(solver, work_dir=str(tmp_path / "w")).fit(A, y, sample_weight=w)
        ref = weighted_ols(X, y, w, True)
        np.testing.assert_allclose(m.coef_, ref[:-1], rtol=TOL[solver])
        np.testing.assert_allclose(m.predict(A), X @ m.coef_ + m.intercept_, rtol=1e-12)


def test_sparse_input() -> None:
    import scipy.sparse

    Xs = scipy.sparse.random(400, 6, density=0.3, random_state=0, format="csr")
    y = Xs @ np.arange(1.0, 7.0) + 1.0
    m = LinearRegression().fit(Xs, y)
    np.testing.assert_allclose(m.coef_, np.arange(1.0, 7.0), rtol=1e-9)
    np.testing.assert_allclose(m.predict(Xs), y, rtol=1e-9)


@pytest.mark.parametrize(("params", "error"), [
    ({"reg_param": -1.0}, InputValueError),
    ({"elastic_net_param": 1.5}, InputValueError),
    ({"solver": "QR"}, InputValueError),
    ({"solver": 3}, InputDtypeError),
    ({"max_iter": 2.5}, InputDtypeError),
    ({"label_scaling": "spark"}, InputValueError),
    ({"solver": "qr", "reg_param": 0.1, "elastic_net_param": 1.0}, InputValueError),
    ({"solver": "sketch", "reg_param": 0.1, "elastic_net_param": 0.5}, InputValueError),
])
def test_bad_parameters_rejected_before_compute(params: dict[str, object],
                                               error: type[Exception], tmp_path: Path) -> None:
    X, y, _ = make_data(n=50)
    work = tmp_path / "w"
    with pytest.raises(error):
        LinearRegression(work_dir=str(work), **params).fit(X, y)  # type: ignore[arg-type]
    assert not work.exists()


def test_partial_fit_refuses_other_solvers() -> None:
    X, y, _ = make_data(n=50)
    with pytest.raises(InputValueError, match="partial_fit"):
        LinearRegression(solver="qr").partial_fit(X, y)


def test_check_estimator() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    # on_skip=None: the array-API check skips itself without SCIPY_ARRAY_API (not a failure).
    check_estimator(LinearRegression(), on_skip=None)


def test_dask_and_path_inputs(tmp_path: Path) -> None:
    import dask.array as da

    X, y, _ = make_data(n=500, seed=10)
    ref = LinearRegression(solver="normal").fit(X, y)
    work = str(tmp_path / "w")
    dm = LinearRegression(solver="normal", work_dir=work).fit(da.from_array(X, chunks=(128, 6)), y)
    np.testing.assert_allclose(dm.coef_, ref.coef_, rtol=1e-12)
    bl.from_array(X, tmp_path / "X.zarr", chunks=(100, None))
    bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(100, None))
    pm = LinearRegression(solver="normal", work_dir=work).fit(str(tmp_path / "X.zarr"),
                                                              str(tmp_path / "y.zarr"))
    np.testing.assert_allclose(pm.coef_, ref.coef_, rtol=1e-12)
    np.testing.assert_allclose(pm.predict(str(tmp_path / "X.zarr")), ref.predict(X), rtol=1e-12)


@pytest.mark.parametrize("solver", ["normal", "qr", "sketch"])
def test_sparse_blockmatrix_never_densified_in_storage(solver: str, tmp_path: Path) -> None:
    import scipy.sparse

    Xs = scipy.sparse.random(2000, 12, density=0.2, random_state=1, format="csr")
    y = Xs @ np.arange(1.0, 13.0) + 2.0
    A = bl.from_array(Xs, tmp_path / "X.zarr", chunks=(500, None))
    m = tight(solver, work_dir=str(tmp_path / "w")).fit(A, y)
    np.testing.assert_allclose(m.coef_, np.arange(1.0, 13.0), rtol=TOL[solver])
    np.testing.assert_allclose(m.intercept_, 2.0, rtol=TOL[solver])


def test_qr_pass_partials_carry_gram_rows_only_when_panels_may_form_them() -> None:
    """``auto``'s TSQR pass (no exact Gram) keeps c + 2 rows per partial; ``qr``'s adds
    the 2c rows of the double-double Gram (persisted per panel, so the size matters)."""
    from blocklin.ops.glm.qr import qr_spec

    assert qr_spec(500, 1, True, False, 1).part_shape == (504, 502)
    assert qr_spec(500, 1, True, False, 1, extend_above=100.0).part_shape == (3 * 502 + 2, 502)


def test_qr_exact_solve_without_intercept(tmp_path: Path) -> None:
    """The exact-Gram path without an intercept column: a degree-5 polynomial through
    the origin on [1, 20], one pass, the exact solution of the stored data."""
    x = np.linspace(1.0, 20.0, 240)
    X = np.column_stack([x**k for k in range(1, 6)])
    y = X @ np.array([3.0, -1.0, 0.5, 0.01, -1e-3]) + np.random.default_rng(4).normal(size=240)
    exact, sse = exact_least_squares(X, y)
    A = bl.from_array(X, tmp_path / "X.zarr", chunks=(50, None))
    m = LinearRegression(solver="qr", fit_intercept=False, work_dir=str(tmp_path / "w")).fit(A, y)
    assert (m.n_passes_, m.intercept_) == (1, 0.0)
    np.testing.assert_allclose(m.coef_, exact, rtol=1e-13)
    np.testing.assert_allclose(m.objective_history_[-1], 0.5 * sse / 240, rtol=1e-12)
