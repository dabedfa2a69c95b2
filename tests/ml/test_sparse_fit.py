"""Estimators on CSR X (in memory and stored): every solver against scikit-learn/numpy
references on the same CSR, and ``auto``'s choice for wide sparse designs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import ElasticNet, Ridge
from sklearn.linear_model import LogisticRegression as SkLogit

import blocklin as bl
from blocklin.ml import LinearRegression, LogisticRegression
from blocklin.ml.linear import auto_solver


def sparse_data(n: int = 1200, p: int = 25, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = sp.random(n, p, density=0.15, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.normal(1.0, 2.0, size=k))
    y = np.asarray(x @ rng.normal(size=p)).reshape(-1) + 3.0 + 0.5 * rng.normal(size=n)
    return x, y


def ols(x: sp.csr_matrix, y: np.ndarray) -> np.ndarray:
    z = np.column_stack([x.toarray(), np.ones(x.shape[0])])
    out: np.ndarray = np.linalg.lstsq(z, y, rcond=None)[0]
    return out


def as_input(x: sp.csr_matrix, stored: bool, tmp_path: Path) -> Any:
    return bl.from_array(x, tmp_path / "X.zarr", chunks=(300, None)) if stored else x


def got(m: Any) -> np.ndarray:
    return np.append(m.coef_, m.intercept_)


@pytest.mark.parametrize("stored", [False, True])
@pytest.mark.parametrize("solver", ["auto", "normal", "qr", "lbfgs", "sketch"])
def test_ols_on_csr_every_solver(solver: str, stored: bool, tmp_path: Path) -> None:
    x, y = sparse_data()
    m = LinearRegression(solver=solver, tol=1e-12, max_iter=500,  # type: ignore[arg-type]
                         work_dir=str(tmp_path / "w")).fit(as_input(x, stored, tmp_path), y)
    ref = ols(x, y)
    # Direct solvers: rounding of a well-conditioned solve; lbfgs: tol·κ; LSQR: its tol.
    tol = {"auto": 1e-11, "normal": 1e-11, "qr": 1e-11, "lbfgs": 1e-7, "sketch": 1e-9}[solver]
    np.testing.assert_allclose(got(m), ref, rtol=0, atol=tol * np.abs(ref).max())
    if solver == "auto":
        assert m.solver_ == "normal"  # not TSQR, whose Householder QR densifies panels


@pytest.mark.parametrize("stored", [False, True])
def test_ridge_and_elastic_net_on_csr_match_sklearn(stored: bool, tmp_path: Path) -> None:
    x, y = sparse_data(seed=1)
    n = x.shape[0]
    Xin = as_input(x, stored, tmp_path)
    work = str(tmp_path / "w")
    # MLlib's 1/(2n)‖r‖² + λ/2‖β‖² is scikit-learn's Ridge with alpha = nλ.
    ridge = Ridge(alpha=0.05 * n, solver="sparse_cg", tol=1e-14, max_iter=100_000).fit(x, y)
    for solver in ("normal", "lbfgs", "sketch"):
        m = LinearRegression(solver=solver, reg_param=0.05, tol=1e-12,  # type: ignore[arg-type]
                             max_iter=500, work_dir=work).fit(Xin, y)
        np.testing.assert_allclose(got(m), np.append(ridge.coef_, ridge.intercept_),
                                   rtol=0, atol=1e-8, err_msg=solver)
    # Elastic net: scikit-learn's objective is the same with alpha = λ, l1_ratio = α.
    enet = ElasticNet(alpha=0.02, l1_ratio=0.5, tol=1e-14, max_iter=1_000_000).fit(x, y)
    for solver in ("normal", "owlqn"):
        m = LinearRegression(solver=solver, reg_param=0.02, elastic_net_param=0.5,  # type: ignore[arg-type]
                             tol=1e-12, max_iter=1000, work_dir=work).fit(Xin, y)
        np.testing.assert_allclose(got(m), np.append(enet.coef_, enet.intercept_),
                                   rtol=0, atol=1e-7, err_msg=solver)


@pytest.mark.parametrize("stored", [False, True])
@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_on_csr_matches_sklearn(classes: int, solver: str, stored: bool,
                                         tmp_path: Path) -> None:
    x, y = sparse_data(n=1500, p=12, seed=2)
    labels = np.digitize(y, np.quantile(y, np.linspace(0, 1, classes + 1)[1:-1]))
    lam = 0.01
    # scikit-learn: C·Σ loss + ½‖β‖², i.e. C = 1/(nλ) for MLlib's 1/n Σ loss + λ/2‖β‖².
    sk = SkLogit(C=1.0 / (x.shape[0] * lam), tol=1e-14, max_iter=10_000).fit(x, labels)
    m = LogisticRegression(solver=solver, reg_param=lam, tol=1e-12, max_iter=500,  # type: ignore[arg-type]
                           work_dir=str(tmp_path / "w")).fit(as_input(x, stored, tmp_path),
                                                             labels)
    ref, out = np.column_stack([sk.coef_, sk.intercept_]), np.column_stack([m.coef_,
                                                                            m.intercept_])
    if classes > 2:  # the softmax is shift-invariant over classes: compare centred rows
        ref, out = ref - ref.mean(axis=0), out - out.mean(axis=0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_auto_picks_a_method_linear_in_the_features_for_wide_designs() -> None:
    solver, why = auto_solver(50_000, False, True)
    assert solver == "lbfgs"
    assert "50,000 features" in why and "18.6 GiB" in why
    assert auto_solver(50_000, True, True)[0] == "owlqn"
    assert auto_solver(30, False, True)[0] == "normal"
    assert auto_solver(30, False, False)[0] == "qr"
    assert "TSQR would densify" in auto_solver(30, False, True)[1]


def test_wide_stored_csr_fits_under_a_small_task_budget(tmp_path: Path) -> None:
    # 3,000 × 6,000 at 0.3%: a 1,000-row panel is 48 MB dense, ~200 KB as CSR; auto
    # goes to L-BFGS (6,000 > 4,096 features) and every pass fits 32 MiB per task.
    rng = np.random.default_rng(5)
    x = sp.random(3000, 6000, density=3e-3, format="csr", random_state=5,
                  data_rvs=rng.standard_normal)
    y = np.asarray(x @ rng.normal(size=6000)).reshape(-1) + rng.normal(size=3000)
    A = bl.from_array(x, tmp_path / "X.zarr", chunks=(1000, None))
    lam = 1e-3
    m = LinearRegression(reg_param=lam, tol=1e-10, max_iter=2000, work_dir=str(tmp_path / "w"),
                         compute_options={"max_task_memory": "32MiB"}).fit(A, y)
    assert m.solver_ == "lbfgs"
    ridge = Ridge(alpha=lam * 3000, solver="sparse_cg", tol=1e-14, max_iter=100_000).fit(x, y)
    ref = np.append(ridge.coef_, ridge.intercept_)
    np.testing.assert_allclose(got(m), ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_diagonal_moments_hold_no_feature_by_feature_matrix() -> None:
    # The iterative solvers' moments pass keeps the diagonal only; a d × d matrix of it
    # (what Moments once built) is 20 GB at 50,000 features.
    from blocklin.ops.glm.moments import Moments

    d = 5_001
    packed = np.zeros((3, d))
    packed[0, :3] = 4.0, 4.0, 4.0
    packed[2] = np.arange(d) * 3.0
    mom = Moments.from_packed(packed, d)
    assert not mom.full and mom.C.size == 0
    np.testing.assert_allclose(mom.std() ** 2, np.arange(d) * 3.0 / 3.0)


@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_wide_in_memory_csr_fit_holds_no_dense_temporaries(model: str) -> None:
    # 3,000 × 6,000 at 0.3%: X dense is 144 MB, a feature × feature matrix 288 MB; the
    # iterative fit holds the CSR chunks, O(p) vectors and L-BFGS's pairs (30 × 2 × p).
    import tracemalloc

    rng = np.random.default_rng(7)
    x = sp.random(3000, 6000, density=3e-3, format="csr", random_state=7,
                  data_rvs=rng.standard_normal)
    y = np.asarray(x @ rng.normal(size=6000)).reshape(-1)
    est: Any = (LinearRegression(reg_param=1e-3, max_iter=20) if model == "linear"
                else LogisticRegression(reg_param=1e-3, max_iter=20))
    target = y if model == "linear" else (y > 0).astype(float)
    tracemalloc.start()
    try:
        est.fit(x, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert est.solver_ == "lbfgs"
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"
