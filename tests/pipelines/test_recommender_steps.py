"""EASE and ALS as pipeline steps: outputs equal the estimators' (and EASE's closed form),
EASE's refresh adds only the new users' Gram, and both write a loadable model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tests.pipelines.conftest import base_spec

import blocklin as bl
from blocklin.ml import ALS, load
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline


def _ratings(users: int, seed: int, items: int = 40) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.random(users, items, density=0.15, format="csr", random_state=seed,
                  data_rvs=lambda n: rng.integers(1, 6, n).astype(float))
    return sp.csr_matrix(x)


def _ease_reference(x: np.ndarray, l2: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def test_ease_step_and_refresh(tmp_path: Path, write_spec: Any) -> None:
    x0, x1 = _ratings(300, 0), _ratings(70, 1)
    bl.from_array(x0, tmp_path / "X.zarr", chunks=(100, None))
    sp.save_npz(tmp_path / "b.npz", x1)
    spec = base_spec(steps=[{"name": "ease", "op": "ease", "inputs": {"A": "X"},
                             "params": {"l2": 20.0}}],
                     outputs={"ease": {"step": "ease"}})
    pipe = load_pipeline(write_spec(spec))
    run_pipeline(pipe)
    got = load_small(tmp_path / "out" / "ease.npz")
    np.testing.assert_allclose(got["coef"], _ease_reference(x0.toarray(), 20.0), atol=1e-10)
    m = refresh_pipeline(pipe, str(tmp_path / "b.npz"))
    assert m["refresh"]["outputs"] == {"ease": "incremental"}
    got = load_small(tmp_path / "out" / "ease.npz")
    full = sp.vstack([x0, x1]).toarray()
    np.testing.assert_allclose(got["coef"], _ease_reference(full, 20.0), atol=1e-10)
    assert int(got["n_samples_seen"]) == 370
    model = load(tmp_path / "out" / "ease.model")
    np.testing.assert_array_equal(model.coef_, got["coef"])


def test_als_step_equals_the_estimator(tmp_path: Path, write_spec: Any) -> None:
    x = _ratings(200, 2)
    bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    spec = base_spec(steps=[{"name": "als", "op": "als", "inputs": {"A": "X"},
                             "params": {"rank": 3, "max_iter": 4, "reg_param": 0.05}}],
                     outputs={"als": {"step": "als"}}, refresh=None)
    run_pipeline(load_pipeline(write_spec(spec)))
    got = load_small(tmp_path / "out" / "als.npz")
    ref = ALS(rank=3, max_iter=4, reg_param=0.05, work_dir=str(tmp_path / "w")).fit(x)
    np.testing.assert_allclose(got["user_factors"], ref.user_factors_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["item_factors"], ref.item_factors_, rtol=0, atol=1e-12)
    model = load(tmp_path / "out" / "als.model")
    np.testing.assert_allclose(model.predict(np.array([[0, 1], [5, 7]])),
                               ref.predict(np.array([[0, 1], [5, 7]])), atol=1e-12)
