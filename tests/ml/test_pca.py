"""PCA (whiten included) against scikit-learn's exact PCA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA as SKPCA
from sklearn.utils.estimator_checks import check_estimator

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ml import PCA, load


def _data(m: int = 500, n: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (u * (50.0 * 0.6 ** np.arange(n))) @ v.T + rng.uniform(-3, 3, n)


def _same_signs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b's rows flipped to a's orientation (components are defined up to sign)."""
    return b * np.sign(np.sum(a * b, axis=1))[:, None]


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("method", ["power", "gram"])
def test_against_scikit_learn(whiten: bool, method: str, tmp_path: Path) -> None:
    x = _data()
    k = 5
    est = PCA(k, whiten=whiten, method=method, work_dir=str(tmp_path)).fit(x)
    ref = SKPCA(k, whiten=whiten, svd_solver="full").fit(x)
    np.testing.assert_allclose(est.mean_, ref.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(est.singular_values_, ref.singular_values_, rtol=1e-9)
    np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_,
                               rtol=1e-9)
    np.testing.assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-7)
    comps = _same_signs(est.components_, ref.components_)
    np.testing.assert_allclose(est.components_, comps, atol=1e-9)
    z = est.transform(x)
    zr = ref.transform(x) * np.sign(np.sum(est.components_ * ref.components_, axis=1))
    np.testing.assert_allclose(z, zr, atol=1e-8 * np.abs(zr).max())
    if whiten:
        # Whitened scores: unit variance, uncorrelated.
        np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(k), atol=1e-9)
    # inverse_transform undoes the whitening: the rank-k reconstruction, as scikit-learn's.
    np.testing.assert_allclose(est.inverse_transform(z), ref.inverse_transform(ref.transform(x)),
                               atol=1e-8 * np.abs(x).max())
    assert est.n_passes_ == (1 if method == "gram" else 4)


def test_sparse_and_stored_inputs_agree_with_dense(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xs = sp.random(400, 25, density=0.2, format="csr", random_state=2) * 10.0
    xs = sp.csr_matrix(xs + sp.csr_matrix(np.diag(np.arange(1.0, 26.0)).repeat(16, axis=0)))
    x = xs.toarray()
    dense = PCA(4, whiten=True, method="gram", work_dir=str(tmp_path / "d")).fit(x)
    sparse = PCA(4, whiten=True, method="gram", work_dir=str(tmp_path / "s")).fit(xs)
    np.testing.assert_allclose(sparse.components_, dense.components_, atol=1e-10)
    np.testing.assert_allclose(sparse.transform(xs), dense.transform(x), atol=1e-9)
    A = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    stored = PCA(4, whiten=True, method="gram", work_dir=str(tmp_path / "w")).fit(A)
    z = stored.transform(A)
    assert isinstance(z, bl.BlockMatrix)
    np.testing.assert_allclose(z.to_numpy(), dense.transform(x), atol=1e-9)
    assert rng is not None


def test_save_load_round_trip(tmp_path: Path) -> None:
    x = _data(seed=3)
    est = PCA(3, whiten=True, work_dir=str(tmp_path)).fit(x)
    est.save(tmp_path / "pca.model")
    back = load(tmp_path / "pca.model")
    assert isinstance(back, PCA) and back.whiten
    np.testing.assert_array_equal(back.transform(x), est.transform(x))


def test_bad_parameters_before_any_pass(tmp_path: Path) -> None:
    with pytest.raises(InputValueError, match="n_components"):
        PCA(40, work_dir=str(tmp_path)).fit(_data())
    with pytest.raises(InputValueError, match="2 samples"):
        PCA(1, work_dir=str(tmp_path)).fit(np.ones((1, 3)))


def test_check_estimator(tmp_path: Path) -> None:
    check_estimator(PCA(work_dir=str(tmp_path)), on_skip=None)
    check_estimator(PCA(whiten=True, work_dir=str(tmp_path)), on_skip=None)
