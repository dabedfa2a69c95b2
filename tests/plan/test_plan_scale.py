"""Plans scale with stages, not blocks (issue 13 item 4).

A plan for a 10^10 x 10^3 float64 matrix (80 TB, 10^6 row blocks; metadata only, no
chunk on disk) is built, explained and refused without listing its tasks; the
task rules enumerate exactly the tasks the explicit lists did; streamed submission
in small batches gives the same bits as one batch.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import PlanMemoryError
from blocklin.executors.base import prepare
from blocklin.executors.dask import DaskExecutor
from blocklin.ml import LinearRegression
from blocklin.ops.glm.moments import moments_spec
from blocklin.ops.glm.passes import build_pass
from blocklin.plan import finalize
from blocklin.plan.finalize import FinalPlan, PlanReport
from blocklin.plan.graph import RowPanelTasks, Task, TaskList, TreeTasks
from blocklin.plan.memory import input_block_bytes
from blocklin.testing.helpers import assert_bitwise_equal
from blocklin.testing.plans import metadata_only_matrix

HUGE = (10**10, 1000)
HUGE_CHUNKS = (10**4, 1000)  # 10^6 row blocks of 80 MB
#: Bytes a plan of the huge matrix may allocate: 10^6 Task objects take ~300 MB.
BOUND = 20 * 2**20


@pytest.fixture
def huge(tmp_path: Path) -> bl.BlockMatrix:
    return metadata_only_matrix(tmp_path / "huge.zarr", HUGE, HUGE_CHUNKS)


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak bytes it allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_metadata_only_matrix_opens_without_chunks(huge: bl.BlockMatrix) -> None:
    assert huge.shape == HUGE and huge.nblocks == (10**6, 1)
    files = sorted(p.name for p in Path(huge.url).rglob("*") if p.is_file())
    assert files == ["zarr.json"]  # nothing else written; opening read nothing else
    assert bl.open(huge.url).fingerprint == huge.fingerprint


def test_huge_gram_explains_and_refuses_without_listing_tasks(huge: bl.BlockMatrix,
                                                              tmp_path: Path) -> None:
    G = bl.ops.gram(huge)
    report, peak = _peak(lambda: G.explain(max_task_memory="4GiB"))
    assert peak < BOUND
    tasks = [r[1] for r in report.rows]
    # The tree keeps fan-in 8 at 10^6 parts: 7 levels.
    assert tasks == [10**6, 125_000, 15_625, 1954, 245, 31, 4, 1]
    block = 10**4 * 1000 * 8
    assert report.rows[0][3] == 10**6 * input_block_bytes(G.plan.stages[0].inputs[0].array)
    assert report.rows[0][2] > block  # a row panel, its copy and the n x n partial
    assert report.source_passes() == {huge.url: 1.0}

    def refuse() -> None:
        with pytest.raises(PlanMemoryError, match=r"gram/partial.*over the allowed"):
            G.compute(max_task_memory="64MiB", work_dir=str(tmp_path / "w"))

    _, peak = _peak(refuse)
    assert peak < BOUND
    assert not (tmp_path / "w").exists()


def test_huge_randomized_svd_and_regression_refuse_without_listing_tasks(
        huge: bl.BlockMatrix, tmp_path: Path) -> None:
    y = metadata_only_matrix(tmp_path / "y.zarr", (HUGE[0], 1), (HUGE_CHUNKS[0], 1))
    work = str(tmp_path / "w")

    def svd() -> None:
        with pytest.raises(PlanMemoryError, match="rsvd/normal"):
            bl.ops.randomized_svd(huge, 10, work_dir=work, max_task_memory="64MiB")

    def regression() -> None:
        model = LinearRegression(solver="normal", work_dir=work,
                                 compute_options={"max_task_memory": "64MiB"})
        with pytest.raises(PlanMemoryError, match="partial"):
            model.fit(huge, y)

    for case in (svd, regression):
        _, peak = _peak(case)
        assert peak < BOUND, case.__name__
    report, peak = _peak(lambda: build_pass(
        moments_spec(HUGE[1], 1, False, 1, True), huge, y).explain("4GiB"))
    assert peak < BOUND and report.rows[0][1] == 10**6
    assert report.source_passes() == {huge.url: 1.0, y.url: 1.0}


def test_fresh_prepare_lists_nothing_and_jobs_stream(huge: bl.BlockMatrix,
                                                     tmp_path: Path) -> None:
    final = finalize(bl.ops.gram(huge).plan, 2**32)
    xplan, peak = _peak(lambda: prepare(final, str(tmp_path / "w"), resume=False))
    assert peak < BOUND
    assert len(xplan.jobs) == sum(g.ntasks for g in final.groups) == 1_142_860
    jobs: Iterator[Any] = iter(xplan.jobs)
    first = [next(jobs) for _ in range(3)]
    assert [j.batch.tasks[0] for j in first] == [Task((i, 0, 0), ((0, (i, 0)),)) for i in range(3)]
    assert all(j.deps == () for j in first)


def _old_tasks_row_panels(nrows: int, widths: list[int], ndim: int) -> list[Task]:
    return [Task(out=(i,) + (0,) * (ndim - 1),
                 reads=tuple((p, (i, j)) for p, n in enumerate(widths) for j in range(n)))
            for i in range(nrows)]


def _old_tasks_tree(n: int, fan_in: int, ndim: int) -> list[Task]:
    rest = (0,) * (ndim - 1)
    return [Task(out=(j, *rest), reads=tuple((0, (k, *rest))
                                             for k in range(j * fan_in, min(n, (j + 1) * fan_in))))
            for j in range(-(-n // fan_in))]


@pytest.mark.parametrize(("nrows", "widths", "ndim"),
                         [(1, [1], 3), (7, [3], 3), (5, [2, 1, 1], 3), (4, [1], 2), (6, [0, 2], 3)])
def test_row_panel_rule_enumerates_the_explicit_tasks(nrows: int, widths: list[int],
                                                      ndim: int) -> None:
    rule = RowPanelTasks(nrows, tuple(enumerate(widths)), ndim)
    old = _old_tasks_row_panels(nrows, widths, ndim)
    explicit = TaskList(tuple(old))
    assert list(rule) == old and len(rule) == nrows and rule[-1] == old[-1]
    names = ("a", "b", "a")[: len(widths)]
    assert rule.signature(names) == explicit.signature(names)
    assert rule.read_counts(names) == explicit.read_counts(names)
    assert rule.every_task_reads() == explicit.every_task_reads()
    for pos, t in enumerate(old):
        assert rule.position(t.out) == explicit.position(t.out) == pos
    assert rule.position((nrows,) + (0,) * (ndim - 1)) is None


@pytest.mark.parametrize(("n", "fan_in", "ndim"), [(1, 8, 3), (8, 8, 3), (9, 8, 3), (100, 3, 2)])
def test_tree_rule_enumerates_the_explicit_tasks(n: int, fan_in: int, ndim: int) -> None:
    rule = TreeTasks(n, fan_in, ndim)
    old = _old_tasks_tree(n, fan_in, ndim)
    assert list(rule) == old
    explicit = TaskList(tuple(old))
    assert rule.read_counts(("p",)) == explicit.read_counts(("p",))
    assert [rule.position(t.out) for t in old] == list(range(len(old)))


def _report_by_listing(final: FinalPlan) -> list[tuple[str, int, int, int, int]]:
    """The explain rows as computed before the rules: every task's reads listed."""
    rows = []
    for g in final.groups:
        seen: set[Any] = set()
        read = 0
        for m in g.members:
            for t in m.tasks:
                for pos, idx in t.reads:
                    node = m.inputs[pos].array
                    if (node.name, idx) in seen:
                        continue
                    seen.add((node.name, idx))
                    read += (node.block_nbytes if node.block_nbytes is not None
                             else input_block_bytes(node) if node.codec else node.chunk_nbytes)
        written = sum(m.output.chunk_nbytes * len(m.tasks) for m in g.members)
        rows.append((g.label, g.ntasks, g.memory, read, written))
    return rows


def test_explain_equals_listing_on_small_plans(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    A = bl.from_array(rng.standard_normal((230, 12)), tmp_path / "A.zarr", chunks=(20, 5))
    B = bl.from_array(rng.standard_normal((12, 9)), tmp_path / "B.zarr", chunks=(5, 4))
    y = bl.from_array(rng.standard_normal((230, 1)), tmp_path / "y.zarr", chunks=(20, 1))
    from blocklin.ops.tsqr import plan_finish, plan_tree

    tree = plan_tree([A], with_q=True, right=rng.standard_normal((12, 4)))
    plans = {
        "gram+stats": bl.ops.gram(A).plan.merge(bl.ops.column_stats(A).plan),
        "matmul 2-D": bl.ops.matmul(A, B).plan,
        "A.T y": bl.ops.matmul(A.T, y).plan,
        "standardized gram": bl.ops.gram(bl.ops.standardize(A)).plan,
        "glm pass": build_pass(moments_spec(12, 1, False, 3, True), A, y).plan,
        "tsqr + moments": plan_finish(tree, "svd")[0].merge(build_pass(
            moments_spec(12, 1, False, 3, True), A, y).plan),
    }
    for name, plan in plans.items():
        final = finalize(plan, 2**32)
        assert list(PlanReport.build(final).rows) == _report_by_listing(final), name
    fused = finalize(plans["gram+stats"], 2**32)
    assert len(fused.groups[0].members) == 2


def test_rule_and_listed_stages_still_fuse(tmp_path: Path) -> None:
    """A TSQR leaf over single blocks (tasks listed one by one) reads what the moments
    pass (a row-panel rule) reads: they share one pass, as before the rules."""
    rng = np.random.default_rng(1)
    X = bl.from_array(rng.standard_normal((200, 6)), tmp_path / "X.zarr", chunks=(20, None))
    y = bl.from_array(rng.standard_normal((200, 1)), tmp_path / "y.zarr", chunks=(20, None))
    from blocklin.ops.tsqr import plan_tree

    tree = plan_tree([X, y], with_q=False)
    moments = build_pass(moments_spec(6, 1, False, 1, True), X, y)
    final = finalize(tree.plan.merge(moments.plan), 2**32)
    assert len(final.groups[0].members) == 2
    assert PlanReport.build(final).source_passes() == {X.url: 1.0, y.url: 1.0}


@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_small_batches_give_the_same_bits(tmp_path: Path, where: str) -> None:
    """Jobs streamed 3 at a time (dependencies crossing batches, at most 4 in flight)
    give the bits of the default one-batch run, and numpy's answer."""
    x = np.random.default_rng(2).standard_normal((500, 7))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(10, None))  # 50 blocks, 3 levels
    G, S = bl.ops.gram(A), bl.ops.column_stats(A)
    ref_g, ref_s = bl.compute(G, S, work_dir=str(tmp_path / "w0"))
    if where == "threads":
        engine = DaskExecutor(num_workers=3, batch_jobs=3, window_jobs=4)
        g, s = bl.compute(G, S, executor=engine, work_dir=str(tmp_path / "w1"))
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            engine = DaskExecutor(client=client, batch_jobs=3, window_jobs=4)
            g, s = bl.compute(G, S, executor=engine, work_dir=str(tmp_path / "w1"))
    assert_bitwise_equal(g, ref_g)
    assert_bitwise_equal(s.mean, ref_s.mean)
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12, atol=1e-10)


def test_resume_with_small_batches_recomputes_only_the_lost(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((300, 5))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(10, None))
    work = tmp_path / "w"
    G = bl.ops.gram(A)
    ref = G.compute(work_dir=str(work), keep_intermediates=True)
    partial = G.plan.stages[0].output.name
    (work / partial / ".blocklin" / "done" / "4.0.0").unlink()
    from blocklin.executors import RunStats

    stats = RunStats()
    engine = DaskExecutor(num_workers=2, batch_jobs=2, window_jobs=2)
    got = G.compute(work_dir=str(work), resume=True, executor=engine, stats=stats)
    assert_bitwise_equal(got, ref)
    # The lost partial, then its path up the tree (30 parts -> 4 -> 1).
    assert stats.tasks_run == 3 and stats.tasks_skipped == 30 + 4 + 1 - 3


def _old_leaf_ranges(nblocks: int, chunk_rows: int, nrows: int, c: int) -> list[tuple[int, int]]:
    """TSQR's leaves as they were listed before the rule."""
    per = -(-c // chunk_rows)
    ranges = [(s, min(s + per, nblocks)) for s in range(0, nblocks, per)]
    if len(ranges) > 1 and nrows - ranges[-1][0] * chunk_rows < c:
        ranges[-2:] = [(ranges[-2][0], nblocks)]
    return ranges


@pytest.mark.parametrize(("chunk_rows", "c"), [(1, 1), (3, 5), (7, 33), (10, 10), (64, 5)])
def test_tsqr_leaf_rule_equals_the_listed_leaves(chunk_rows: int, c: int) -> None:
    from blocklin.ops.tsqr import Leaves

    for nrows in range(c, 400, 7):
        nblocks = -(-nrows // chunk_rows)
        leaves = Leaves.plan(nblocks, chunk_rows, nrows, c)
        old = _old_leaf_ranges(nblocks, chunk_rows, nrows, c)
        assert list(leaves) == old
        assert leaves.max_blocks() == max(hi - lo for lo, hi in old)
        assert all(old[leaves.of(i)][0] <= i < old[leaves.of(i)][1] for i in range(nblocks))


def test_tsqr_rules_enumerate_the_listed_tasks(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    A = bl.from_array(rng.standard_normal((230, 12)), tmp_path / "A.zarr", chunks=(5, 5))
    from blocklin.ops.tsqr import FAN_IN, plan_finish, plan_form_q, plan_tree

    tree = plan_tree([A], with_q=True)
    plan, finish = plan_finish(tree, "svd")
    q = plan_form_q(tree, plan, finish)
    leaf_stage = next(s for s in q.plan.stages if s.op == "tsqr/leaf_r")
    form_q = next(s for s in q.plan.stages if s.op == "tsqr/form_q")
    old = _old_leaf_ranges(46, 5, 230, 12)
    # A has 3 column blocks: every leaf reads them all, row block by row block.
    listed = [Task((g, 0, 0), tuple((0, (r, j)) for r in range(lo, hi) for j in range(3)))
              for g, (lo, hi) in enumerate(old)]
    assert list(leaf_stage.tasks) == listed
    levels = len(tree.levels)
    for i in (0, 1, 17, 45):
        g = next(k for k, (lo, hi) in enumerate(old) if lo <= i < hi)
        reads = listed[g].reads + tuple((1 + lv, (g // FAN_IN**(lv + 1), 0, 0))
                                        for lv in range(levels)) + ((1 + levels, (0, 0)),)
        assert form_q.tasks[i] == Task((i, 0), reads)
        assert form_q.tasks.position((i, 0)) == i
    # mode "svd": Q·W is U, the left singular vectors (up to sign)
    u = np.linalg.svd(A.to_numpy(), full_matrices=False)[0]
    np.testing.assert_allclose(np.abs(q.compute(work_dir=str(tmp_path / "w"))), np.abs(u),
                               atol=1e-10)


def test_huge_tsqr_explains_without_listing_tasks(huge: bl.BlockMatrix) -> None:
    from blocklin.ops.tsqr import plan_finish, plan_form_q, plan_tree

    def explain() -> Any:
        tree = plan_tree([huge], with_q=True, right=np.ones((HUGE[1], 60)))
        plan, finish = plan_finish(tree, "svd")
        return plan_form_q(tree, plan, finish).explain("4GiB")

    report, peak = _peak(explain)
    assert peak < BOUND
    assert report.rows[0][1] == 10**6 and report.source_passes()[huge.url] == 2.0
