"""collect_stats: the counters of every compute inside a block, each counted once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import blocklin as bl
from blocklin.executors.base import RunStats, collect_stats


def test_each_compute_is_collected_once(tmp_path: Path) -> None:
    A = bl.from_array(np.random.default_rng(0).normal(size=(400, 5)), tmp_path / "A.zarr",
                      chunks=(100, None))
    work = str(tmp_path / "w")
    alone = RunStats()
    bl.compute(bl.ops.gram(A), work_dir=work, stats=alone)
    reused = RunStats()  # a stats object kept across computes: its totals grow
    with collect_stats() as outer:
        bl.compute(bl.ops.gram(A), work_dir=work, stats=reused)
        with collect_stats() as inner:
            bl.compute(bl.ops.gram(A), work_dir=work, stats=reused)
            res = bl.ops.randomized_svd(A, 2, work_dir=work)
    assert reused.tasks_run == 2 * alone.tasks_run
    assert [r.tasks_run for r in outer[:2]] == [alone.tasks_run] * 2  # not 1x, then 2x
    assert len(outer) == 2 + res.passes and len(inner) == 1 + res.passes
    assert all(r.passes == {A.url: 1.0} for r in outer)
    assert outer[1].stage_tasks == alone.stage_tasks
