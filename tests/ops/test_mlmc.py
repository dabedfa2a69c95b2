"""The MLMC product estimator: measured variance over seeds against its stated formula,
its a-posteriori error, the planned computation against the in-memory sketch, and its
accuracy against the gaussian sketch on the same data (row-ordered smooth rows, where
it wins, and shuffled rows, where it loses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ops._mlmc import (
    mlmc_estimate,
    mlmc_layout,
    mlmc_matmul,
    mlmc_rows,
    mlmc_sketch,
    mlmc_variance,
)
from blocklin.ops._random import SketchSpec, sketch_rows

SEEDS = 400


def _estimate(a: np.ndarray, b: np.ndarray, k: int, seed: int) -> np.ndarray:
    lay = mlmc_layout(a.shape[0], k)
    st = mlmc_rows(lay, seed, 0, a.shape[0])
    out: np.ndarray = (st.T @ a).T @ (st.T @ b)
    return out


def _smooth(m: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, m)[:, None]
    a = np.sin(2 * np.pi * t * np.arange(1, 7)) + noise * rng.standard_normal((m, 6))
    b = np.cos(3 * np.pi * t * np.arange(1, 5)) + noise * rng.standard_normal((m, 4))
    return a, b


@pytest.mark.parametrize("k", [40, 100])
def test_measured_variance_matches_formula(k: int) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((1000, 5)), rng.standard_normal((1000, 4))
    exact = a.T @ b
    ests = np.stack([_estimate(a, b, k, s) for s in range(SEEDS)])
    measured = float(np.mean(np.sum((ests - exact) ** 2, axis=(1, 2))))
    formula = mlmc_variance(a, b, k)
    # Squared errors are sums of many terms (near chi-square): 400 seeds give ~7% spread.
    assert abs(measured / formula - 1.0) < 0.15, (measured, formula)
    # Unbiased: the mean over seeds is off by about √(formula / seeds).
    assert np.sum((ests.mean(axis=0) - exact) ** 2) < 4.0 * formula / SEEDS


def test_error_estimate_tracks_variance() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((600, 3)), rng.standard_normal((600, 3))
    lay = mlmc_layout(600, 60)
    tags = lay.tags()
    errs = []
    for s in range(SEEDS):
        st = mlmc_rows(lay, s, 0, 600)
        sa = np.concatenate([tags, st.T @ a], axis=1)
        sb = np.concatenate([tags, st.T @ b], axis=1)
        errs.append(mlmc_estimate(sa, sb)[1] ** 2)
    # Horvitz–Thompson sample variances per level: unbiased for the variance.
    assert abs(np.mean(errs) / mlmc_variance(a, b, 60) - 1.0) < 0.15


def test_planned_product_matches_in_memory_sketch(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1500, 4))
    b = sp.random(1500, 3, density=0.3, random_state=4, format="csr")
    A = bl.from_array(a, str(tmp_path / "A.zarr"), chunks=(128, None))
    B = bl.from_array(b, str(tmp_path / "B.zarr"), chunks=(300, None))
    lazy, rows = mlmc_matmul(A, B, 80, seed=7)
    out = lazy.compute(work_dir=str(tmp_path / "w"))
    ref = _estimate(a, b.toarray(), 80, 7)
    np.testing.assert_allclose(out[:-1], ref, rtol=1e-12, atol=1e-12)
    assert rows <= 80
    # Each factor's sketch alone (another pass, another day), then the estimate.
    sa = mlmc_sketch(A, 80, seed=7).compute(work_dir=str(tmp_path / "w"))
    sb = mlmc_sketch(B, 80, seed=7).compute(work_dir=str(tmp_path / "w"))
    est, err = mlmc_estimate(sa, sb)
    np.testing.assert_allclose(est, ref, rtol=1e-12, atol=1e-12)
    assert err == pytest.approx(out[-1, 0], rel=1e-12)


def test_exact_when_the_budget_covers_every_level() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((300, 3)), rng.standard_normal((300, 2))
    np.testing.assert_allclose(_estimate(a, b, 400, 0), a.T @ b, rtol=1e-12, atol=1e-12)
    assert mlmc_variance(a, b, 400) == 0.0


def test_against_gaussian_on_the_same_data() -> None:
    """Row-ordered smooth rows: the corrections are small and MLMC wins by orders of
    magnitude at equal k; the same rows shuffled: it loses to the gaussian sketch."""
    m, k = 4096, 64
    a, b = _smooth(m, 0.05, seed=6)
    gauss = []
    for s in range(100):
        st = sketch_rows(SketchSpec(kind="gaussian", k=k, seed=s), 0, m)
        gauss.append(np.sum(((st.T @ a).T @ (st.T @ b) - a.T @ b) ** 2))
    ml = [np.sum((_estimate(a, b, k, s) - a.T @ b) ** 2) for s in range(100)]
    assert np.mean(ml) < np.mean(gauss) / 50
    perm = np.random.default_rng(7).permutation(m)
    assert mlmc_variance(a[perm], b[perm], k) > np.mean(gauss)


def test_budget_too_small() -> None:
    with pytest.raises(InputValueError, match="kind='mlmc' needs k >="):
        mlmc_layout(10**6, 8)


def test_identical_details_have_no_variance() -> None:
    # Rows alternate +1/-1: every finest-level detail is the same and coarser ones are
    # zero, so sampling any of them gives the exact product (the formula's subtraction).
    a = np.where(np.arange(512) % 2 == 0, 1.0, -1.0)[:, None] * np.array([[1.0, 2.0]])
    assert mlmc_variance(a, a, 40) == pytest.approx(0.0, abs=1e-9)
    for s in range(5):
        np.testing.assert_allclose(_estimate(a, a, 40, s), a.T @ a, rtol=1e-12)


def test_layouts_must_match() -> None:
    a = np.ones((100, 2))
    sa = np.concatenate([mlmc_layout(100, 20).tags(),
                         mlmc_rows(mlmc_layout(100, 20), 0, 0, 100).T @ a], axis=1)
    sb = np.concatenate([mlmc_layout(100, 30).tags(),
                         mlmc_rows(mlmc_layout(100, 30), 0, 0, 100).T @ a], axis=1)
    with pytest.raises(bl.errors.ShapeMismatchError):
        mlmc_estimate(sa, sb)


def test_public_api(tmp_path: Path) -> None:
    from blocklin.ops.sketched_matmul import estimate_product, sketch_for_product

    a, b = _smooth(3000, 0.05, seed=8)
    A = bl.from_array(a, str(tmp_path / "A.zarr"), chunks=(700, None))
    B = bl.from_array(b, str(tmp_path / "B.zarr"), chunks=(1000, None))
    r = bl.ops.sketched_matmul(A, B, 64, kind="mlmc", seed=3).compute(
        work_dir=str(tmp_path / "w"))
    assert r.kind == "mlmc" and r.k == 64
    np.testing.assert_allclose(r.estimate, _estimate(a, b, 64, 3), rtol=1e-12, atol=1e-12)
    sa = sketch_for_product(A, 64, "mlmc", seed=3).compute(work_dir=str(tmp_path / "w"))
    sb = sketch_for_product(B, 64, "mlmc", seed=3).compute(work_dir=str(tmp_path / "w"))
    apart = estimate_product(sa, sb, "mlmc")
    np.testing.assert_allclose(apart.estimate, r.estimate, rtol=1e-12, atol=1e-12)
    assert apart.error == pytest.approx(r.error, rel=1e-12)
    # Smooth ordered rows: well under the gaussian sketch's expected error at this k.
    gauss_rms = np.sqrt((np.sum(a * a) * np.sum(b * b) + np.sum((a.T @ b) ** 2)) / 64)
    assert np.linalg.norm(r.estimate - a.T @ b) < 0.5 * gauss_rms
    with pytest.raises(InputValueError, match="kind='mlmc' needs k"):
        bl.ops.sketched_matmul(A, B, 6, kind="mlmc")
