"""The sparse (Deng et al.) row update against a Zha–Simon reference written in numpy.

Both start from the same exact rank-k SVD and absorb the same batches, each followed
by a truncation to rank k: in exact arithmetic they give the same decomposition even
when the data have rank > k, so they must agree to rounding (the issue's 1e-10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from blocklin.ops import SVDState, svd_update
from blocklin.ops.svd_rows import brand_rows

K = 6


def _data(m: int, n: int, seed: int) -> sp.csr_matrix:
    """Sparse rows of rank > k with distinct singular values (a Zipf-like column mix)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n + 1) ** 0.7
    x = sp.random(m, n, density=0.15, random_state=seed, format="csr")
    x.data = rng.standard_normal(x.data.size)
    return sp.csr_matrix(x @ sp.diags(weights))


def _exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return u[:, :k], s[:k], vt[:k]


def _zha_simon(u: np.ndarray, s: np.ndarray, vt: np.ndarray,
               c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Zha–Simon row update with a dense Householder QR of the residual."""
    k, p = s.size, c.shape[0]
    v = vt.T
    q, r = np.linalg.qr((c - (c @ v) @ vt).T)
    mid = np.zeros((k + p, k + q.shape[1]))
    mid[:k, :k] = np.diag(s)
    mid[k:, :k] = c @ v
    mid[k:, k:] = r.T
    f, t, gt = np.linalg.svd(mid, full_matrices=False)
    u2 = np.vstack([u @ f[:k, :k], f[k:, :k]])
    return u2, t[:k], (np.hstack([v, q]) @ gt[:k].T).T


def _signs(vt: np.ndarray) -> np.ndarray:
    return np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])


def _reference(x: np.ndarray, m0: int, batch: int, k: int = K):
    u, s, vt = _exact(x[:m0], k)
    for a in range(m0, x.shape[0], batch):
        u, s, vt = _zha_simon(u, s, vt, x[a:a + batch])
    d = _signs(vt)
    return u * d, s, vt * d[:, None]


@pytest.mark.parametrize("batch", [1, 7, 64, 250])
def test_sparse_update_equals_zha_simon(batch: int, tmp_path: Path) -> None:
    x = _data(400, 90, seed=batch)
    dense_x = x.toarray()
    u0, s0, vt0 = _exact(dense_x[:150], K)
    state = SVDState.create(tmp_path / "state", u0, s0, vt0)
    state = svd_update(state, rows=x[150:], method="sparse", batch=batch)
    u_ref, s_ref, vt_ref = _reference(dense_x, 150, batch)
    # Rank > k: each batch truncates, so the result differs from a recomputation, yet
    # equals the same sequence of exact Zha–Simon updates to rounding.
    assert np.abs(state.s - s_ref).max() <= 1e-10 * s_ref[0]
    np.testing.assert_allclose(state.Vt, vt_ref, atol=1e-10)
    np.testing.assert_allclose(state.u_to_numpy(), u_ref, atol=1e-10)
    full = np.linalg.svd(dense_x, compute_uv=False)[:K]
    assert np.abs(state.s - full).max() > 1e-6 * full[0]  # truncation did bite


@pytest.mark.parametrize("fold_cond", [1.0, 1e4, np.inf])
def test_factor_folds_keep_the_result(fold_cond: float) -> None:
    # fold_cond = 1: V's factor is folded into its base (V materialized) after every
    # batch; inf: never. Same numbers either way.
    x = _data(300, 70, seed=3).toarray()
    _, s0, vt0 = _exact(x[:100], K)
    batches = [sp.csr_matrix(x[a:a + 20]) for a in range(100, 300, 20)]
    run = brand_rows(s0, vt0, batches, fold_cond=fold_cond)
    assert (run.folds == len(batches)) if fold_cond == 1.0 else run.folds == 0
    _, s_ref, vt_ref = _reference(x, 100, 20)
    vt = run.Vt * _signs(run.Vt)[:, None]
    assert np.abs(run.s - s_ref).max() <= 1e-10 * s_ref[0]
    np.testing.assert_allclose(vt, vt_ref, atol=1e-10)


def test_batch_cost_does_not_touch_untouched_columns() -> None:
    # The base of V changes only at the batch's nonzero columns (Deng et al.): rows of
    # V's base for columns no appended row uses are bit-identical afterwards.
    from blocklin.ops.svd_rows import FactoredV, _brand_batch

    x = _data(200, 80, seed=5).toarray()
    _, s, vt = _exact(x[:150], K)
    c = np.zeros((10, 80))
    c[:, :20] = x[150:160, :20]
    V = FactoredV(vt.T)
    before = V.base.copy()
    _brand_batch(s, V, sp.csr_matrix(c))
    assert np.array_equal(V.base[20:], before[20:])
    assert not np.array_equal(V.base[:20], before[:20])


def _stored_arrays(root: Path) -> set[str]:
    from blocklin.storage.leases import flush_removals

    flush_removals()  # removed arrays leave the tree before the listing
    return {p.name for p in root.iterdir() if p.name.startswith(("U_", "F_"))}


@pytest.mark.parametrize("max_terms", [1, 3, 64])
def test_u_materialized_at_the_term_budget(max_terms: int, tmp_path: Path) -> None:
    x = _data(400, 50, seed=7)
    dense_x = x.toarray()
    u0, s0, vt0 = _exact(dense_x[:160], K)
    state = SVDState.create(tmp_path / "state", u0, s0, vt0)
    for a in range(160, 400, 40):  # six calls of two 20-row batches
        state = svd_update(str(tmp_path / "state"), rows=x[a:a + 40], method="sparse",
                           batch=20, max_terms=max_terms, work_dir=str(tmp_path / "w"))
    state = SVDState.open(tmp_path / "state")
    # 1 + 6 terms; past the budget U becomes one basis (3: after calls 3 and 6).
    assert len(state.terms) == {1: 1, 3: 1, 64: 7}[max_terms]
    assert state.version == {1: 12, 3: 8, 64: 6}[max_terms]
    u_ref, s_ref, vt_ref = _reference(dense_x, 160, 20)
    assert np.abs(state.s - s_ref).max() <= 1e-10 * s_ref[0]
    np.testing.assert_allclose(state.Vt, vt_ref, atol=1e-10)
    np.testing.assert_allclose(state.u_to_numpy(), u_ref, atol=1e-10)
    # Only what the committed version names is stored: materialized bases and their
    # factors are gone.
    named = {t.basis for t in state.terms} | {t.factor for t in state.terms}
    assert _stored_arrays(tmp_path / "state") == named


def test_shared_u_factor_folds_when_ill_conditioned(tmp_path: Path) -> None:
    # Three of the data's directions are 1e-5 times weaker in the first rows than in
    # the next: after the first append U's restriction to the first basis (in effect
    # K_u) has singular values from ~1 down to ~1e-5, past FOLD_COND, so K_u is folded
    # into the factors (rewritten under the new version's names) and restarts at I.
    from blocklin.ops.svd_state import FOLD_COND

    rng = np.random.default_rng(9)
    basis = rng.standard_normal((K, 40))
    g = rng.standard_normal((500, K))
    g[:200, :3] *= 1e-5
    x = g @ basis
    state = SVDState.create(tmp_path / "state", *_exact(x[:200], K))
    state = svd_update(state, rows=x[200:300], method="qr")
    assert [t.factor for t in state.terms] == ["F_v00001_00000", "F_v00001_00001"]
    np.testing.assert_array_equal(state.Ku, np.eye(K))
    for a in range(300, 500, 100):
        state = svd_update(state, rows=x[a:a + 100], method="qr")
        assert np.linalg.cond(state.Ku) < FOLD_COND
    assert _stored_arrays(tmp_path / "state") == \
        {t.basis for t in state.terms} | {t.factor for t in state.terms}
    reopened = SVDState.open(tmp_path / "state")
    u = reopened.u_to_numpy()
    assert np.abs(u.T @ u - np.eye(K)).max() <= 1e-11
    assert np.abs((u * reopened.s) @ reopened.Vt - x).max() <= 1e-10 * np.abs(x).max()


def test_format_2_state_opens_and_updates(tmp_path: Path) -> None:
    # A state written by the previous format (G_t stacked in the version, no K_u, no
    # stored factors) opens with the same U and is rewritten as format 3 by its next
    # update.
    import json

    import zarr

    x = _data(300, 40, seed=11).toarray()
    state = SVDState.create(tmp_path / "state", *_exact(x[:150], K))
    state = svd_update(state, rows=x[150:220], method="gram")
    u_before = state.u_to_numpy()
    root = tmp_path / "state"
    meta = json.loads((root / "zarr.json").read_text())
    doc = meta["attributes"]["blocklin_svd_state"]
    doc["format"] = 2
    for t in doc["terms"]:
        del t["factor"]
    group = zarr.open_group(str(root / f"v{state.version}"), mode="a")
    group.create_array("G", data=np.vstack(state.G))
    (root / "zarr.json").write_text(json.dumps(meta))
    old = SVDState.open(root)
    np.testing.assert_allclose(old.u_to_numpy(), u_before, atol=1e-14)
    new = svd_update(old, rows=x[220:], method="sparse")
    reopened = SVDState.open(root)
    assert json.loads((root / "zarr.json").read_text())["attributes"][
        "blocklin_svd_state"]["format"] == 5
    # The same two updates by the numpy reference.
    u_ref, s_ref, vt_ref = _zha_simon(*_zha_simon(*_exact(x[:150], K), x[150:220]), x[220:])
    assert np.abs(reopened.s - s_ref).max() <= 1e-10 * s_ref[0]
    d = _signs(vt_ref)
    np.testing.assert_allclose(reopened.u_to_numpy(), u_ref * d, atol=1e-10)
    np.testing.assert_allclose(reopened.u_to_numpy(), new.u_to_numpy(), atol=1e-14)
