"""Updates of a persisted truncated SVD (rows, columns, low-rank changes) vs LAPACK recomputation."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputDtypeError, ShapeMismatchError
from blocklin.executors import RunStats
from blocklin.ops import SVDState, svd_update
from blocklin.ops.svd_update import UPDATE_METHODS
from blocklin.storage.leases import flush_removals
from blocklin.testing import inject_fault
from blocklin.testing.faults import InjectedFault

N, K = 30, 5
# The module, not the function blocklin.ops re-exports under the same name.
svd_update_module = importlib.import_module("blocklin.ops.svd_update")


def _low_rank(m: int, seed: int = 0, n: int = N, rank: int = K) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))


def _initial(x: np.ndarray, tmp_path: Path, name: str = "state", k: int = K) -> SVDState:
    A = bl.from_array(x, tmp_path / f"{name}-A.zarr", chunks=(100, None))
    res = bl.ops.randomized_svd(A, k, work_dir=str(tmp_path / "w"))
    return SVDState.create(tmp_path / name, res)


def _assert_exact(state: SVDState, x: np.ndarray, *, vt: bool = True) -> None:
    """The state equals the top-k SVD of x (rank(x) <= k): values, U, and U·S·Vt."""
    k = state.k
    assert state.shape == x.shape
    _, s_ref, vt_ref = np.linalg.svd(x, full_matrices=False)
    # Rank <= k data: every update is exact up to rounding (issue bound 1e-10).
    assert np.abs(state.s - s_ref[:k]).max() <= 1e-10 * s_ref[0]
    u = state.u_to_numpy()
    assert np.abs(u.T @ u - np.eye(k)).max() <= 1e-11
    assert np.abs(state.Vt @ state.Vt.T - np.eye(k)).max() <= 1e-11
    assert np.abs((u * state.s) @ state.Vt - x).max() <= 1e-10 * np.abs(x).max()
    if vt:  # same right vectors and signs as a recomputation (scikit-learn's svd_flip)
        ref = vt_ref[:k]
        flips = np.sign(ref[np.arange(k), np.argmax(np.abs(ref), axis=1)])
        np.testing.assert_allclose(state.Vt, ref * flips[:, None], atol=1e-10)


def _files(root: Path) -> dict[str, int]:
    """Every file under root with its modification time (ns): any write shows."""
    flush_removals()  # removed arrays leave the tree before the walk, not under it
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# -- row appends ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", UPDATE_METHODS)
def test_ten_row_appends_exact_for_low_rank(method: str, tmp_path: Path) -> None:
    x = _low_rank(1500)
    state = _initial(x[:500], tmp_path)
    for t in range(10):
        new: Any = x[500 + 100 * t: 600 + 100 * t]
        if method == "sparse" and t % 3 == 0:  # the sparse path's own inputs: CSR rows
            new = sp.csr_matrix(new)
        if t % 2:  # stored rows (dense, or CSR for the sparse path), row blocks unlike A's
            rows = bl.from_array(new, tmp_path / f"rows{t}.zarr", chunks=(40, None))
            state = svd_update(state, rows, method=method, batch=64, work_dir=str(tmp_path / "w"))
        else:  # in-memory rows, and the state reopened from zarr as after a restart
            state = svd_update(str(tmp_path / "state"), new, method=method, batch=64)
    state = SVDState.open(tmp_path / "state")
    assert state.n_rows == 1500
    assert state.version == 10
    assert len(state.terms) == 11
    _assert_exact(state, x)


@pytest.mark.parametrize("method", ["gram", "qr", "sparse"])
def test_rank_growing_appends_exact(method: str, tmp_path: Path) -> None:
    # The first rows span 3 of the data's 5 dimensions: the state's last two singular
    # values are 0 and the appended rows bring new directions (nonzero residuals).
    rng = np.random.default_rng(4)
    basis = rng.standard_normal((K, N))
    x = np.vstack([rng.standard_normal((300, 3)) @ basis[:3],
                   rng.standard_normal((1000, K)) @ basis])
    state = _initial(x[:300], tmp_path)
    assert state.s[-1] <= 1e-12 * state.s[0]
    for t in range(10):
        state = svd_update(state, x[300 + 100 * t: 400 + 100 * t], method=method, batch=64)
    _assert_exact(state, x)


def test_gram_falls_back_to_qr_when_rank_is_below_k(tmp_path: Path) -> None:
    # Rank 3 with k = 5: s'₄ = s'₅ = 0, so C·V'·diag(1/s') is undefined; the update
    # takes the TSQR path instead (its stages show in the run's statistics).
    x = _low_rank(700, seed=5, rank=3)
    state = _initial(x[:300], tmp_path)
    rows = bl.from_array(x[300:], tmp_path / "rows.zarr", chunks=(100, None))
    stats = RunStats()
    state = svd_update(state, rows, method="gram", work_dir=str(tmp_path / "w"), stats=stats)
    assert any("gram" in label for label in stats.stage_tasks)
    assert any("leaf_r" in label or "form_q" in label for label in stats.stage_tasks)
    _assert_exact(state, x, vt=False)  # the null directions of Vt are arbitrary


@pytest.mark.parametrize("method", ["gram", "qr", "sparse"])
def test_noisy_appends_error_growth_is_small(method: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = _low_rank(1500, seed=1) + 0.5 * rng.standard_normal((1500, N))
    state = _initial(x[:500], tmp_path)
    errors, angles = [], []
    for t in range(10):
        state = svd_update(state, x[500 + 100 * t: 600 + 100 * t], method=method, batch=64)
        _, s_ref, vt_ref = np.linalg.svd(x[: 600 + 100 * t], full_matrices=False)
        errors.append(float(np.abs(state.s - s_ref[:K]).max() / s_ref[0]))
        # sin of the largest principal angle between the updated and the exact top-K
        # right subspaces.
        angles.append(float(np.linalg.norm(state.Vt.T - vt_ref[:K].T @ (vt_ref[:K] @ state.Vt.T),
                                           2)))
    print(f"{method}: relative error of s after each append {[f'{e:.1e}' for e in errors]}; "
          f"subspace angle {[f'{a:.1e}' for a in angles]}")
    # Each update discards a tail of size ~σ_{K+1} (≈ 22 against σ₁ ≈ 277, σ_K ≈ 142):
    # the kept values drift by second-order amounts, the subspace by first-order ones
    # damped by the gap (observed: 1.3e-6 and 2.6e-4 after ten appends).
    s_all = np.linalg.svd(x, compute_uv=False)
    assert max(errors) <= 1e-2 * (s_all[K] / s_all[0]) ** 2, errors
    assert max(angles) <= 1e-2 * s_all[K] / s_all[K - 1], angles


def test_sparse_rows_wider_than_the_gram_limit(tmp_path: Path) -> None:
    # n = 9,000 > GRAM_MAX_COLUMNS: "auto" takes the sparse path (no n × n matrix).
    n, k = 9_000, 4
    right = sp.random(k, n, density=0.01, random_state=7, format="csr")
    x = sp.csr_matrix(sp.random(450, k, density=0.5, random_state=8) @ right)
    dense_x = x.toarray()
    A = bl.from_array(dense_x[:150], tmp_path / "A.zarr")
    state = SVDState.create(tmp_path / "state", bl.ops.randomized_svd(
        A, k, n_iter=4, work_dir=str(tmp_path / "w")))
    stored = bl.from_array(x[300:], tmp_path / "rows.zarr", chunks=(64, None))
    state = svd_update(state, x[150:300], batch=100)
    state = svd_update(state, stored, batch=100)
    # Each call changes few of V's 9,000 base rows: both are log records over the
    # first version, their U rows pending (in memory and in the records).
    assert [t.rows for t in state.terms] == [150]
    assert [p.shape[0] for p in state.pending] == [150, 150] and len(state.log) == 2
    _assert_exact(state, dense_x, vt=False)
    reopened = SVDState.open(tmp_path / "state")
    assert reopened.version == 2 and reopened.log == state.log
    _assert_exact(reopened, dense_x, vt=False)


# -- columns and low-rank changes ------------------------------------------------------------
def test_column_appends_exact_for_low_rank(tmp_path: Path) -> None:
    x = _low_rank(600, seed=7, n=60)
    state = _initial(x[:, :30], tmp_path)
    state = svd_update(state, columns=x[:, 30:40])                       # in memory
    D = bl.from_array(x[:, 40:50], tmp_path / "D.zarr", chunks=(70, None))
    state = svd_update(str(tmp_path / "state"), columns=D,              # stored, reopened
                       work_dir=str(tmp_path / "w"))
    state = svd_update(state, columns=sp.csr_matrix(x[:, 50:60]))       # sparse: Deng et al.
    state = SVDState.open(tmp_path / "state")
    # The sparse columns lie inside span(U) (rank <= k): Deng et al.'s path adds no term.
    assert [t.width for t in state.terms] == [K, 10, 10]
    assert len(state.log) == 1
    assert all(t.rows == 600 and t.row == 0 for t in state.terms)
    _assert_exact(state, x)


def test_low_rank_changes_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x = _low_rank(500, seed=9, rank=2)
    state = _initial(x, tmp_path)
    for t in range(3):  # rank 2 + 3 rank-1 changes = K
        X, Y = rng.standard_normal((500, 1)), rng.standard_normal((N, 1))
        if t == 1:
            X = bl.from_array(X, tmp_path / "X.zarr", chunks=(64, None))
        state = svd_update(state, low_rank=(X, Y), work_dir=str(tmp_path / "w"))
        x = x + np.asarray(X) @ Y.T
    _assert_exact(state, x)
    # A change inside the current subspaces: the residuals vanish (TSQR of ~0 columns).
    u = state.u_to_numpy()
    X, Y = u[:, :2] * 3.0, state.Vt[:2].T
    state = svd_update(state, low_rank=(X, Y))
    _assert_exact(state, x + X @ Y.T)


def test_mixed_updates_and_u_materialized(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    full = _low_rank(900, seed=11, n=40, rank=4)
    x = full[:500, :30]
    state = _initial(x, tmp_path)
    state = svd_update(state, rows=full[500:700, :30])
    x = full[:700, :30]
    state = svd_update(state, columns=full[:700, 30:])
    x = full[:700]
    X, Y = rng.standard_normal((700, 1)), rng.standard_normal((40, 1))
    state = svd_update(state, low_rank=(X, Y))
    x = x + X @ Y.T
    extra = full[700:] + rng.standard_normal((200, 1)) @ Y.T
    state = svd_update(state, rows=sp.csr_matrix(extra), method="sparse")
    x = np.vstack([x, extra])
    _assert_exact(state, x)
    u = state.u_to_numpy()
    U = state.u_lazy(out=str(tmp_path / "U.zarr"), chunk_rows=128).compute(
        work_dir=str(tmp_path / "w"))
    assert U.shape == (900, K) and U.chunks == (128, K)
    np.testing.assert_allclose(U.to_numpy(), u, atol=1e-13)
    D = bl.from_array(rng.standard_normal((900, 3)), tmp_path / "D.zarr", chunks=(77, None))
    np.testing.assert_allclose(state.ut_dot(D).compute(work_dir=str(tmp_path / "w")),
                               u.T @ D.to_numpy(), atol=1e-12)


def test_updates_on_every_executor(executor: Any, tmp_path: Path) -> None:
    opts = executor.kwargs | {"work_dir": str(executor.work_dir)}
    full = _low_rank(500, seed=2, n=40)
    state = _initial(full[:200, :30], tmp_path)
    for t, method in enumerate(("gram", "qr")):  # the passes over the new rows run on executor
        lo, hi = 200 + 100 * t, 300 + 100 * t
        rows = bl.from_array(full[lo:hi, :30], tmp_path / f"rows{t}.zarr", chunks=(32, None))
        state = svd_update(state, rows, method=method, **opts)
    D = bl.from_array(full[:400, 30:], tmp_path / "D.zarr", chunks=(64, None))
    state = svd_update(state, columns=D, **opts)
    # A rank-1 change inside A's column and row spaces keeps the rank at K (exact).
    rng = np.random.default_rng(12)
    X = full[:400] @ rng.standard_normal((40, 1))
    Y = full[:400].T @ rng.standard_normal((400, 1)) / 400
    state = svd_update(state, low_rank=(bl.from_array(X, tmp_path / "X.zarr"), Y), **opts)
    assert state.version == 4
    _assert_exact(state, full[:400] + X @ Y.T)


# -- persistence and faults --------------------------------------------------------------------
def test_state_survives_a_restart(tmp_path: Path) -> None:
    x = _low_rank(900, seed=13)
    first = _initial(x[:500], tmp_path, "kept")
    again = _initial(x[:500], tmp_path, "reopened")
    kept = svd_update(first, x[500:700])
    kept = svd_update(kept, columns=np.ones((700, 2)))
    reopened = svd_update(again, x[500:700])
    del reopened  # a fresh process knows only the path
    fresh = SVDState.open(tmp_path / "reopened")
    assert fresh.version == 1 and fresh.n_rows == 700
    fresh = svd_update(fresh, columns=np.ones((700, 2)))
    for a, b in ((kept.s, fresh.s), (kept.Vt, fresh.Vt), (kept.u_to_numpy(), fresh.u_to_numpy())):
        np.testing.assert_array_equal(a, b)


def _faulty_compute(monkeypatch: pytest.MonkeyPatch, op: str, calls: Path) -> None:
    """svd_update's passes run with the stage ``op`` failing after its first task."""
    real = svd_update_module.compute

    def compute(*results: Any, **kw: Any) -> tuple[Any, ...]:
        wrapped = [inject_fault(r, op, calls, succeed=1) if any(s.op == op for s in r.plan.stages)
                   else r for r in results]
        return real(*wrapped, **kw)

    monkeypatch.setattr(svd_update_module, "compute", compute)


@pytest.mark.parametrize(("kind", "op"), [("gram", "matmul/panel"), ("qr", "svd_update/form_q"),
                                          ("columns", "svd_update/form_q")])
def test_fault_during_update_leaves_previous_version(kind: str, op: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    x = _low_rank(700, seed=14, n=36)
    state = _initial(x[:500, :30], tmp_path)
    before = (state.s.copy(), state.Vt.copy(), state.u_to_numpy())
    rows = bl.from_array(x[500:, :30], tmp_path / "rows.zarr", chunks=(40, None))
    cols = bl.from_array(x[:500, 30:], tmp_path / "cols.zarr", chunks=(40, None))

    def update(st: SVDState) -> SVDState:
        if kind == "columns":
            return svd_update(st, columns=cols, work_dir=str(tmp_path / "w"))
        return svd_update(st, rows, method=kind, work_dir=str(tmp_path / "w"))

    with monkeypatch.context() as mp:
        _faulty_compute(mp, op, tmp_path / "calls")
        with pytest.raises(InjectedFault):
            update(state)
    # The basis pass died after the small arrays of nothing were committed: the previous
    # version is what a restart sees, and it is whole.
    old = SVDState.open(tmp_path / "state")
    assert old.version == 0
    for a, b in zip(before, (old.s, old.Vt, old.u_to_numpy()), strict=True):
        np.testing.assert_array_equal(a, b)
    # A retry overwrites the failed attempt's leftovers.
    new = update(old)
    _assert_exact(new, x[:500] if kind == "columns" else x[:, :30])


def test_leftovers_of_a_crashed_update_are_overwritten(tmp_path: Path) -> None:
    x = _low_rank(600, seed=15)
    _initial(x[:400], tmp_path)
    # What a crash between the new arrays and the commit leaves behind.
    bl.from_array(np.full((7, K), 9.0), tmp_path / "state" / "U_v00001.zarr")
    (tmp_path / "state" / "v1").mkdir()
    (tmp_path / "state" / "v1" / "junk").write_bytes(b"partial")
    assert SVDState.open(tmp_path / "state").version == 0
    svd_update(str(tmp_path / "state"), x[400:])
    assert not (tmp_path / "state" / "v0").exists()
    _assert_exact(SVDState.open(tmp_path / "state"), x)


@pytest.mark.parametrize("method", ["gram", "qr", "sparse"])
def test_row_append_does_not_read_old_bases(method: str, tmp_path: Path) -> None:
    x = _low_rank(900, seed=16)
    state = _initial(x[:300], tmp_path)
    state = svd_update(state, x[300:600], method=method)
    old = state.basis_urls()
    rows = bl.from_array(x[600:], tmp_path / "rows.zarr", chunks=(100, None))
    stats = RunStats()
    # The old bases' chunks removed: reading any of them would fail.
    for url in old:
        for chunk_dir in Path(url).glob("c"):
            os.rename(chunk_dir, chunk_dir.with_name("c-moved"))
    state = svd_update(state, rows, method=method, work_dir=str(tmp_path / "w"), stats=stats)
    assert not set(stats.array_reads) & set(old)
    if method != "sparse":  # the sparse path reads stored rows on the driver
        assert rows.url in stats.array_reads
    s_ref = np.linalg.svd(x, compute_uv=False)[:K]
    assert np.abs(state.s - s_ref).max() <= 1e-10 * s_ref[0]
    for url in old:
        os.rename(Path(url) / "c-moved", Path(url) / "c")
    _assert_exact(state, x)
    # A column append, by contrast, reads every basis once.
    stats = RunStats()
    svd_update(state, columns=np.ones((900, 1)), work_dir=str(tmp_path / "w"), stats=stats)
    assert set(old) <= set(stats.array_reads)


def test_bad_updates_are_refused_before_any_write(tmp_path: Path) -> None:
    x = _low_rank(300)
    state = _initial(x, tmp_path)
    before = _files(tmp_path / "state")
    nan_rows = np.ones((40, N))
    nan_rows[3, 4] = np.nan
    stored_nan = bl.from_array(nan_rows, tmp_path / "nan.zarr", chunks=(10, None),
                               check_finite=False)
    nan_cols = np.ones((300, 2))
    nan_cols[100, 1] = np.nan
    stored_nan_cols = bl.from_array(nan_cols, tmp_path / "nan-cols.zarr", chunks=(64, None),
                                    check_finite=False)
    bad: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (ShapeMismatchError, "shape", {"rows": np.ones((10, N + 1))}),
        (ValueError, "NaN", {"rows": nan_rows}),
        (ValueError, "NaN", {"rows": sp.csr_matrix(nan_rows)}),
        (ValueError, "NaN", {"rows": stored_nan, "method": "gram"}),
        (ValueError, "NaN", {"rows": stored_nan, "method": "qr"}),
        (ValueError, "NaN", {"rows": stored_nan, "method": "sparse"}),
        (ValueError, "NaN", {"columns": np.full((300, 2), np.nan)}),
        (ValueError, "NaN", {"columns": stored_nan_cols}),
        (ValueError, "NaN", {"low_rank": (stored_nan_cols, np.ones((N, 2)))}),
        (InputDtypeError, "real", {"rows": np.ones((2, N), dtype=complex)}),
        (ValueError, "exactly one", {"rows": np.ones((10, N)), "columns": np.ones((300, 2))}),
        (ValueError, "exactly one", {}),
        (ValueError, "method", {"rows": np.ones((10, N)), "method": "householder"}),
        (ValueError, "batch", {"rows": np.ones((10, N)), "batch": 0}),
        (ValueError, "row appends", {"columns": np.ones((300, 2)), "method": "gram"}),
        (ShapeMismatchError, "300", {"columns": np.ones((299, 2))}),
        (ValueError, "at most", {"columns": np.ones((300, 301))}),
        (ShapeMismatchError, "Y", {"low_rank": (np.ones((300, 2)), np.ones((N + 1, 2)))}),
        (ShapeMismatchError, "X", {"low_rank": (np.ones((300, 3)), np.ones((N, 2)))}),
        (ValueError, "pair", {"low_rank": (np.ones((300, 2)),)}),
        (ValueError, "NaN", {"low_rank": (np.ones((300, 1)), np.full((N, 1), np.inf))}),
        (ValueError, "identifiers", {"rows": np.ones((10, N)), "extras": {"a b": np.ones(2)}}),
        (ShapeMismatchError, "row_gram", {"rows": np.ones((10, N)), "row_gram": np.eye(N + 1)}),
        (ValueError, "row_gram", {"columns": np.ones((300, 2)), "row_gram": np.eye(N)}),
    ]
    for error, match, kwargs in bad:
        with pytest.raises(error, match=match):
            svd_update(state, work_dir=str(tmp_path / "w"), **kwargs)
        assert _files(tmp_path / "state") == before, kwargs
    assert SVDState.open(tmp_path / "state").version == 0
    with pytest.raises(FileExistsError):
        SVDState.create(tmp_path / "state", np.eye(3), np.ones(3), np.eye(3))
    with pytest.raises(FileNotFoundError, match="no blocklin SVD state"):
        SVDState.open(tmp_path / "nothing")
