"""Sparse row updates committed as log records over a checkpoint (SVDState format 4).

One ``svd_update`` call per small batch must give the numbers of one call over all
the batches and of a numpy Zha–Simon reference (1e-10, the issue's bound), write
only a small record per call until V's delta passes its budget, reopen to the same
state, and survive a crash between any two writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from blocklin.errors import CorruptChunkError
from blocklin.ops import SVDState, svd_update
from blocklin.ops.svd_state import log_name
from blocklin.storage.blockmatrix import from_array

K = 6
M0 = 150


def _data(m: int, n: int, seed: int) -> sp.csr_matrix:
    """Sparse rows of rank > k: each row touches few of the n columns."""
    rng = np.random.default_rng(seed)
    x = sp.random(m, n, density=0.04, random_state=seed, format="csr")
    x.data = rng.standard_normal(x.data.size)
    return sp.csr_matrix(x @ sp.diags(1.0 / np.arange(1, n + 1) ** 0.5))


def _exact(x: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return u[:, :k], s[:k], vt[:k]


def _signs(vt: np.ndarray) -> np.ndarray:
    return np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])


def _reference(x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zha–Simon row updates (dense Householder QR of the residual), batch by batch."""
    u, s, vt = _exact(x[:M0])
    for a in range(M0, x.shape[0], batch):
        c = x[a:a + batch]
        k, p = s.size, c.shape[0]
        q, r = np.linalg.qr((c - (c @ vt.T) @ vt).T)
        mid = np.zeros((k + p, k + q.shape[1]))
        mid[:k, :k] = np.diag(s)
        mid[k:, :k] = c @ vt.T
        mid[k:, k:] = r.T
        f, t, gt = np.linalg.svd(mid, full_matrices=False)
        u = np.vstack([u @ f[:k, :k], f[k:, :k]])
        s, vt = t[:k], (np.hstack([vt.T, q]) @ gt[:k].T).T
    d = _signs(vt)
    return u * d, s, vt * d[:, None]


def _assert_reference(state: SVDState, ref: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    u_ref, s_ref, vt_ref = ref
    assert np.abs(state.s - s_ref).max() <= 1e-10 * s_ref[0]
    np.testing.assert_allclose(state.Vt, vt_ref, atol=1e-10)
    np.testing.assert_allclose(state.u_to_numpy(), u_ref, atol=1e-10)


BIG = 10_000  # a delta budget past n: every update a log record


def _per_call(x: sp.csr_matrix, root: Path, batch: int, max_delta: int | None = BIG,
              stop: int | None = None) -> SVDState:
    state = SVDState.create(root, *_exact(x[:M0].toarray()))
    for a in range(M0, x.shape[0] if stop is None else stop, batch):
        state = svd_update(state, rows=x[a:a + batch], method="sparse", batch=batch,
                           max_delta=max_delta)
    return state


@pytest.mark.parametrize("batch", [1, 10])
def test_one_call_per_batch_equals_one_call_and_reference(batch: int, tmp_path: Path) -> None:
    x = _data(150 + 20 * batch, 400, seed=batch)
    per_call = _per_call(x, tmp_path / "calls", batch, max_delta=10_000)
    # Every call was a log record (a budget past n rows): no checkpoint after the first.
    assert per_call.checkpoint == 0 and len(per_call.log) == 20
    assert [p.shape[0] for p in per_call.pending] == [batch] * 20
    once = svd_update(SVDState.create(tmp_path / "once", *_exact(x[:M0].toarray())),
                      rows=x[M0:], method="sparse", batch=batch)
    ref = _reference(x.toarray(), batch)
    _assert_reference(per_call, ref)
    _assert_reference(once, ref)
    reopened = SVDState.open(tmp_path / "calls")
    assert reopened.version == 20 and reopened.log == per_call.log
    np.testing.assert_array_equal(reopened.s, per_call.s)
    np.testing.assert_array_equal(reopened.Vt, per_call.Vt)
    np.testing.assert_array_equal(reopened.u_to_numpy(), per_call.u_to_numpy())
    # U's pending rows are read by the passes over U too.
    d = np.random.default_rng(0).standard_normal((reopened.n_rows, 2))
    stored = from_array(d, tmp_path / "D.zarr", chunks=(64, None))  # blocks across the tail
    ut_d = reopened.ut_dot(stored).compute(work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(ut_d, ref[0].T @ d, atol=1e-9)


def test_delta_folded_at_the_budget(tmp_path: Path) -> None:
    x = _data(190, 400, seed=3)  # 2-row calls touch ~30 columns each
    ref = _reference(x.toarray(), 2)
    seen: list[tuple[int, int, int]] = []
    state = SVDState.create(tmp_path / "s", *_exact(x[:M0].toarray()))
    budget = 60
    for a in range(M0, 190, 2):
        before = state
        state = svd_update(state, rows=x[a:a + 2], method="sparse", batch=2,
                           max_delta=budget)
        seen.append((state.checkpoint, len(state.log), state.V.delta_rows))
        if state.checkpoint == state.version:  # a checkpoint: V stored, the log dropped
            assert before.V.delta_rows <= budget and not state.pending
            assert not (tmp_path / "s" / f"v{before.checkpoint}").exists()
            assert not any((tmp_path / "s" / name).exists() for name in before.log)
        else:  # a record within the budget, named by its version
            assert state.V.delta_rows <= budget
            assert (tmp_path / "s" / log_name(state.version)).is_file()
    checkpoints = [c for c, n_log, _ in seen if n_log == 0]
    assert 2 <= len(checkpoints) < len(seen)  # some updates logged, some folded
    _assert_reference(state, ref)
    _assert_reference(SVDState.open(tmp_path / "s"), ref)
    # Budget 0: every update a checkpoint, same numbers.
    every = _per_call(x, tmp_path / "every", 2, max_delta=0)
    assert every.checkpoint == every.version and not every.log
    _assert_reference(every, ref)


def test_format_3_state_opens_and_logs(tmp_path: Path) -> None:
    # Format 3 (every version a v<version>/ with s, Vt, Ku; no checkpoint, no log)
    # is a format-4 checkpoint without the key: it opens and takes logged updates.
    x = _data(260, 400, seed=5)
    dense_x = x.toarray()
    state = SVDState.create(tmp_path / "s", *_exact(dense_x[:M0]))
    state = svd_update(state, rows=dense_x[M0:200], method="gram")
    meta_path = tmp_path / "s" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    doc = meta["attributes"]["blocklin_svd_state"]
    doc["format"] = 3
    del doc["checkpoint"]
    meta_path.write_text(json.dumps(meta))
    old = SVDState.open(tmp_path / "s")
    assert old.version == 1 and old.checkpoint == 1
    np.testing.assert_allclose(old.u_to_numpy(), state.u_to_numpy(), atol=1e-14)
    twin = SVDState.create(tmp_path / "twin", *_exact(dense_x[:M0]))
    twin = svd_update(twin, rows=dense_x[M0:200], method="gram")
    for a in range(200, 260, 20):
        old = svd_update(old, rows=x[a:a + 20], method="sparse", batch=20, max_delta=10_000)
        twin = svd_update(twin, rows=x[a:a + 20], method="sparse", batch=20, max_delta=10_000)
    assert len(old.log) == 3
    reopened = SVDState.open(tmp_path / "s")
    for got in (old, reopened):
        assert np.abs(got.s - twin.s).max() <= 1e-12 * twin.s[0]
        np.testing.assert_allclose(got.Vt, twin.Vt, atol=1e-12)
        np.testing.assert_allclose(got.u_to_numpy(), twin.u_to_numpy(), atol=1e-12)
    assert np.abs(twin.s - np.linalg.svd(dense_x, compute_uv=False)[:K]).max() > 0  # rank > k


def test_torn_last_record_is_an_unfinished_update(tmp_path: Path) -> None:
    x = _data(230, 400, seed=7)
    state = _per_call(x, tmp_path / "s", 20, stop=210)
    last = tmp_path / "s" / log_name(state.version)
    whole = last.read_bytes()
    last.write_bytes(whole[:len(whole) // 2])  # what a kill mid-write leaves
    old = SVDState.open(tmp_path / "s")
    assert old.version == state.version - 1  # the previous version, whole
    # The retry overwrites the torn record; then the rest.
    new = svd_update(old, rows=x[190:210], method="sparse", batch=20, max_delta=BIG)
    new = svd_update(new, rows=x[210:230], method="sparse", batch=20, max_delta=BIG)
    _assert_reference(SVDState.open(tmp_path / "s"), _reference(x.toarray(), 20))
    # A record corrupted before a later one is corruption, not an unfinished update.
    first = tmp_path / "s" / log_name(1)
    raw = bytearray(first.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    first.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError):
        SVDState.open(tmp_path / "s")


_CHILD = """
import os, signal, sys
import numpy as np, scipy.sparse as sp
from blocklin.ops import SVDState, svd_update
from blocklin.ops import svd_state
x = sp.load_npz(sys.argv[2])
where = sys.argv[3]
state = SVDState.open(sys.argv[1])
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "checkpoint":  # after V and the new basis are written, before zarr.json
    svd_state.SVDState._put_doc = die
else:  # mid-record: half of its bytes on disk, then the kill
    from blocklin.testing.faults import tear_writes
    tear_writes(svd_state, die)  # the module's open: the record's write
svd_update(state, rows=x, method="sparse", batch=20, max_delta=0 if where == "checkpoint" else 10_000)
"""


@pytest.mark.parametrize("where", ["checkpoint", "record"])
def test_killed_update_leaves_the_previous_state(where: str, tmp_path: Path) -> None:
    x = _data(210, 400, seed=9)
    state = _per_call(x, tmp_path / "s", 20, stop=190)
    assert len(state.log) == 2
    sp.save_npz(tmp_path / "rows.npz", x[190:210])
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "s"),
                           str(tmp_path / "rows.npz"), where], capture_output=True, check=False,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    old = SVDState.open(tmp_path / "s")
    assert old.version == state.version
    np.testing.assert_array_equal(old.s, state.s)
    np.testing.assert_array_equal(old.Vt, state.Vt)
    np.testing.assert_array_equal(old.u_to_numpy(), state.u_to_numpy())
    new = svd_update(old, rows=x[190:210], method="sparse", batch=20, max_delta=BIG)
    _assert_reference(SVDState.open(tmp_path / "s"), _reference(x.toarray(), 20))
    assert new.version == state.version + 1


def test_other_updates_after_logged_ones(tmp_path: Path) -> None:
    # Rank k - 2 data and 2 new columns: exact whatever the path. Logged sparse updates leave U rows
    # pending and signs unfixed; a gram row append and a column append on top must
    # checkpoint them (pending rows written as a basis) and stay exact.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((400, K - 2)) @ sp.random(K - 2, 300, density=0.05,
                                                      random_state=11).toarray()
    state = _per_call(sp.csr_matrix(x), tmp_path / "s", 10, stop=250)
    assert len(state.log) == 10 and state.pending
    state = svd_update(state, rows=x[250:400], method="gram")
    assert not state.log and not state.pending and state.checkpoint == state.version
    cols = rng.standard_normal((400, 2))
    state = svd_update(state, columns=cols, work_dir=str(tmp_path / "w"))
    full = np.hstack([x, cols])
    for got in (state, SVDState.open(tmp_path / "s")):
        u = got.u_to_numpy()
        assert np.abs(u.T @ u - np.eye(K)).max() <= 1e-10
        assert np.abs((u * got.s) @ got.Vt - full).max() <= 1e-10 * np.abs(full).max()
    # Columns straight after logged updates (U read with its pending rows).
    again = _per_call(sp.csr_matrix(x), tmp_path / "t", 10, stop=250)
    again = svd_update(again, columns=cols[:250], work_dir=str(tmp_path / "w2"))
    u = again.u_to_numpy()
    part = np.hstack([x[:250], cols[:250]])
    assert np.abs((u * again.s) @ again.Vt - part).max() <= 1e-10 * np.abs(part).max()


def test_log_records_on_an_object_store() -> None:
    # fsspec stores take each record as one put (whole or absent): same numbers.
    import uuid

    x = _data(190, 400, seed=13)
    url = f"memory://svd-log-{uuid.uuid4().hex}/s"
    state = SVDState.create(url, *_exact(x[:M0].toarray()))
    for a in range(M0, 190, 10):
        state = svd_update(state, rows=x[a:a + 10], method="sparse", batch=10, max_delta=BIG)
    assert len(state.log) == 4
    reopened = SVDState.open(url)
    assert reopened.version == 4
    _assert_reference(reopened, _reference(x.toarray(), 10))
