"""EASE against a numpy reference (Steck's closed form with numpy's LU inverse), on dense
and CSR stored matrices; partial_fit never reads old rows; recommend as block tasks."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ml import EASE, load
from blocklin.ml import ease as ease_mod

L2 = 25.0


def _interactions(users: int, items: int, seed: int) -> sp.csr_matrix:
    """Binary interactions with power-law item popularity (a few items seen by most)."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    p = np.minimum(0.9, 0.4 * pop / pop.mean() * 0.15)
    x = (rng.random((users, items)) < p[rng.permutation(items)]).astype(np.float64)
    x[0, :-2] = 1.0  # a user who has seen all items but two
    return sp.csr_matrix(x)


def _reference(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's closed form, computed independently: numpy's LU inverse, then the scaling."""
    g = x.T @ x
    p = np.linalg.inv(g + l2 * np.eye(g.shape[0]))
    b = np.eye(g.shape[0]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _reference_top(x: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    scores = x @ b
    scores[x != 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]  # ties by item index
    vals = np.take_along_axis(scores, order, axis=1)
    return np.where(np.isneginf(vals), -1, order), vals


@pytest.fixture(scope="module")
def data() -> sp.csr_matrix:
    return _interactions(700, 90, seed=3)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("panel_items", [90, 32])
def test_fit_matches_numpy_reference(data: sp.csr_matrix, tmp_path: Path, fmt: str,
                                     monkeypatch: pytest.MonkeyPatch, panel_items: int) -> None:
    # 32 columns per Gram panel: three passes, each a column panel of XᵀX summed over
    # groups of row blocks (dense: six groups of one; CSR: a few blocks each).
    monkeypatch.setattr(ease_mod, "_GRAM_PANEL_BYTES", 8 * 90 * panel_items)
    x = data.toarray()
    stored = bl.from_array(x if fmt == "dense" else data, str(tmp_path / "X.zarr"),
                           chunks=(128, None))
    model = EASE(l2=L2, work_dir=str(tmp_path / "work")).fit(stored)
    ref = _reference(x, L2)
    scale = np.abs(ref).max()
    assert np.abs(model.coef_ - ref).max() <= 1e-10 * scale
    assert np.all(np.diag(model.coef_) == 0.0)
    np.testing.assert_allclose(model.gram_, x.T @ x, rtol=0, atol=1e-12)
    assert model.n_samples_seen_ == 700 and model.n_features_in_ == 90
    # In memory, numpy and CSR: the same model.
    for inmem in (x, data):
        other = EASE(l2=L2).fit(inmem)
        assert np.abs(other.coef_ - ref).max() <= 1e-10 * scale


def test_partial_fit_reads_only_new_rows(data: sp.csr_matrix, tmp_path: Path) -> None:
    x = data.toarray()
    old = bl.from_array(data[:450], str(tmp_path / "old.zarr"), chunks=(100, None))
    new = bl.from_array(x[450:], str(tmp_path / "new.zarr"), chunks=(100, None))
    model = EASE(l2=L2, work_dir=str(tmp_path / "work")).fit(old)
    # The old rows are gone: partial_fit can only use the stored Gram.
    shutil.rmtree(tmp_path / "old.zarr")
    model.partial_fit(new)
    ref = _reference(x, L2)
    assert np.abs(model.coef_ - ref).max() <= 1e-10 * np.abs(ref).max()
    assert model.n_samples_seen_ == 700
    # Not fitted: partial_fit fits.
    fresh = EASE(l2=L2).partial_fit(x)
    assert np.abs(fresh.coef_ - ref).max() <= 1e-10 * np.abs(ref).max()


@pytest.mark.parametrize("panel_bytes", [8 * 90 * 90 * 4, 8 * 90 * 16])
def test_recommend_blocks_match_reference(data: sp.csr_matrix, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          panel_bytes: int) -> None:
    # One panel of B, tasks scoring groups of three row blocks (the last one short);
    # or 16 items per panel: six panels, one row block per task, and the merge stage.
    monkeypatch.setattr(ease_mod, "_PANEL_BYTES", panel_bytes)
    x = data.toarray()
    model = EASE(l2=L2, work_dir=str(tmp_path / "work")).fit(data)
    n = 5
    ref_items, ref_scores = _reference_top(x, _reference(x, L2), n)
    stored = bl.from_array(data, str(tmp_path / "X.zarr"), chunks=(96, None))
    for X in (stored, data, x):
        items, scores = model.recommend(X, n)
        assert items.dtype == np.int64 and items.shape == (700, n)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-10, atol=1e-12)
    # The user who has seen all but two items gets those two, then padding.
    assert sorted(ref_items[0, :2]) == [88, 89] and list(ref_items[0, 2:]) == [-1, -1, -1]


@pytest.mark.parametrize("l2", [-1.0, float("nan")])
def test_bad_l2(data: sp.csr_matrix, l2: float) -> None:
    with pytest.raises(InputValueError, match="l2"):
        EASE(l2=l2).fit(data)


def test_singular_gram_without_l2() -> None:
    x = np.zeros((4, 3))
    x[:, 0] = 1.0
    with pytest.raises(InputValueError, match="positive definite"):
        EASE(l2=0.0).fit(x)


def test_save_load_round_trip(data: sp.csr_matrix, tmp_path: Path) -> None:
    model = EASE(l2=L2).fit(data[:500])
    model.save(str(tmp_path / "ease"))
    back = load(str(tmp_path / "ease"))
    assert isinstance(back, EASE) and back.l2 == L2
    np.testing.assert_array_equal(back.coef_, model.coef_)
    np.testing.assert_array_equal(back.recommend(data[500:], 3)[0],
                                  model.recommend(data[500:], 3)[0])
    # The loaded model keeps its Gram: partial_fit continues without the old rows.
    back.partial_fit(data[500:])
    ref = _reference(data.toarray(), L2)
    assert np.abs(back.coef_ - ref).max() <= 1e-10 * np.abs(ref).max()


def test_weights_past_one_mirror_panel() -> None:
    # n = 1,100 > 256, not a multiple of it: the inverse's upper triangle is mirrored
    # panel by panel, the last one short.
    rng = np.random.default_rng(0)
    x = (rng.random((2000, 1100)) < 0.02).astype(np.float64)
    ref = _reference(x, L2)
    b = ease_mod.ease_weights(x.T @ x, L2)
    assert np.abs(b - ref).max() <= 1e-10 * np.abs(ref).max()


@pytest.mark.parametrize("cholesky_max", [4096, 50])
def test_weights_cholesky_and_lu_paths(data: sp.csr_matrix, monkeypatch: pytest.MonkeyPatch,
                                       cholesky_max: int) -> None:
    # Above _CHOLESKY_MAX_ITEMS the inverse goes through LU (threaded OpenBLAS dpotrf
    # crashes on large systems): same B to 1e-10 either way.
    monkeypatch.setattr(ease_mod, "_CHOLESKY_MAX_ITEMS", cholesky_max)
    x = data.toarray()
    ref = _reference(x, L2)
    b = ease_mod.ease_weights(x.T @ x, L2)
    assert np.abs(b - ref).max() <= 1e-10 * np.abs(ref).max()
    with pytest.raises(InputValueError, match="positive definite"):
        ease_mod.ease_weights(np.zeros((90, 90)), 0.0)


def test_check_estimator(tmp_path: Path) -> None:
    from sklearn.utils.estimator_checks import check_estimator

    # on_skip=None: the array-API check skips itself without SCIPY_ARRAY_API (not a failure).
    # Excused, two checks: EASE is a recommender whose X is users × items interactions and
    # whose predict returns a score per item, (users, items), where these checks fit and
    # predict on sparse X and then assert predict's shape is (users,). Everything else
    # they do (fit and predict on every sparse format) is test_sparse_formats_match_dense.
    shape = "predict returns (users, items) scores; checked in test_sparse_formats_match_dense"
    check_estimator(EASE(l2=1.0, work_dir=str(tmp_path)), on_skip=None,
                    expected_failed_checks={"check_estimator_sparse_array": shape,
                                            "check_estimator_sparse_matrix": shape})


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok", "bsr", "dia"])
@pytest.mark.parametrize("container", ["matrix", "array"])
def test_sparse_formats_match_dense(data: sp.csr_matrix, fmt: str, container: str) -> None:
    # What sklearn's sparse checks would run: fit and predict on every scipy sparse
    # format (matrix and array containers, 64-bit indices for CSR-like ones).
    x = data.toarray()
    dense = EASE(l2=L2).fit(x)
    with warnings.catch_warnings():  # building DIA from 700 × 90 random data warns
        warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
        xs = (sp.csr_matrix(data) if container == "matrix" else sp.csr_array(data)).asformat(fmt)
    if fmt in ("csr", "csc", "bsr"):
        xs.indices = xs.indices.astype(np.int64)
        xs.indptr = xs.indptr.astype(np.int64)
    model = EASE(l2=L2).fit(xs)
    np.testing.assert_allclose(model.coef_, dense.coef_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.predict(xs), x @ dense.coef_, rtol=0, atol=1e-10)
    assert model.predict(xs).shape == (700, 90)
