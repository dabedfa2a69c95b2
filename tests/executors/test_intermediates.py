"""The work directory after a compute: intermediates removed once results are sealed,
kept after a failure (resume reuses them) or on request, never removed under another
process or thread using them."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.executors import RunStats
from blocklin.executors.intermediates import intermediates_scope
from blocklin.storage.leases import LEASES, LeaseInfo, flush_removals, read_leases
from blocklin.testing import assert_bitwise_equal, inject_fault
from blocklin.testing.faults import InjectedFault
from blocklin.testing.leases import lease_held_elsewhere


def _usage(work: Path) -> tuple[list[str], int, int]:
    """Top-level entries (the group's zarr.json and .blocklin aside), files and bytes
    under ``work``, once the arrays removed are deleted from disk too."""
    flush_removals()
    files = [p for p in work.rglob("*") if p.is_file()] if work.exists() else []
    names = sorted(p.name for p in work.iterdir() if p.name not in ("zarr.json", ".blocklin")) \
        if work.exists() else []
    return names, len(files), sum(p.stat().st_size for p in files)


@pytest.fixture
def A(tmp_path: Path) -> bl.BlockMatrix:
    x = np.random.default_rng(0).standard_normal((1200, 16))
    return bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))  # 12 row blocks


def test_a_successful_compute_leaves_no_intermediates(tmp_path: Path, A: bl.BlockMatrix) -> None:
    work = tmp_path / "w"
    x = A.to_numpy()
    W = np.random.default_rng(1).standard_normal((16, 3))
    g, st, sk = bl.compute(bl.ops.gram(A), bl.ops.column_stats(A),
                           bl.ops.sketch(bl.ops.center(A), 40, seed=3), work_dir=str(work))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12)
    assert sk.shape == (40, 16)
    names, files, nbytes = _usage(work)
    assert names == [] and files == 1 and nbytes < 200  # the group's zarr.json only
    # The same plan kept on request: its partials and reduction levels stay (real zarr).
    bl.compute(bl.ops.gram(A), bl.ops.column_stats(A), work_dir=str(work),
               keep_intermediates=True)
    names, files, nbytes = _usage(work)
    assert len(names) >= 4 and files > 24 and nbytes > 12 * 16 * 16 * 8
    # ... and a resume of it then skips every block.
    stats = RunStats()
    bl.compute(bl.ops.gram(A), bl.ops.column_stats(A), work_dir=str(work), resume=True,
               stats=stats)
    assert stats.tasks_run == 0 and stats.tasks_skipped > 12
    assert _usage(work)[0] == []  # that resume succeeded: removed now
    # A matrix result without out= lives in the work dir: it stays, alone.
    P = bl.ops.matmul(A, W).compute(work_dir=str(work))
    assert _usage(work)[0] == [Path(P.url).name]
    np.testing.assert_allclose(P.to_numpy(), x @ W, rtol=1e-12)


def test_a_failed_compute_keeps_them_and_resume_skips(tmp_path: Path, A: bl.BlockMatrix) -> None:
    work = tmp_path / "w"
    G = bl.ops.gram(A)
    faulty = inject_fault(G, "gram/partial", tmp_path / "fault", succeed=7)
    with pytest.raises(InjectedFault):
        bl.compute(faulty, work_dir=str(work), num_workers=1)
    names = _usage(work)[0]
    partial = G.plan.stages[0].output.name
    assert partial in names
    assert len(list((work / partial / ".blocklin" / "done").iterdir())) >= 6
    assert not (work / LEASES).exists()  # the failed compute's lease is gone
    stats = RunStats()
    g = bl.compute(G, work_dir=str(work), resume=True, stats=stats)[0]
    assert stats.tasks_skipped >= 6 and stats.stage_tasks["gram/partial"] <= 6
    x = A.to_numpy()
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    assert _usage(work)[0] == []


def test_a_scope_removes_what_its_computes_left(tmp_path: Path, A: bl.BlockMatrix) -> None:
    work = tmp_path / "w"
    W = np.eye(16)[:, :2]
    with intermediates_scope():
        P = bl.ops.matmul(A, W).compute(work_dir=str(work))
        bl.ops.gram(A).compute(work_dir=str(work), keep_intermediates=True)
        assert len(_usage(work)[0]) == 4  # P, and gram's partials and two tree levels
        np.testing.assert_array_equal(P.to_numpy(), A.to_numpy()[:, :2])
    assert _usage(work)[0] == []
    # A scope that keeps: its computes keep everything, and so does the scope.
    with intermediates_scope(keep=True):
        bl.ops.gram(A).compute(work_dir=str(work))
    assert len(_usage(work)[0]) == 3
    # A scope that fails keeps what was left, for a resume.
    def failing_step() -> None:
        with intermediates_scope():
            bl.ops.matmul(A, W).compute(work_dir=str(work))
            raise RuntimeError("the step failed after its pass")

    with pytest.raises(RuntimeError, match="failed after its pass"):
        failing_step()
    assert len(_usage(work)[0]) == 4


def test_arrays_another_process_leases_are_not_removed(tmp_path: Path, A: bl.BlockMatrix) -> None:
    work = tmp_path / "w"
    G = bl.ops.gram(A)
    names = [s.output.name for s in G.plan.stages]
    with lease_held_elsewhere(work, names) as proc:
        g = G.compute(work_dir=str(work))
        # Another live process leases them: this compute left them in place.
        assert sorted(_usage(work)[0]) == sorted(names)
        holders = [info for _, info in read_leases(str(work)) if info is not None]
        assert [h.pid for h in holders] == [proc.pid]
    # The holder is gone: the next compute of the plan removes them.
    assert_bitwise_equal(G.compute(work_dir=str(work)), g)
    assert _usage(work)[0] == []


def test_a_dead_holders_lease_protects_nothing(tmp_path: Path, A: bl.BlockMatrix) -> None:
    work = tmp_path / "w"
    G = bl.ops.gram(A)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    now = time.time()
    stale = LeaseInfo("0" * 32, int(proc.stdout), socket.gethostname(), now - 5, now - 5,
                      "a killed compute", tuple(s.output.name for s in G.plan.stages))
    (work / LEASES).mkdir(parents=True)
    (work / LEASES / "stale.json").write_bytes(stale.to_json())
    assert not stale.alive()
    G.compute(work_dir=str(work))
    assert _usage(work)[0] == []
    assert (work / LEASES / "stale.json").exists()  # for gc to remove


def test_concurrent_computes_of_one_plan_share_its_arrays_safely(
        tmp_path: Path, A: bl.BlockMatrix) -> None:
    """Four threads compute the same plans in one work dir (same content-named arrays):
    each removes them only when no other still holds them, so all succeed exactly."""
    work = str(tmp_path / "w")
    x = A.to_numpy()
    ref = bl.ops.gram(A).compute(work_dir=str(tmp_path / "ref"))
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            for _ in range(3):
                g, st = bl.compute(bl.ops.gram(A), bl.ops.column_stats(A), work_dir=work,
                                   num_workers=1)
                results.append(g)
                np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert len(results) == 12
    for g in results:
        assert_bitwise_equal(g, ref)
    assert _usage(Path(work))[0] == []


def test_explain_shows_what_stays(tmp_path: Path, A: bl.BlockMatrix) -> None:
    text = str(bl.ops.gram(A).explain())
    assert "work dir: 3 intermediate arrays, up to 30.0 KiB, removed once the compute " \
           "succeeds" in text
    rep = bl.ops.matmul(A, np.ones((16, 2))).explain()
    assert rep.intermediates == 0 and rep.kept_bytes == 1200 * 2 * 8
    assert "the result (18.8 KiB) stays there (give out=" in str(rep)
    out = bl.ops.matmul(A, np.ones((16, 2)), out=str(tmp_path / "P.zarr")).explain()
    assert out.intermediates == 0 and out.kept_bytes == 0 and "work dir" not in str(out)


def test_estimators_leave_nothing_in_the_work_dir(tmp_path: Path, A: bl.BlockMatrix) -> None:
    from blocklin.ml import LinearRegression, TruncatedSVD

    work = tmp_path / "w"
    x = A.to_numpy()
    y = x @ np.arange(16.0) + 1.0
    lr = LinearRegression(work_dir=str(work)).fit(A.url, y)
    np.testing.assert_allclose(lr.predict(A.url), y, rtol=1e-9, atol=1e-9)  # a stored pass
    LinearRegression(solver="lbfgs", reg_param=0.01, work_dir=str(work)).fit(A.url, y)
    TruncatedSVD(3, work_dir=str(work)).fit(A.url)
    assert _usage(work)[0] == []
