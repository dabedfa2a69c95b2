"""blocklin.ml.TruncatedSVD: scikit-learn's estimator checks and reference datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.utils.estimator_checks import check_estimator

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ml import TruncatedSVD
from blocklin.ops import SVDState


def _exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LAPACK top-k SVD with scikit-learn's sign convention, and the explained variance ratio."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:k]
    vt *= np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])[:, None]
    ratio = np.var(x @ vt.T, axis=0) / np.var(x, axis=0).sum()
    return s[:k], vt, ratio


def _assert_exact(est: TruncatedSVD, x: np.ndarray) -> None:
    """The fitted factors equal LAPACK's for all of ``x`` (exactly low-rank data)."""
    s, vt, ratio = _exact(x, est.n_components)
    assert est.n_samples_seen_ == x.shape[0]
    np.testing.assert_allclose(est.singular_values_, s, rtol=1e-10)
    np.testing.assert_allclose(est.components_, vt, atol=1e-9)
    np.testing.assert_allclose(est.explained_variance_ratio_, ratio, rtol=1e-9)


def test_check_estimator(tmp_path: Path) -> None:
    # on_skip=None: the array-API check skips itself without SCIPY_ARRAY_API (not a failure).
    check_estimator(TruncatedSVD(work_dir=str(tmp_path)), on_skip=None)


@pytest.mark.parametrize("method", ["power", "krylov", "gram"])
@pytest.mark.parametrize("loader", [load_digits, load_breast_cancer])
def test_reference_datasets(loader: object, method: str, tmp_path: Path) -> None:
    x = loader().data  # type: ignore[attr-defined]
    k = 8
    est = TruncatedSVD(k, n_iter=5, method=method, work_dir=str(tmp_path)).fit(x)
    s, vt, ratio = _exact(x, k)
    # Digits' spectrum decays slowly (σ₉/σ₈ ≈ 0.97): subspace iteration then leaves
    # ~1e-6 relative error in σ₈ (scikit-learn's randomized solver, with the same
    # n_iter and so the same subspace, alike); the Krylov space and the Gram solve are
    # exact to rounding.
    loose = method == "power" and loader is load_digits
    np.testing.assert_allclose(est.singular_values_, s, rtol=1e-5 if loose else 1e-9)
    np.testing.assert_allclose(est.components_, vt, atol=5e-3 if loose else 1e-9)
    np.testing.assert_allclose(est.explained_variance_ratio_, ratio, rtol=1e-5 if loose else 1e-9)
    np.testing.assert_allclose(est.transform(x), x @ est.components_.T, rtol=1e-12)
    assert est.n_passes_ == (1 if method == "gram" else 6)


def test_partial_fit_matches_refit_on_low_rank(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4)) @ rng.standard_normal((4, 12)) + 1.0  # rank 5
    est = TruncatedSVD(5, work_dir=str(tmp_path)).fit(x[:200])
    for start in range(200, 600, 40):
        est.partial_fit(x[start:start + 40])
    _assert_exact(est, x)
    xt = est.transform(x)
    np.testing.assert_allclose(est.inverse_transform(xt), x, atol=1e-9)


def test_stored_and_dask_inputs(tmp_path: Path) -> None:
    import dask.array as da

    x = load_breast_cancer().data
    A = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    by_matrix = TruncatedSVD(3, work_dir=str(tmp_path / "w")).fit(A)
    by_path = TruncatedSVD(3, work_dir=str(tmp_path / "w")).fit(str(tmp_path / "X.zarr"))
    by_dask = TruncatedSVD(3, work_dir=str(tmp_path / "w")).fit(da.from_array(x, chunks=100))
    by_numpy = TruncatedSVD(3, work_dir=str(tmp_path / "w")).fit(x)
    for est in (by_path, by_dask):
        np.testing.assert_allclose(est.components_, by_matrix.components_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(by_numpy.singular_values_, by_matrix.singular_values_,
                               rtol=1e-12)
    xt = by_matrix.transform(A)
    assert isinstance(xt, bl.BlockMatrix)
    np.testing.assert_allclose(xt.to_numpy(), x @ by_matrix.components_.T, rtol=1e-12)
    # Stored appended rows (one TSQR pass over them) update exactly as in-memory ones.
    B = bl.from_array(x[:100], tmp_path / "B.zarr", chunks=(50, None))
    both = by_matrix.partial_fit(B)
    in_memory = by_numpy.partial_fit(x[:100])
    assert both.n_samples_seen_ == x.shape[0] + 100
    np.testing.assert_allclose(both.singular_values_, in_memory.singular_values_, rtol=1e-12)
    np.testing.assert_allclose(both.explained_variance_ratio_,
                               in_memory.explained_variance_ratio_, rtol=1e-10)
    # Full-rank data: the rank-3 update drifts from a refit by the discarded tail only.
    s_ref = np.linalg.svd(np.vstack([x, x[:100]]), compute_uv=False)[:3]
    np.testing.assert_allclose(both.singular_values_, s_ref, rtol=1e-3)


def test_bad_parameters(tmp_path: Path) -> None:
    x = np.ones((10, 3))
    with pytest.raises(InputValueError, match="n_features = 3"):
        TruncatedSVD(4, work_dir=str(tmp_path)).fit(x)
    with pytest.raises(InputValueError, match="method"):
        TruncatedSVD(2, method="arpack", work_dir=str(tmp_path)).fit(x)


def test_sparse_lsa_input_matches_dense(tmp_path: Path) -> None:
    import scipy.sparse as sp

    x = sp.random(500, 60, density=0.05, random_state=1, format="csr")
    x = sp.csr_matrix(x @ sp.diags(np.exp(-np.arange(60) / 6.0)))
    dense = TruncatedSVD(4, work_dir=str(tmp_path)).fit(x.toarray())
    sparse = TruncatedSVD(4, work_dir=str(tmp_path)).fit(x)
    np.testing.assert_allclose(sparse.singular_values_, dense.singular_values_, rtol=1e-12)
    np.testing.assert_allclose(sparse.components_, dense.components_, atol=1e-10)
    np.testing.assert_allclose(sparse.transform(x), dense.transform(x.toarray()), atol=1e-10)
    sparse.partial_fit(x[:50])
    dense.partial_fit(x[:50].toarray())
    np.testing.assert_allclose(sparse.singular_values_, dense.singular_values_, rtol=1e-12)


def test_partial_fit_with_state_path_persists_and_resumes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 4)) @ rng.standard_normal((4, 12)) + 1.0  # rank 5
    path = str(tmp_path / "svd-state")
    est = TruncatedSVD(5, work_dir=str(tmp_path), state_path=path).fit(x[:200])
    assert SVDState.open(path).n_rows == 200
    est.partial_fit(x[200:300])                                            # in memory
    est.partial_fit(bl.from_array(x[300:400], tmp_path / "B.zarr", chunks=(32, None)))
    # Column statistics and CᵀC in one pass, then the new rows' U segment.
    assert est.n_passes_ == 2
    del est
    # After a restart: a new estimator resumes from the state (column summary included).
    again = TruncatedSVD(5, work_dir=str(tmp_path), state_path=path)
    again.partial_fit(sp.csr_matrix(x[400:]))
    _assert_exact(again, x)
    state = SVDState.open(path)
    assert (state.n_rows, state.version) == (600, 3)
    u = state.u_to_numpy()
    np.testing.assert_allclose((u * state.s) @ state.Vt, x, atol=1e-10 * np.abs(x).max())
    with pytest.raises(InputValueError, match="components"):
        TruncatedSVD(4, state_path=path).partial_fit(x[:10])


def test_check_estimator_with_state_path(tmp_path: Path) -> None:
    check_estimator(TruncatedSVD(work_dir=str(tmp_path), state_path=str(tmp_path / "state")),
                    on_skip=None)


def test_partial_fit_stored_rows_gram_pass_and_qr_fallback(tmp_path: Path) -> None:
    """Stored appended rows: one pass (XᵀX with the statistics) when the Gram is well
    conditioned for the k singular values; a TSQR pass more when it is not (rank < k)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 12)) * np.linspace(3.0, 1.0, 12)
    est = TruncatedSVD(3, n_iter=6, work_dir=str(tmp_path / "w")).fit(x[:300])
    est.partial_fit(bl.from_array(x[300:], tmp_path / "B.zarr", chunks=(32, None)))
    assert est.n_passes_ == 1
    ref = TruncatedSVD(3, n_iter=6, work_dir=str(tmp_path / "w")).fit(x[:300]).partial_fit(x[300:])
    np.testing.assert_allclose(est.singular_values_, ref.singular_values_, rtol=1e-12)
    low = rng.normal(size=(400, 2)) @ rng.normal(size=(2, 12))  # rank 2 < k = 3: s'₃ = 0
    est = TruncatedSVD(3, work_dir=str(tmp_path / "w")).fit(low[:300])
    est.partial_fit(bl.from_array(low[300:], tmp_path / "L.zarr", chunks=(32, None)))
    assert est.n_passes_ == 2
    np.testing.assert_allclose(est.singular_values_[:2], np.linalg.svd(low, compute_uv=False)[:2],
                               rtol=1e-10)
