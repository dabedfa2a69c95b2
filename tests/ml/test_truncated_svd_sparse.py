"""TruncatedSVD.fit on CSR (in memory and stored): the exact top singular values, and no
dense n × d temporary (its peak traced memory stays far below one dense copy of X)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.ml import TruncatedSVD


def _wide(seed: int = 0) -> sp.csr_matrix:
    # 3,000 × 20,000 at 0.1% (60,000 nonzeros, 1 MB as CSR; 480 MB dense), with a
    # clear top spectrum: a rank-5 sparse signal on top of sparse noise.
    rng = np.random.default_rng(seed)
    noise = sp.random(3000, 20000, density=1e-3, format="csr", random_state=seed,
                      data_rvs=rng.standard_normal)
    left = sp.random(3000, 5, density=0.2, format="csr", random_state=seed + 1)
    right = sp.random(5, 20000, density=2e-3, format="csr", random_state=seed + 2)
    return sp.csr_matrix(noise + 20.0 * (left @ right))


@pytest.mark.parametrize("stored", [False, True])
def test_fit_on_csr_matches_lapack_without_dense_temporaries(stored: bool,
                                                             tmp_path: Path) -> None:
    x = _wide()
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(1000, None)) if stored else x
    est = TruncatedSVD(n_components=5, n_iter=4, random_state=0, work_dir=str(tmp_path / "w"))
    tracemalloc.start()
    try:
        est.fit(X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Dense, X is 480 MB; what a fit holds is the CSR blocks and the power iterations'
    # n × (k + p) partials (2.4 MB each, one per row block in flight).
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB; X dense is 480 MB"
    # The reference: the exact top singular values of X (LAPACK on the small Gram
    # side would be 20,000²; scipy's svds on the CSR is exact to its tolerance).
    s_ref = np.sort(sp.linalg.svds(x, k=5, tol=1e-12, random_state=0)[1])[::-1]
    np.testing.assert_allclose(est.singular_values_, s_ref, rtol=1e-6)
    ev = np.asarray((x @ est.components_.T).toarray() if sp.issparse(x @ est.components_.T)
                    else x @ est.components_.T)
    np.testing.assert_allclose(np.linalg.norm(ev, axis=0), s_ref, rtol=1e-6)
