"""Row-append updates of a persisted truncated SVD vs recomputation (LAPACK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import ShapeMismatchError
from blocklin.ops import SVDState, svd_update

N, K = 30, 5


def _low_rank(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, K)) @ rng.standard_normal((K, N))


def _initial(x: np.ndarray, tmp_path: Path) -> SVDState:
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    res = bl.ops.randomized_svd(A, K, work_dir=str(tmp_path / "w"))
    return SVDState.create(tmp_path / "state", res)


def test_ten_row_appends_exact_for_low_rank(tmp_path: Path) -> None:
    x = _low_rank(1500)
    state = _initial(x[:500], tmp_path)
    for t in range(10):
        new = x[500 + 100 * t: 600 + 100 * t]
        if t % 2:  # stored rows: TSQR over their blocks (two passes over the new rows only)
            rows = bl.from_array(new, tmp_path / f"rows{t}.zarr", chunks=(40, None))
            state = svd_update(state, rows, work_dir=str(tmp_path / "w"))
        else:  # in-memory rows, and the state reopened from zarr as after a restart
            state = svd_update(str(tmp_path / "state"), new)
    state = SVDState.open(tmp_path / "state")
    assert state.n_rows == 1500
    assert state.version == 10
    _, s_ref, vt_ref = np.linalg.svd(x, full_matrices=False)
    # Rank-K data: every update is exact up to rounding (issue bound 1e-10).
    assert np.abs(state.s - s_ref[:K]).max() <= 1e-10 * s_ref[0]
    u = state.u_to_numpy()
    assert np.abs(u.T @ u - np.eye(K)).max() <= 1e-12
    assert np.abs((u * state.s) @ state.Vt - x).max() <= 1e-10 * np.abs(x).max()
    # Same subspace and signs as a recomputation with scikit-learn's sign convention.
    flips = np.sign(vt_ref[:K][np.arange(K), np.argmax(np.abs(vt_ref[:K]), axis=1)])
    np.testing.assert_allclose(state.Vt, vt_ref[:K] * flips[:, None], atol=1e-10)


def test_noisy_appends_error_growth_is_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = _low_rank(1500, seed=1) + 1e-3 * rng.standard_normal((1500, N))
    state = _initial(x[:500], tmp_path)
    errors = []
    for t in range(10):
        state = svd_update(state, x[500 + 100 * t: 600 + 100 * t])
        s_ref = np.linalg.svd(x[: 600 + 100 * t], compute_uv=False)[:K]
        errors.append(float(np.abs(state.s - s_ref).max() / s_ref[0]))
    # Each update discards a tail of relative size ~1e-3/σ₁; the top-K values drift by
    # second-order amounts (~tail²), far below the noise level.
    assert max(errors) <= 1e-6, errors


def test_stored_rows_on_every_executor(executor, tmp_path: Path) -> None:
    x = _low_rank(400, seed=2)
    opts = executor.kwargs | {"work_dir": str(executor.work_dir)}
    state = _initial(x[:200], tmp_path)  # the update (TSQR of the new rows) runs on executor
    rows = bl.from_array(x[200:], tmp_path / "rows.zarr", chunks=(64, None))
    state = svd_update(state, rows, **opts)
    s_ref = np.linalg.svd(x, compute_uv=False)[:K]
    assert np.abs(state.s - s_ref).max() <= 1e-10 * s_ref[0]
    u = state.u_to_numpy()
    assert np.abs((u * state.s) @ state.Vt - x).max() <= 1e-10 * np.abs(x).max()


def test_bad_updates_are_refused_and_leave_the_state(tmp_path: Path) -> None:
    x = _low_rank(300)
    state = _initial(x, tmp_path)
    with pytest.raises(ShapeMismatchError):
        svd_update(state, np.ones((10, N + 1)))
    with pytest.raises(ValueError, match="NaN"):
        svd_update(state, np.full((10, N), np.nan))
    with pytest.raises(ValueError, match="exactly one"):
        svd_update(state, np.ones((10, N)), columns=np.ones((300, 2)))
    assert SVDState.open(tmp_path / "state").version == 0
    with pytest.raises(FileExistsError):
        SVDState.create(tmp_path / "state", np.eye(3), np.ones(3), np.eye(3))
