"""gram, matmul, column_stats and the lazy transforms against numpy, on every executor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputDtypeError, ShapeMismatchError
from blocklin.storage import read_meta, store_for
from blocklin.testing import assert_bitwise_equal, random_matrix
from blocklin.testing.fixtures import ExecutorCase

# float64 sums of m products carry relative error ~ m·eps in the worst case; blocked
# sums in a tree grow far slower. 1e-12 holds with room for these sizes.
RTOL = {np.float64: 1e-12, np.float32: 2e-5}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("kind", ["gaussian", "conditioned", "lowrank", "integer"])
@pytest.mark.parametrize("chunks", [(97, None), (1000, None), (250, 7)])
def test_gram_matches_numpy(tmp_path: Path, executor: ExecutorCase, kind: str,
                            chunks: tuple[int, int | None]) -> None:
    x = random_matrix(1000, 23, kind=kind, seed=3)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=chunks)
    g = executor.compute_one(bl.ops.gram(A))
    assert g.shape == (23, 23)
    assert_bitwise_equal(g, g.T)
    assert _rel(g, x.T @ x) < RTOL[np.float64]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_dtypes(tmp_path: Path, dtype: type) -> None:
    x = random_matrix(777, 15, seed=4, dtype=dtype)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    g = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
    assert g.dtype == np.dtype(dtype)
    ref = x.astype(np.float64).T @ x.astype(np.float64)
    assert _rel(g.astype(np.float64), ref) < RTOL[dtype]


def test_integer_matrix_gram_is_float64_and_exact(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(-50, 50, (500, 8)).astype(np.int32)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(64, None))
    g = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
    assert g.dtype == np.float64
    np.testing.assert_array_equal(g, (x.astype(np.int64).T @ x).astype(np.float64))


def test_results_bitwise_identical_across_executors(tmp_path: Path, executor: ExecutorCase) -> None:
    x = random_matrix(2000, 31, seed=5)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(128, None))
    W = random_matrix(31, 4, seed=6)
    ref = bl.compute(bl.ops.gram(A), bl.ops.matmul(A.T, A), bl.ops.matmul(A, W),
                     bl.ops.column_stats(A), work_dir=str(tmp_path / "ref"))
    got = executor.compute(bl.ops.gram(A), bl.ops.matmul(A.T, A), bl.ops.matmul(A, W),
                           bl.ops.column_stats(A))
    assert_bitwise_equal(got[0], ref[0])
    assert_bitwise_equal(got[1], ref[1])
    assert_bitwise_equal(got[2].to_numpy(), ref[2].to_numpy())
    assert_bitwise_equal(got[3].variance, ref[3].variance)


def test_matmul_forms(tmp_path: Path, executor: ExecutorCase) -> None:
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((600, 12)), rng.standard_normal((600, 5))
    b = rng.standard_normal((12, 9))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(50, None))
    Y = bl.from_array(y, tmp_path / "Y.zarr", chunks=(50, None))
    B = bl.from_array(b, tmp_path / "B.zarr", chunks=(5, 4))
    xty, ab, abn = executor.compute(bl.ops.matmul(A.T, Y), bl.ops.matmul(A, B),
                                    bl.ops.matmul(A, b))
    assert _rel(xty, x.T @ y) < 1e-13
    assert ab.shape == (600, 9) and ab.chunks == (50, 4)
    assert _rel(ab.to_numpy(), x @ b) < 1e-13
    assert _rel(abn.to_numpy(), x @ b) < 1e-13


def test_matmul_chained_lazy(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((400, 10)), rng.standard_normal((10, 3))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(64, None))
    g = bl.ops.gram(bl.ops.matmul(A, w)).compute(work_dir=str(tmp_path / "w"))
    assert _rel(g, (x @ w).T @ (x @ w)) < 1e-13


def test_matmul_output_path(tmp_path: Path) -> None:
    x = np.random.default_rng(9).standard_normal((100, 4))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(30, None))
    out = bl.ops.matmul(A, np.eye(4), out=str(tmp_path / "C.zarr")).compute(
        work_dir=str(tmp_path / "w"))
    assert out.url == str(tmp_path / "C.zarr")
    np.testing.assert_array_equal(bl.open(tmp_path / "C.zarr").to_numpy(), x)


def test_column_stats_matches_numpy(tmp_path: Path, executor: ExecutorCase) -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1234, 6)) * [1, 10, 1e3, 1e-3, 5, 1] + [0, 1e6, -3, 0, 2, 0]
    x[rng.random(x.shape) < 0.2] = 0.0
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    s = executor.compute_one(bl.ops.column_stats(A))
    assert s.count == 1234
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(s.variance, x.var(0, ddof=1), rtol=1e-11)
    np.testing.assert_array_equal(s.min, x.min(0))
    np.testing.assert_array_equal(s.max, x.max(0))
    np.testing.assert_allclose(s.norm_l1, np.abs(x).sum(0), rtol=1e-13)
    np.testing.assert_allclose(s.norm_l2, np.linalg.norm(x, axis=0), rtol=1e-13)
    np.testing.assert_array_equal(s.num_nonzeros, np.count_nonzero(x, axis=0))


def test_centering_and_scaling_are_fused(tmp_path: Path, executor: ExecutorCase) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((900, 5)) * [1, 2, 3, 4, 0] + [100, -5, 0, 7, 3]
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(128, None))
    gc, gs = executor.compute(bl.ops.gram(bl.ops.center(A)), bl.ops.gram(bl.ops.standardize(A)),
                              keep_intermediates=True)  # to look at them below
    xc = x - x.mean(0)
    assert _rel(gc, xc.T @ xc) < 1e-12
    std = x.std(0, ddof=1)
    z = np.where(std > 0, xc / np.where(std > 0, std, 1), 0.0)  # MLlib: constant column -> 0
    np.testing.assert_allclose(gs, z.T @ z, rtol=1e-11, atol=1e-9)
    # as the docstring of standardize says: (n - 1) times the covariance / correlation
    np.testing.assert_allclose(gc / 899, np.cov(x.T), rtol=1e-11)
    np.testing.assert_allclose(gs[:4, :4] / 899, np.corrcoef(x[:, :4].T), rtol=1e-11, atol=1e-14)
    # No centered copy was written: only the stats/affine intermediates and the Gram partials.
    shapes = [read_meta(store_for(str(p))).shape  # type: ignore[union-attr]
              for p in executor.work_dir.iterdir() if p.is_dir() and p.name.startswith("a-")]
    assert shapes and x.shape not in shapes


def test_explicit_shift_scale(tmp_path: Path) -> None:
    x = np.random.default_rng(12).standard_normal((200, 3))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(64, None))
    shift, scale = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    g = bl.ops.gram(bl.ops.standardize(A, shift=shift, scale=scale)).compute(
        work_dir=str(tmp_path / "w"))
    z = (x - shift) * scale
    assert _rel(g, z.T @ z) < 1e-13


def test_errors_before_compute(tmp_path: Path) -> None:
    x = np.ones((100, 4))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(30, None))
    B = bl.from_array(np.ones((90, 4)), tmp_path / "B.zarr", chunks=(30, None))
    C = bl.from_array(np.ones((100, 4)), tmp_path / "C.zarr", chunks=(25, None))
    with pytest.raises(ShapeMismatchError, match="same rows"):
        bl.ops.matmul(A.T, B)
    with pytest.raises(ShapeMismatchError, match=r"same row blocks.*chunks=\(30, None\)"):
        bl.ops.matmul(A.T, C)
    with pytest.raises(ShapeMismatchError, match="inner dimensions"):
        bl.ops.matmul(A, B)
    with pytest.raises(ShapeMismatchError):
        bl.ops.matmul(A, np.ones((5, 2)))
    with pytest.raises(InputDtypeError, match=r"bl\.from_array"):
        bl.ops.gram(x)
    with pytest.raises(InputDtypeError, match="compute takes"):
        bl.compute(A)  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match="shape"):
        bl.ops.standardize(A, shift=np.ones(3))
    assert not (tmp_path / "w").exists()


def test_gram_200k_by_500_matches_numpy(tmp_path: Path) -> None:
    """The issue's acceptance size, relative 1e-12 against numpy (LAPACK/BLAS)."""
    x = random_matrix(200_000, 500, seed=13)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(16_384, None))
    g = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
    assert _rel(g, x.T @ x) < 1e-12
