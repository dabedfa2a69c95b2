"""TruncatedSVD.partial_fit on CSR rows: equal to the dense update, never densified."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import blocklin as bl
from blocklin.ml import TruncatedSVD


def _rows(m: int, n: int, per_row: int, seed: int) -> sp.csr_matrix:
    """``per_row`` nonzeros a row, columns weighted 1/sqrt(j+1) (distinct singular values)."""
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n, (m, per_row))
    x = sp.csr_matrix((rng.standard_normal(m * per_row) / np.sqrt(cols.ravel() + 1.0),
                       (np.repeat(np.arange(m), per_row), cols.ravel())), shape=(m, n))
    x.sum_duplicates()
    return x


@pytest.mark.parametrize("stored", [False, True])
def test_csr_partial_fit_equals_dense(stored: bool, tmp_path: Path) -> None:
    x = _rows(600, 80, 8, seed=1)
    dense = x.toarray()
    a = TruncatedSVD(5, n_iter=6, work_dir=str(tmp_path / "w")).fit(dense[:300])
    b = TruncatedSVD(5, n_iter=6, work_dir=str(tmp_path / "w")).fit(dense[:300])
    for lo in (300, 450):
        new = x[lo:lo + 150]
        a.partial_fit(dense[lo:lo + 150])  # LAPACK QR of the dense rows
        rows = bl.from_array(new, tmp_path / f"r{lo}.zarr", chunks=(64, None)) if stored else new
        b.partial_fit(rows)
    # Both are the exact Rayleigh–Ritz step on the same subspaces: equal to rounding.
    assert np.abs(a.singular_values_ - b.singular_values_).max() <= 1e-10 * a.singular_values_[0]
    np.testing.assert_allclose(b.components_, a.components_, atol=1e-10)
    np.testing.assert_allclose(b.explained_variance_, a.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(b.explained_variance_ratio_, a.explained_variance_ratio_,
                               rtol=1e-10)
    assert b.n_samples_seen_ == 600


def test_csr_partial_fit_state_equals_dense(tmp_path: Path) -> None:
    x = _rows(500, 60, 6, seed=2)
    dense = x.toarray()
    a = TruncatedSVD(4, n_iter=6, state_path=str(tmp_path / "a")).fit(dense[:300])
    b = TruncatedSVD(4, n_iter=6, state_path=str(tmp_path / "b")).fit(dense[:300])
    a.partial_fit(dense[300:])
    b.partial_fit(x[300:])
    np.testing.assert_allclose(b.singular_values_, a.singular_values_, rtol=1e-10)
    np.testing.assert_allclose(b.components_, a.components_, atol=1e-10)
    np.testing.assert_allclose(b.explained_variance_ratio_, a.explained_variance_ratio_,
                               rtol=1e-10)


def test_csr_partial_fit_never_densifies(tmp_path: Path) -> None:
    # 1,200 × 30,000 rows: densified they would take 288 MB; their CSR ~0.1 MB. The
    # update's own memory is V (n × k) and a few copies of it.
    n, k = 30_000, 4
    x = _rows(1_600, n, 8, seed=3)
    est = TruncatedSVD(k, n_iter=4, work_dir=str(tmp_path / "w")).fit(x[:400])
    new = x[400:]
    tracemalloc.start()
    try:
        est.partial_fit(new)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * n * k * 8 + 50 * 2**20, peak  # < 62 MB, far below the dense rows
    # And the numbers: an update's singular values never exceed the true ones (it
    # sees the data through subspaces); svds of the whole CSR is the reference.
    full = np.sort(sla.svds(x, k, tol=0, random_state=0)[1])[::-1]
    assert np.all(est.singular_values_ <= full * (1 + 1e-10))
    assert np.all(est.singular_values_ >= 0.5 * full)
    assert est.n_samples_seen_ == 1_600
