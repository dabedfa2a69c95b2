"""Deng et al.'s sparse column appends and low-rank changes (``method="sparse"``).

Checked against numpy's SVD of the updated matrix when it has rank <= k (exact to
1e-10), against the Householder column / low-rank path on data of rank > k (the same
truncated updates: equal to rounding, the Gram's squaring included), reopened after
every call, without any m-sized temporary, and through a crash at each write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ops import SVDState, svd_update
from blocklin.ops.svd_state import log_name

K = 6


def _exact(x: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return u[:, :k], s[:k], vt[:k]


def _general(m: int, n: int, seed: int) -> sp.csc_matrix:
    """Sparse data of rank > k with decaying column weights (distinct singular values)."""
    rng = np.random.default_rng(seed)
    x = sp.random(m, n, density=0.05, random_state=seed, format="csc")
    x.data = rng.standard_normal(x.data.size)
    return sp.csc_matrix(x @ sp.diags(1.0 / np.arange(1, n + 1) ** 0.5))


def _assert_same(got: SVDState, ref: SVDState, tol: float) -> None:
    """Same decomposition (signs fixed alike) to ``tol``, and U orthonormal."""
    assert np.abs(got.s - ref.s).max() <= tol * ref.s[0]
    np.testing.assert_allclose(got.Vt, ref.Vt, atol=tol)
    u = got.u_to_numpy()
    np.testing.assert_allclose(u, ref.u_to_numpy(), atol=tol)
    assert np.abs(u.T @ u - np.eye(got.k)).max() <= tol


def _assert_exact(state: SVDState, x: np.ndarray) -> None:
    """``U diag(s) Vt`` is x (rank <= k): values and product to 1e-10, U and V orthonormal."""
    s_ref = np.linalg.svd(x, compute_uv=False)[:state.k]
    assert np.abs(state.s - s_ref).max() <= 1e-10 * s_ref[0]
    u, vt = state.u_to_numpy(), state.Vt
    assert np.abs((u * state.s) @ vt - x).max() <= 1e-10 * np.abs(x).max()
    assert np.abs(u.T @ u - np.eye(state.k)).max() <= 1e-10
    assert np.abs(vt @ vt.T - np.eye(state.k)).max() <= 1e-10


def _reopened_equal(state: SVDState) -> None:
    again = SVDState.open(state.path)
    assert again.version == state.version and again.log == state.log
    np.testing.assert_array_equal(again.s, state.s)
    np.testing.assert_array_equal(again.Vt, state.Vt)
    np.testing.assert_array_equal(again.u_to_numpy(), state.u_to_numpy())


# -- exact when the updated matrix has rank <= k ----------------------------------------------
def test_columns_and_low_rank_exact_for_rank_k(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    m, n0 = 400, 120
    w = sp.random(m, K, density=0.08, random_state=1).toarray()
    h = rng.standard_normal((K, n0 + 30))
    h[K - 3:, :n0] = 0.0  # the first columns have rank k - 3: new directions come later
    x = w @ h
    state = SVDState.create(tmp_path / "s", *_exact(x[:, :n0]))
    for a in range(n0, n0 + 30, 10):
        state = svd_update(state, columns=sp.csc_matrix(x[:, a:a + 10]), method="sparse")
        _assert_exact(state, x[:, :a + 10])
        _reopened_equal(state)
    assert state.shape == (m, n0 + 30)
    # Two rank-1 changes inside w's column space: the data keep rank <= k.
    for t in range(2):
        X = sp.csc_matrix(w @ rng.standard_normal((K, 1)))
        Y = sp.random(n0 + 30, 1, density=0.2, random_state=10 + t, format="csc")
        state = svd_update(state, low_rank=(X, Y), method="sparse")
        x = x + X.toarray() @ Y.toarray().T
        _assert_exact(state, x)
        _reopened_equal(state)


def test_columns_logged_as_a_csr_term(tmp_path: Path) -> None:
    # (Exact rank-k data with new directions would leave U's null directions mixed:
    # K_u folds and the update checkpoints; data of rank > k log.)
    x = _general(300, 82, seed=2).toarray()
    state = SVDState.create(tmp_path / "s", *_exact(x[:, :80]))
    cols = sp.csc_matrix(x[:, 80:])
    state = svd_update(state, columns=cols)  # auto: sparse D takes Deng et al.'s path
    assert [t.kind for t in state.terms] == ["dense", "csr"]
    # The term spans D's first to last nonzero row only.
    nz = np.flatnonzero(np.diff(cols.tocsr().indptr))
    assert (state.terms[1].row, state.terms[1].rows) == (nz[0], nz[-1] - nz[0] + 1)
    assert state.log == (log_name(1),) and state.checkpoint == 0
    assert not (tmp_path / "s" / "v1").exists()  # no V written: a log record
    _reopened_equal(state)


# -- against the Householder path on data of rank > k ----------------------------------------
@pytest.mark.parametrize("budget", [None, 0])
def test_columns_match_householder_path(budget: int | None, tmp_path: Path) -> None:
    x = _general(350, 260, seed=4)
    dense = x.toarray()
    a = SVDState.create(tmp_path / "a", *_exact(dense[:, :200]))
    b = SVDState.create(tmp_path / "b", *_exact(dense[:, :200]))
    for c in range(200, 260, 15):
        a = svd_update(a, columns=x[:, c:c + 15], method="sparse", max_delta=budget)
        b = svd_update(b, columns=dense[:, c:c + 15], method="qr", work_dir=str(tmp_path / "w"))
        # Both truncate the same matrices to rank k: equal to rounding (the Gram
        # path squares the residual's conditioning, well within 1e-10 here).
        _assert_same(a, b, 1e-10)
        _reopened_equal(a)
    assert len(a.log) == (4 if budget is None else 0)
    # Truncation happened: the result is not numpy's rank-k SVD of the whole matrix.
    assert np.abs(a.s - np.linalg.svd(dense, compute_uv=False)[:K]).max() > 1e-6


def test_low_rank_matches_householder_path(tmp_path: Path) -> None:
    x = _general(300, 240, seed=5)
    dense = x.toarray()
    a = SVDState.create(tmp_path / "a", *_exact(dense))
    b = SVDState.create(tmp_path / "b", *_exact(dense))
    for t in range(3):
        X = sp.random(300, 2, density=0.04, random_state=20 + t, format="csc")
        Y = sp.random(240, 2, density=0.05, random_state=30 + t, format="csc")
        X.data *= 3.0
        a = svd_update(a, low_rank=(X, Y))  # auto: sparse X
        b = svd_update(b, low_rank=(X.toarray(), Y.toarray()), method="qr",
                       work_dir=str(tmp_path / "w"))
        _assert_same(a, b, 1e-10)
        _reopened_equal(a)
    # (A change that turns U's directions over makes K_u ill-conditioned: a checkpoint.)
    assert a.log and all(t.kind == "csr" for t in a.terms[1:])


def test_mixed_with_sparse_rows_stored_inputs_and_materialized_u(tmp_path: Path) -> None:
    x = _general(420, 300, seed=6)
    dense = x.toarray()
    rows = _general(40, 300, seed=7).tocsr()
    a = SVDState.create(tmp_path / "a", *_exact(dense[:400, :260]))
    b = SVDState.create(tmp_path / "b", *_exact(dense[:400, :260]))
    D = bl.from_array(x[:400, 260:290].tocsr(), tmp_path / "D.zarr", chunks=(64, None))
    a = svd_update(a, columns=D)  # a stored CSR D: auto reads its nonzeros
    assert a.terms[-1].kind == "csr" and len(a.log) == 1
    b = svd_update(b, columns=dense[:400, 260:290], work_dir=str(tmp_path / "w"))
    a = svd_update(a, rows=rows[:20, :290], method="sparse")  # rows after the columns
    b = svd_update(b, rows=rows[:20, :290].toarray(), method="qr", work_dir=str(tmp_path / "w"))
    full = np.vstack([dense[:400, :290], rows[:20, :290].toarray()])
    assert a.shape == full.shape == (420, 290)
    # Columns spanning the pending rows of U (logged row update): those rows read from memory.
    a = svd_update(a, columns=sp.csc_matrix(np.vstack([dense[:400, 290:], rows[:20, 290:]
                                                       .toarray()])), max_terms=2,
                   work_dir=str(tmp_path / "w"))
    b = svd_update(b, columns=np.vstack([dense[:400, 290:], rows[:20, 290:].toarray()]),
                   work_dir=str(tmp_path / "w"))
    # max_terms=2: U materialized through one pass that reads the csr terms as well.
    assert len(a.terms) == 1 and a.terms[0].kind == "dense" and not a.log
    _assert_same(a, b, 1e-10)
    _reopened_equal(a)


def test_zero_columns_and_zero_change(tmp_path: Path) -> None:
    # Zero columns: s unchanged, their rows of V zero, no term; a zero X: nothing changes.
    x = _general(200, 100, seed=13).toarray()
    u, s, vt = _exact(x)
    state = SVDState.create(tmp_path / "s", u, s, vt)
    state = svd_update(state, columns=sp.csc_matrix((200, 3)), method="sparse")
    assert state.shape == (200, 103) and len(state.terms) == 1
    assert np.abs(state.s - s).max() <= 1e-13 * s[0]
    assert np.abs(state.Vt[:, 100:]).max() == 0.0
    state = svd_update(state, low_rank=(sp.csc_matrix((200, 2)),
                                        sp.random(103, 2, density=0.3, random_state=1)))
    assert np.abs(state.s - s).max() <= 1e-13 * s[0] and len(state.terms) == 1
    _reopened_equal(state)
    np.testing.assert_allclose(np.abs(state.u_to_numpy()), np.abs(u), atol=1e-13)


# -- nothing m-sized on the sparse path -------------------------------------------------------
def _stored_state(path: Path, m: int, n: int) -> SVDState:
    rng = np.random.default_rng(8)
    u, _ = np.linalg.qr(rng.standard_normal((m, K)))
    v, _ = np.linalg.qr(rng.standard_normal((n, K)))
    U = bl.from_array(u, path.parent / f"{path.name}-U.zarr", chunks=(4_000, None))
    return SVDState.create(path, U, np.linspace(10.0, 5.0, K), v.T)


def _peak(fn: object) -> int:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _bytes_under(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def test_no_m_sized_temporary(tmp_path: Path) -> None:
    m, n, q = 120_000, 300, 6
    mk = m * K * 8  # one dense m × k array: 5.8 MB
    rng = np.random.default_rng(9)
    rows = np.sort(rng.choice(8_000, 40, replace=False))  # D's nonzeros in U's first 2 blocks
    D = sp.csc_matrix((rng.standard_normal(40), (rows, rng.integers(0, q, 40))), shape=(m, q))
    a = _stored_state(tmp_path / "a", m, n)
    before = _bytes_under(tmp_path / "a")
    box: list[SVDState] = []
    peak = _peak(lambda: box.append(svd_update(a, columns=D, method="sparse")))
    # The call reads 2 of U's 30 row blocks (4,000 × 6 each) and writes D's nonzeros
    # plus a row pointer over the ~8,000 rows they span, and one small record.
    assert peak < mk / 4, peak  # measured 0.6 MB: the 2 blocks read (0.38 MB) + small ones

    written = sum(size for name, size in _bytes_under(tmp_path / "a").items()
                  if before.get(name) != size)
    assert written < mk / 20, written
    assert box[0].shape == (m, n + q)
    # The Householder path forms U (m × k) and P (m × q) block by block: over the bound
    # (measured 3.0 MB).
    b = _stored_state(tmp_path / "b", m, n)
    old = _peak(lambda: svd_update(b, columns=D, method="qr", work_dir=str(tmp_path / "w"),
                                   num_workers=1))
    assert old > mk / 4, old


# -- durability --------------------------------------------------------------------------------
_CHILD = """
import os, signal, sys
import numpy as np, scipy.sparse as sp
from blocklin.ops import SVDState, svd_update
from blocklin.ops import svd_state
su = sys.modules["blocklin.ops.svd_update"]
x = sp.load_npz(sys.argv[2]).tocsc()
where = sys.argv[3]
state = SVDState.open(sys.argv[1])
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "basis":  # the csr basis whole, before the record names it
    real = su.from_array
    def then_die(*a, **k):
        real(*a, **k)
        die()
    su.from_array = then_die
elif where == "record":  # mid-record: half of its bytes on disk, then the kill
    from blocklin.testing.faults import tear_writes
    tear_writes(svd_state, die)
elif where == "raise":  # an error (not a kill) while the record is written
    def boom(*a, **k):
        raise OSError("disk full")
    svd_state.np.savez = boom
else:  # checkpoint: V, the factors and the basis written, before zarr.json
    svd_state.SVDState._put_doc = die
budget = 0 if where == "checkpoint" else None
try:
    svd_update(state, columns=x, method="sparse", max_delta=budget)
except OSError:
    sys.exit(3)
"""


@pytest.mark.parametrize("where", ["basis", "record", "raise", "checkpoint"])
def test_killed_update_leaves_old_or_new_state(where: str, tmp_path: Path) -> None:
    x = _general(300, 250, seed=11)
    dense = x.toarray()
    state = SVDState.create(tmp_path / "s", *_exact(dense[:, :200]))
    twin = SVDState.create(tmp_path / "t", *_exact(dense[:, :200]))
    for c in (200, 220):
        state = svd_update(state, columns=x[:, c:c + 20], method="sparse")
        twin = svd_update(twin, columns=x[:, c:c + 20], method="sparse")
    assert len(state.log) == 2
    sp.save_npz(tmp_path / "cols.npz", x[:, 240:].tocsr())
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "s"),
                           str(tmp_path / "cols.npz"), where], capture_output=True, check=False,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    want = 3 if where == "raise" else -signal.SIGKILL
    assert proc.returncode == want, proc.stderr.decode()[-2000:]
    old = SVDState.open(tmp_path / "s")  # the previous version, whole: never a mix
    assert old.version == state.version and old.shape == state.shape
    np.testing.assert_array_equal(old.s, state.s)
    np.testing.assert_array_equal(old.Vt, state.Vt)
    np.testing.assert_array_equal(old.u_to_numpy(), state.u_to_numpy())
    # The retry overwrites the leftovers and gives the uninterrupted result.
    new = svd_update(old, columns=x[:, 240:], method="sparse")
    twin = svd_update(twin, columns=x[:, 240:], method="sparse")
    _assert_same(SVDState.open(tmp_path / "s"), twin, 1e-12)
    assert new.version == state.version + 1


# -- choices and refusals ----------------------------------------------------------------------
def test_auto_takes_householder_for_dense_and_refuses_gram(tmp_path: Path) -> None:
    x = _general(200, 150, seed=12).toarray()
    state = SVDState.create(tmp_path / "s", *_exact(x[:, :140]))
    state = svd_update(state, columns=x[:, 140:], work_dir=str(tmp_path / "w"))
    assert [t.kind for t in state.terms] == ["dense", "dense"] and not state.log
    with pytest.raises(InputValueError, match="row appends"):
        svd_update(state, columns=sp.csc_matrix(x[:, :2]), method="gram")
    with pytest.raises(InputValueError, match="NaN"):
        svd_update(state, low_rank=(sp.csc_matrix(np.full((200, 1), np.nan)),
                                    sp.csc_matrix(np.ones((150, 1)))), method="sparse")
    assert SVDState.open(tmp_path / "s").version == state.version


def test_format_4_state_with_log_records_opens_and_takes_columns(tmp_path: Path) -> None:
    # Format 4 wrote row log records without V's row count ("n"); such a state opens
    # to the same numbers and takes a sparse column update on top.
    import io
    import json
    import shutil

    x = _general(260, 200, seed=14).tocsr()
    dense = x.toarray()
    state = SVDState.create(tmp_path / "s", *_exact(dense[:200]))
    for a in (200, 230):
        state = svd_update(state, rows=x[a:a + 30], method="sparse", batch=30, max_delta=10_000)
    assert len(state.log) == 2
    meta_path = tmp_path / "s" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["blocklin_svd_state"]["format"] = 4
    meta_path.write_text(json.dumps(meta))
    for name in state.log:
        with np.load(tmp_path / "s" / name) as z:
            arrays = {key: z[key] for key in z.files if key != "n"}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (tmp_path / "s" / name).write_bytes(buf.getvalue())
    old = SVDState.open(tmp_path / "s")
    assert old.version == state.version and old.log == state.log
    np.testing.assert_array_equal(old.s, state.s)
    np.testing.assert_array_equal(old.u_to_numpy(), state.u_to_numpy())
    shutil.copytree(tmp_path / "s", tmp_path / "t")  # the same format-4 state, for the reference
    cols = sp.random(260, 4, density=0.05, random_state=15, format="csc")
    new = svd_update(old, columns=cols)
    ref = svd_update(tmp_path / "t", columns=cols.toarray(), method="qr",
                     work_dir=str(tmp_path / "w"))
    _assert_same(new, ref, 1e-10)
    _reopened_equal(new)
