"""Randomized SVD and PCA against LAPACK (numpy) and scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputDtypeError, InputValueError

M, N, K = 600, 60, 8


def _with_spectrum(s: np.ndarray, m: int = M, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, s.size)))
    v, _ = np.linalg.qr(rng.standard_normal((s.size, s.size)))
    return (u * s) @ v.T


SPECTRA = {
    "decaying": np.exp(-np.arange(N) / 3.0),
    # Equal singular values: the values are determined, the subspace is not.
    "flat": np.ones(N),
    # A tight cluster of K values above a gap (the subspace is well defined).
    "clustered": np.concatenate([1.0 - 1e-3 * np.arange(K), 0.3 * np.exp(-np.arange(N - K) / 10)]),
}


def _sin_theta(vt: np.ndarray, vt_ref: np.ndarray) -> float:
    """Largest sine of the principal angles between two row spaces."""
    return float(np.linalg.norm(vt_ref - (vt_ref @ vt.T) @ vt, 2))


@pytest.mark.parametrize("method", ["power", "krylov", "gram"])
@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
def test_spectra_vs_lapack(spectrum: str, method: str, tmp_path: Path) -> None:
    x = _with_spectrum(SPECTRA[spectrum])
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    res = bl.ops.randomized_svd(A, K, method=method, work_dir=str(tmp_path / "w"))
    _, s_ref, vt_ref = np.linalg.svd(x, full_matrices=False)
    # Values to near machine precision relative to σ₁: the sketch captures the top
    # K directions (gaps >= e^{-1/3} per step, or a 3x gap after the cluster).
    assert np.abs(res.s - s_ref[:K]).max() <= 1e-10 * s_ref[0]
    if spectrum != "flat":
        # Subspace iteration theory: sin Θ shrinks like (σ_{l+1}/σ_K)^(2·passes); gram is exact.
        ratio = (s_ref[K + 10] / s_ref[K - 1]) ** 6 if method != "gram" else 0.0
        assert _sin_theta(res.Vt, vt_ref[:K]) <= 10 * ratio + 1e-9
    assert res.passes == (1 if method == "gram" else 4)


@pytest.mark.parametrize("n_iter", [0, 1, 2])
@pytest.mark.parametrize("centered", [False, True])
def test_n_iter_counts_as_scikit_learn(n_iter: int, centered: bool, tmp_path: Path) -> None:
    """n_iter power iterations span A·(AᵀA)^n_iter·Ω, as in Halko et al. (scikit-learn's
    and dask's n_iter), in n_iter + 1 passes (plus a moments pass for pca at 0)."""
    # A slow decay, so that each degree of the polynomial gives visibly other values.
    x = _with_spectrum(np.linspace(1.0, 0.4, N), m=400) + 0.5
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    width = K + 10
    omega = np.linalg.qr(np.random.default_rng(3).standard_normal((N, width)))[0]
    c = x - x.mean(axis=0) if centered else x
    y = c @ omega
    for _ in range(n_iter):  # the classic scheme: re-orthonormalize after each product
        y = np.linalg.qr(c @ np.linalg.qr(c.T @ np.linalg.qr(y)[0])[0])[0]
    q = np.linalg.qr(y)[0]
    s_ref = np.linalg.svd(q.T @ c, compute_uv=False)[:K]
    run = bl.ops.pca if centered else bl.ops.randomized_svd
    res = run(A, K, n_iter=n_iter, seed=3, work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(res.s, s_ref, rtol=1e-9, atol=1e-12 * s_ref[0])
    assert res.passes == n_iter + 1 + int(centered and n_iter == 0)
    s_true = np.linalg.svd(c, compute_uv=False)[:K]
    assert np.abs(res.s - s_true).max() > 1e-6  # not the exact values: the degree shows


def test_every_executor_bitwise_and_u(executor, tmp_path: Path) -> None:
    x = _with_spectrum(SPECTRA["decaying"], m=300)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    # Fixed-order reductions and a driver-side Ω: bitwise the threaded result.
    ref = bl.ops.randomized_svd(A, 4, n_iter=1, work_dir=str(tmp_path / "ref"))
    res = bl.ops.randomized_svd(A, 4, n_iter=1, compute_options=executor.options)
    np.testing.assert_array_equal(res.s, ref.s)
    np.testing.assert_array_equal(res.Vt, ref.Vt)
    u_ref, s_ref, vt_ref = np.linalg.svd(x, full_matrices=False)
    # One fused pass + TSQR: the tail leaks in at (σ₁₅/σ₄)² ≈ 7e-4, values to its square.
    assert np.abs(res.s - s_ref[:4]).max() <= 1e-6
    U = res.U
    assert U.shape == (300, 4)
    u = U.to_numpy()
    assert np.abs(u.T @ u - np.eye(4)).max() <= 1e-13
    # Same singular vectors as LAPACK up to sign, and U diag(s) Vt reproduces the top 4.
    assert np.abs(np.abs(np.sum(u * u_ref[:, :4], axis=0)) - 1).max() <= 1e-8
    approx = (u * res.s) @ res.Vt
    assert np.abs(approx - (u_ref[:, :4] * s_ref[:4]) @ vt_ref[:4]).max() <= 1e-4


@pytest.mark.parametrize("method", ["power", "gram"])
def test_pca_matches_sklearn_without_centered_copy(method: str, tmp_path: Path) -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(5)
    x = _with_spectrum(SPECTRA["decaying"], m=400) + rng.uniform(-2, 2, N)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(64, None))
    res = bl.ops.pca(A, K, method=method, work_dir=str(tmp_path / "w"))
    ref = PCA(K, svd_solver="full").fit(x)
    np.testing.assert_allclose(res.mean, ref.mean_, rtol=0, atol=1e-14)
    np.testing.assert_allclose(res.explained_variance, ref.explained_variance_, rtol=1e-8)
    # Same sign convention as scikit-learn (svd_flip on the components).
    np.testing.assert_allclose(res.components, ref.components_, atol=1e-6)
    scores = res.U.to_numpy() * res.s
    np.testing.assert_allclose(scores, ref.transform(x), atol=1e-6)
    assert res.passes == (1 if method == "gram" else 4)


def test_gram_accuracy_limit_is_the_squared_condition(tmp_path: Path) -> None:
    # σ from 1 to 1e-10: Gram loses values below sqrt(eps)·σ₁ ≈ 1.5e-8; power keeps them.
    s = np.logspace(0, -10, 20)
    x = _with_spectrum(s, m=200)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(50, None))
    g = bl.ops.randomized_svd(A, 20, method="gram", work_dir=str(tmp_path / "w"))
    p = bl.ops.randomized_svd(A, 20, oversample=0, work_dir=str(tmp_path / "w"))
    assert np.abs(p.s - s).max() <= 1e-15 * 20
    assert np.abs(p.s[-1] / s[-1] - 1) <= 1e-4
    assert np.abs(g.s[-1] / s[-1] - 1) > 1e-2


def test_bad_arguments_fail_before_compute(tmp_path: Path) -> None:
    A = bl.from_array(np.ones((20, 5)), tmp_path / "A.zarr")
    for bad in ({"k": 0}, {"k": 6}, {"k": 2, "oversample": -1}, {"k": 2, "method": "lanczos"}):
        with pytest.raises(InputValueError):
            bl.ops.randomized_svd(A, **bad)
    with pytest.raises(InputDtypeError):
        bl.ops.randomized_svd(A, 2.5)  # type: ignore[arg-type]
    with pytest.raises(InputDtypeError):
        bl.ops.randomized_svd(np.ones((20, 5)), 2)


@pytest.mark.parametrize("method", ["power", "krylov", "gram"])
def test_sparse_matches_dense(method: str, tmp_path: Path) -> None:
    import scipy.sparse as sp

    x = sp.random(800, 40, density=0.05, random_state=0, format="csr")
    x = sp.csr_matrix(x @ sp.diags(np.exp(-np.arange(40) / 4.0)))
    S = bl.from_array(x, tmp_path / "S.zarr", chunks=(128, None))
    D = bl.from_array(x.toarray(), tmp_path / "D.zarr", chunks=(128, None))
    work = str(tmp_path / "w")
    rs = bl.ops.randomized_svd(S, 5, method=method, work_dir=work)
    rd = bl.ops.randomized_svd(D, 5, method=method, work_dir=work)
    # Same Ω and the same products, only the sparse kernels differ: rounding-level agreement.
    np.testing.assert_allclose(rs.s, rd.s, rtol=1e-12)
    np.testing.assert_allclose(rs.Vt, rd.Vt, atol=1e-10)
    np.testing.assert_allclose(rs.U.to_numpy(), rd.U.to_numpy(), atol=1e-10)
    pc = bl.ops.pca(S, 5, method=method, work_dir=work)
    xc = x.toarray() - x.toarray().mean(axis=0)
    s_ref = np.linalg.svd(xc, compute_uv=False)[:5]
    assert np.abs(pc.s - s_ref).max() <= (1e-12 if method != "power" else 1e-3) * s_ref[0]


@pytest.mark.parametrize("method", ["power", "krylov"])
def test_passes_read_storage_once_when_a_fits_the_cache(method: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from blocklin.executors.base import RunStats
    from blocklin.storage.blockcache import process_cache

    x = _with_spectrum(SPECTRA["decaying"])
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    svd = importlib.import_module("blocklin.ops.svd")  # bl.ops.svd is a function
    runs: list[RunStats] = []
    real = svd.compute

    def counted(*results, **kwargs):  # the real compute, with its counters kept
        runs.append(RunStats())
        return real(*results, stats=runs[-1], **kwargs)

    monkeypatch.setattr(svd, "compute", counted)
    res = bl.ops.randomized_svd(A, K, method=method, work_dir=str(tmp_path / "w"))
    blocks = M // 100
    assert len(runs) == res.passes == 4
    # One pass reads A from storage; the other three take every block from memory.
    assert sum(r.cache_misses for r in runs) == blocks
    assert sum(r.cache_hits for r in runs) == 3 * blocks
    assert len(process_cache()) == 0  # the decoded copy does not outlive the call
    cached_reads = sum(r.blocks_read for r in runs)
    runs.clear()
    ref = bl.ops.randomized_svd(A, K, method=method, work_dir=str(tmp_path / "r"),
                                cache_bytes=0)
    assert sum(r.cache_hits for r in runs) == 0
    assert sum(r.blocks_read for r in runs) - cached_reads == 3 * blocks
    np.testing.assert_array_equal(res.s, ref.s)
    np.testing.assert_array_equal(res.Vt, ref.Vt)
    # An A larger than the default budget streams: a partial cache would cost the
    # budget's memory to save a fraction of the reads.
    monkeypatch.setenv("BLOCKLIN_BLOCK_CACHE_BYTES", str(x.nbytes // 2))
    runs.clear()
    big = bl.ops.randomized_svd(A, K, method=method, work_dir=str(tmp_path / "b"))
    assert sum(r.cache_hits for r in runs) == 0
    np.testing.assert_array_equal(big.s, ref.s)
