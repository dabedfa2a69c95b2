"""A run killed part-way resumes: only incomplete blocks are recomputed, same result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.executors import RunStats
from blocklin.testing import assert_bitwise_equal, inject_fault
from blocklin.testing.faults import InjectedFault
from blocklin.testing.fixtures import ExecutorCase


@pytest.mark.parametrize("succeed", [0, 3, 9])
def test_resume_recomputes_only_missing_blocks(tmp_path: Path, succeed: int) -> None:
    x = np.random.default_rng(0).standard_normal((1200, 16))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))  # 12 blocks
    work = str(tmp_path / "w")
    G = bl.ops.gram(A)
    faulty = inject_fault(G, "gram/partial", tmp_path / "fault", succeed=succeed)
    with pytest.raises(InjectedFault):
        bl.compute(faulty, work_dir=work, num_workers=1)
    stats = RunStats()
    g = bl.compute(G, work_dir=work, resume=True, stats=stats, keep_intermediates=True)[0]
    # Exactly the missing partials run again; reduction tasks whose inputs were all
    # complete before the fault (12 parts -> 2 -> 1) may have completed too.
    assert stats.stage_tasks["gram/partial"] == 12 - succeed
    assert stats.tasks_run + stats.tasks_skipped == 12 + 2 + 1
    assert stats.array_reads[A.url] == 12 - succeed
    ref = bl.ops.gram(A).compute(work_dir=str(tmp_path / "fresh"))
    assert_bitwise_equal(g, ref)
    # Kept on request: a second resume finds everything complete and runs nothing.
    again = RunStats()
    assert_bitwise_equal(bl.compute(G, work_dir=work, resume=True, stats=again)[0], ref)
    assert again.tasks_run == 0


def test_resume_on_every_executor(tmp_path: Path, executor: ExecutorCase) -> None:
    x = np.random.default_rng(1).standard_normal((800, 8))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    W = np.random.default_rng(2).standard_normal((8, 3))
    P = bl.ops.matmul(A, W)
    faulty = inject_fault(P, "matmul/panel", tmp_path / "fault", succeed=5)
    with pytest.raises(Exception, match="injected fault"):
        executor.compute(faulty)
    stats = RunStats()
    out = executor.compute_one(P, resume=True, stats=stats)
    # Five kernels ran before the fault. A sibling task may still be writing its block
    # when the failure surfaces (so 4 are recorded), or a few more may have started
    # and completed on their own.
    assert stats.tasks_skipped >= 4
    assert stats.tasks_run == 8 - stats.tasks_skipped
    np.testing.assert_allclose(out.to_numpy(), x @ W, rtol=1e-14)


def test_no_resume_recomputes_everything(tmp_path: Path) -> None:
    A = bl.from_array(np.ones((300, 3)), tmp_path / "A.zarr", chunks=(100, None))
    work = str(tmp_path / "w")
    bl.ops.gram(A).compute(work_dir=work)
    stats = RunStats()
    bl.compute(bl.ops.gram(A), work_dir=work, stats=stats)
    assert stats.tasks_skipped == 0 and stats.tasks_run == 4


def test_half_written_output_is_not_a_result(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((500, 4))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(50, None))
    P = bl.ops.matmul(A, np.eye(4), out=str(tmp_path / "P.zarr"))
    faulty = inject_fault(P, "matmul/panel", tmp_path / "fault", succeed=4)
    with pytest.raises(InjectedFault):
        bl.compute(faulty, work_dir=str(tmp_path / "w"), num_workers=1)
    with pytest.raises(FileNotFoundError):
        bl.open(tmp_path / "P.zarr")  # chunks exist, but no metadata: not a result
    out = bl.compute(P, work_dir=str(tmp_path / "w"), resume=True)[0]
    np.testing.assert_array_equal(out.to_numpy(), x)
