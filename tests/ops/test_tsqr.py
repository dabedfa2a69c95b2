"""TSQR and the exact tall-skinny SVD against LAPACK (numpy), on every executor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputValueError, ShapeMismatchError


def _conditioned(m: int, n: int, cond: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (u * np.logspace(0, -np.log10(cond), n)) @ v.T


def test_tsqr_orthogonal_at_cond_1e12(executor, tmp_path: Path) -> None:
    n = 12
    x = _conditioned(230, n, 1e12)
    # 20-row blocks: the last leaf absorbs the 10-row remainder (leaves need >= n rows),
    # and 11 leaves need a two-level tree.
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(20, None))
    Q, R = executor.compute(*bl.ops.tsqr(A))
    q = Q.to_numpy()
    assert Q.shape == (230, n)
    assert Q.chunks == (20, n)
    # The bound: ||QᵀQ - I|| <= 1e-13 n at condition 1e12 (CholeskyQR would fail).
    assert np.abs(q.T @ q - np.eye(n)).max() <= 1e-13 * n
    assert np.abs(q @ R - x).max() <= 1e-14
    assert np.allclose(R, np.triu(R))
    assert (np.diag(R) >= 0).all()
    # Same R as LAPACK's QR of the whole matrix, up to the sign convention.
    r_ref = np.linalg.qr(x, mode="r")
    r_ref *= np.sign(np.diag(r_ref))[:, None]
    assert np.abs(R - r_ref).max() <= 1e-14


def test_tsqr_r_of_joined_columns_one_pass(executor, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5))
    y = rng.standard_normal((300, 1))
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(40, None))
    Y = bl.from_array(y, tmp_path / "y.zarr", chunks=(40, None))
    lazy = bl.ops.tsqr_r(X, Y)
    assert sorted(lazy.explain().source_passes().values()) == [1.0, 1.0]
    r = executor.compute_one(lazy)
    xy = np.hstack([x, y])
    assert np.abs(r.T @ r - xy.T @ xy).max() <= 1e-12
    r_ref = np.linalg.qr(xy, mode="r")
    assert np.abs(r - np.sign(np.diag(r_ref))[:, None] * r_ref).max() <= 1e-13


def test_tsqr_r_on_column_blocks_and_centered_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 6)) + 5.0
    # 5-row blocks (< 6 columns): each leaf joins two row blocks; 4-column blocks join too.
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(5, 4))
    r = bl.ops.tsqr_r(bl.ops.center(A)).compute(work_dir=str(tmp_path / "w"))
    xc = x - x.mean(axis=0)
    assert np.abs(r.T @ r - xc.T @ xc).max() <= 1e-11


def test_svd_exact_tall_skinny(executor, tmp_path: Path) -> None:
    x = _conditioned(400, 10, 1e8, seed=3)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(64, None))
    factors = bl.ops.svd(A)
    assert sorted(factors.U.explain().source_passes().values()) == [2.0]
    U, s, vt = executor.compute(*factors)
    s_ref = np.linalg.svd(x, compute_uv=False)
    # Backward stable: absolute error eps·σ₁ on every singular value.
    assert np.abs(s - s_ref).max() <= 1e-14
    u = U.to_numpy()
    assert np.abs(u.T @ u - np.eye(10)).max() <= 1e-13
    assert np.abs((u * s) @ vt - x).max() <= 1e-14


def test_tsqr_rejects_bad_input(tmp_path: Path) -> None:
    wide = bl.from_array(np.ones((3, 5)), tmp_path / "w.zarr")
    with pytest.raises(InputValueError, match="tall"):
        bl.ops.tsqr(wide)
    a = bl.from_array(np.ones((10, 2)), tmp_path / "a.zarr", chunks=(5, None))
    b = bl.from_array(np.ones((10, 1)), tmp_path / "b.zarr", chunks=(4, None))
    with pytest.raises(ShapeMismatchError, match="row blocks"):
        bl.ops.tsqr_r(a, b)
    with pytest.raises(TypeError):
        bl.ops.tsqr(np.ones((10, 2)))


def test_tsqr_wide_panels_blocked_householder(executor, tmp_path: Path) -> None:
    """60 columns (at least ``QR_BLOCK``): leaves, tree and the Q pass use LAPACK dgeqrt
    and dgemqrt; the same guarantees as the narrow path at condition 1e10."""
    n = 60
    x = _conditioned(700, n, 1e10, seed=4)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    Q, R = executor.compute(*bl.ops.tsqr(A))
    q = Q.to_numpy()
    assert np.abs(q.T @ q - np.eye(n)).max() <= 1e-13 * n
    assert np.abs(q @ R - x).max() <= 1e-14
    assert (np.diag(R) >= 0).all()
    r_ref = np.linalg.qr(x, mode="r")
    r_ref *= np.sign(np.diag(r_ref))[:, None]
    assert np.abs(R - r_ref).max() <= 1e-14
    r_only = executor.compute_one(bl.ops.tsqr_r(A))
    assert np.abs(r_only - R).max() <= 1e-14
