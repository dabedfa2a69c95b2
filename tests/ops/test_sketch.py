"""Sketching operators: construction, reproducibility, executors and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.ops._random import GRANULE_ROWS, SKETCH_KINDS, SketchSpec, sketch_rows
from blocklin.testing import assert_bitwise_equal
from blocklin.testing.fixtures import ExecutorCase


def _dense(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((9000, 13))


@pytest.mark.parametrize("kind", SKETCH_KINDS)
def test_left_and_right_sketch_match_explicit_matrix(tmp_path: Path, x: np.ndarray,
                                                     kind: str) -> None:
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(1000, None))
    SA, Y = bl.compute(bl.ops.sketch(A, 40, kind=kind, seed=5),  # type: ignore[arg-type]
                       bl.ops.sketch(A, 7, kind=kind, seed=5, side="right"),  # type: ignore[arg-type]
                       work_dir=str(tmp_path / "w"))
    St = _dense(sketch_rows(SketchSpec(kind, 40, 5, side=0), 0, x.shape[0]))  # type: ignore[arg-type]
    Om = _dense(sketch_rows(SketchSpec(kind, 7, 5, side=1), 0, x.shape[1]))  # type: ignore[arg-type]
    assert SA.shape == (40, 13)
    assert _rel(SA, St.T @ x) < 1e-13
    assert Y.shape == (9000, 7)
    assert Y.chunks == (1000, 7)
    assert _rel(Y.to_numpy(), x @ Om) < 1e-13
    assert Y.provenance["seed"] == 5


@pytest.mark.parametrize("kind", SKETCH_KINDS)
def test_same_seed_same_sketch_across_chunkings(tmp_path: Path, x: np.ndarray, kind: str) -> None:
    results = []
    for rows in (700, GRANULE_ROWS, 9000):
        A = bl.from_array(x, tmp_path / f"A{rows}.zarr", chunks=(rows, None))
        results.append(bl.ops.sketch(A, 30, kind=kind, seed=9).compute(  # type: ignore[arg-type]
            work_dir=str(tmp_path / "w")))
    for r in results[1:]:
        # Only the summation order differs between chunkings.
        assert _rel(r, results[0]) < 1e-12
    A2 = bl.open(tmp_path / "A700.zarr")
    again = bl.ops.sketch(A2, 30, kind=kind, seed=9).compute(work_dir=str(tmp_path / "w2"))  # type: ignore[arg-type]
    assert_bitwise_equal(again, results[0])
    other = bl.ops.sketch(A2, 30, kind=kind, seed=10).compute(work_dir=str(tmp_path / "w2"))  # type: ignore[arg-type]
    assert _rel(other, results[0]) > 0.1


def test_sketch_bitwise_identical_on_every_executor(tmp_path: Path, x: np.ndarray,
                                                    executor: ExecutorCase) -> None:
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(500, None))
    lazies = [bl.ops.sketch(A, 25, kind=k, seed=2) for k in SKETCH_KINDS]  # type: ignore[arg-type]
    ref = bl.compute(*lazies, work_dir=str(tmp_path / "ref"))
    got = executor.compute(*lazies)
    for r, g in zip(ref, got, strict=True):
        assert_bitwise_equal(g, r)


@pytest.mark.parametrize("kind", ["sparse_sign", "countsketch"])
def test_sparse_kinds_have_fixed_nonzeros_per_column(kind: str) -> None:
    s = 8 if kind == "sparse_sign" else 1
    St = sketch_rows(SketchSpec(kind, 50, 1), 100, 5000)  # type: ignore[arg-type]
    assert sp.issparse(St)
    assert St.shape == (4900, 50)
    counts = np.diff(St.indptr)
    assert (counts == s).all()
    np.testing.assert_allclose(np.abs(St.data), 1 / np.sqrt(s))
    # Distinct rows of S per column: no duplicate index within a CSR row of Sᵀ.
    rows = St.indices.reshape(4900, s)
    assert (np.diff(np.sort(rows, axis=1), axis=1) > 0).all()


def test_srht_granule_rows_are_orthogonal() -> None:
    # One granule of block SRHT is √(G/k)·D̃RHD: its k rows are orthogonal with squared
    # norm G/k (H orthonormal, R a row selection) — a closed form, not a statistic.
    k = 64
    T = sketch_rows(SketchSpec("srht", k, 3), 0, GRANULE_ROWS).T
    np.testing.assert_allclose(T @ T.T, (GRANULE_ROWS / k) * np.eye(k), atol=1e-10)
    np.testing.assert_allclose(np.abs(T), 1 / np.sqrt(k))


def test_srht_beyond_the_granule_order(tmp_path: Path, x: np.ndarray) -> None:
    # k = 2G samples every row of the Hadamard matrix of order 2G: a granule's block
    # of S is then exactly orthonormal in its columns (H's columns are orthonormal,
    # signs square to one), a closed form.
    k = 2 * GRANULE_ROWS
    T = sketch_rows(SketchSpec("srht", k, 3), 0, GRANULE_ROWS).T
    np.testing.assert_allclose(T[:, :300].T @ T[:, :300], np.eye(300), atol=1e-12)
    # k = 5000 (order 8192): entries ±1/√k, so every column of S has norm exactly one.
    T = sketch_rows(SketchSpec("srht", 5000, 3), 0, 2 * GRANULE_ROWS).T
    np.testing.assert_allclose(np.abs(T), 1 / np.sqrt(5000))
    # k ≤ G samples the same rows as before the limit was lifted (stored sketches keep
    # their meaning): rows drawn from range(G).
    from blocklin.ops._random import hadamard_order

    assert hadamard_order(GRANULE_ROWS) == GRANULE_ROWS
    assert hadamard_order(GRANULE_ROWS + 1) == 2 * GRANULE_ROWS
    A = bl.from_array(x[:3000], tmp_path / "A.zarr", chunks=(1000, None))
    SA = bl.ops.sketch(A, 5000, kind="srht", seed=3).compute(work_dir=str(tmp_path / "w"))
    St = sketch_rows(SketchSpec("srht", 5000, 3), 0, 3000)
    assert _rel(SA, np.asarray(St).T @ x[:3000]) < 1e-13
    # An embedding of the 13 columns: distortion of order √(13/5000).
    u = np.linalg.qr(x[:3000])[0]
    sv = np.linalg.svd(np.asarray(St).T @ u, compute_uv=False)
    assert max(sv.max() - 1, 1 - sv.min()) < 2 * np.sqrt(13 / 5000)


def test_fjlt_is_a_hadamard_step_then_a_sparse_gaussian_projection() -> None:
    from blocklin.ops._random import FJLT_DENSITY, fjlt_factors

    k, G = 48, GRANULE_ROWS
    spec = SketchSpec("fjlt", k, 6)
    St = sketch_rows(spec, G, 2 * G)  # granule 1
    d, pt = fjlt_factors(spec, 1)
    r = np.arange(G)
    H = (1.0 - 2.0 * (np.bitwise_count(r[:, None] & r[None, :]) & 1)) / np.sqrt(G)
    # Sᵀ = D·H·Pᵀ against an explicit Walsh–Hadamard matrix (the FWHT's reference).
    np.testing.assert_allclose(St, d[:, None] * (H @ pt), atol=1e-13)
    assert set(np.unique(d)) == {-1.0, 1.0}
    # P: entries nonzero with probability q = ln²G/G, then N(0, 1/(qk)).
    nz = pt[pt != 0]
    q = nz.size / pt.size
    assert abs(q - FJLT_DENSITY) < 4 * np.sqrt(FJLT_DENSITY / pt.size)
    assert abs(nz.var() * FJLT_DENSITY * k - 1) < 0.05
    assert abs(nz.mean()) < 4 * nz.std() / np.sqrt(nz.size)


def test_fjlt_norm_preservation_distribution() -> None:
    # For x = e₀ the Hadamard step spreads x evenly (|HDx|ᵢ = 1/√G), and
    # ‖Sx‖² = Σᵣ (Σⱼ bᵣⱼ gᵣⱼ yⱼ)²/(qk) has mean 1 and variance
    # (2 + 3(1/q − 1)·Σyⱼ⁴)/k = (2 + 3(1/q − 1)/G)/k (Gaussian fourth moment, Bernoulli
    # masks). ‖Sx‖² is the squared norm of row 0 of Sᵀ.
    from blocklin.ops._random import FJLT_DENSITY

    k, G, q = 64, GRANULE_ROWS, FJLT_DENSITY
    vals = np.array([float(np.sum(sketch_rows(SketchSpec("fjlt", k, seed), 0, 1) ** 2))
                     for seed in range(250)])
    var = (2 + 3 * (1 / q - 1) / G) / k
    assert abs(vals.mean() - 1) < 3 * np.sqrt(var / len(vals))
    assert 0.75 < vals.var(ddof=1) / var < 1.3, vals.var(ddof=1) / var
    # Without the Hadamard step the variance would be (2 + 3(1/q − 1))/k, ~90× larger.
    assert vals.var(ddof=1) < 0.1 * (2 + 3 * (1 / q - 1)) / k


def test_sketch_distribution_moments() -> None:
    # E[SᵀS] = I for every kind: the column norms of S average to one.
    for kind in SKETCH_KINDS:
        St = _dense(sketch_rows(SketchSpec(kind, 32, 4), 0, 20000))  # type: ignore[arg-type]
        norms = (St**2).sum(axis=1)
        assert abs(norms.mean() - 1) < 0.02, kind
    g = _dense(sketch_rows(SketchSpec("gaussian", 32, 4), 0, 20000)) * np.sqrt(32)
    assert abs(g.mean()) < 0.01
    assert abs(g.std() - 1) < 0.01


def test_bad_arguments_are_refused_before_compute(tmp_path: Path, x: np.ndarray) -> None:
    A = bl.from_array(x[:100], tmp_path / "A.zarr")
    with pytest.raises(InputValueError, match="kind"):
        bl.ops.sketch(A, 5, kind="fourier")  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match="at least 1"):
        bl.ops.sketch(A, 0)
    with pytest.raises(InputDtypeError, match="int"):
        bl.ops.sketch(A, 2.5)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match="non-negative"):
        bl.ops.sketch(A, 5, seed=-1)
    with pytest.raises(InputValueError, match="side"):
        bl.ops.sketch(A, 5, side="up")  # type: ignore[arg-type]
    with pytest.raises(InputDtypeError, match="from_array"):
        bl.ops.sketch(x, 5)
    with pytest.raises(InputValueError, match="out="):
        bl.ops.sketch(A, 5, out=str(tmp_path / "o.zarr"))
