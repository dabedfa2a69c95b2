from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import blocklin as bl
from blocklin.errors import PlanMemoryError
from blocklin.executors import RunStats
from blocklin.plan import ArrayNode, Plan, SumParts, finalize, tree_reduce


@pytest.fixture
def A(tmp_path: Path) -> bl.BlockMatrix:
    x = np.random.default_rng(0).standard_normal((1000, 20))
    return bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))


def test_gram_and_stats_share_one_pass(A: bl.BlockMatrix, tmp_path: Path) -> None:
    G, S = bl.ops.gram(A), bl.ops.column_stats(A)
    final = finalize(G.plan.merge(S.plan), 2**30)
    fused = [g for g in final.groups if len(g.members) == 2]
    assert len(fused) == 1 and fused[0].ntasks == 10
    stats = RunStats()
    bl.compute(G, S, work_dir=str(tmp_path / "w"), stats=stats)
    assert stats.passes == {A.url: 1.0}
    assert stats.array_reads[A.url] == 10  # each block of A read once


def test_separate_computes_read_twice(A: bl.BlockMatrix, tmp_path: Path) -> None:
    s1, s2 = RunStats(), RunStats()
    bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"), stats=s1)
    bl.ops.column_stats(A).compute(work_dir=str(tmp_path / "w"), stats=s2)
    assert s1.array_reads[A.url] == 10 and s2.array_reads[A.url] == 10


def test_memory_refusal_names_stage_and_figures(A: bl.BlockMatrix, tmp_path: Path) -> None:
    G = bl.ops.gram(A)
    with pytest.raises(PlanMemoryError, match=r"gram/partial.*KiB.*max_task_memory of 10.0 KiB"):
        G.compute(work_dir=str(tmp_path / "w"), max_task_memory=10 * 1024)
    assert not (tmp_path / "w").exists()  # refused before anything ran
    with pytest.raises(PlanMemoryError):
        G.explain(max_task_memory="10KiB")
    assert "gram/partial" in str(G.explain())


def test_explain_reports_passes_and_memory(A: bl.BlockMatrix) -> None:
    report = bl.ops.gram(bl.ops.standardize(A)).explain()
    text = str(report)
    assert "column_stats/partial" in text and "gram/partial" in text
    # standardize needs the statistics first: two passes over A.
    assert report.source_passes() == {A.url: 2.0}


def test_names_are_content_derived(A: bl.BlockMatrix, tmp_path: Path) -> None:
    again = bl.open(A.url)
    assert bl.ops.gram(A).output.name == bl.ops.gram(again).output.name
    other = bl.from_array(np.ones(A.shape), tmp_path / "B.zarr", chunks=A.chunks)
    assert bl.ops.gram(A).output.name != bl.ops.gram(other).output.name


@settings(max_examples=40, deadline=None)
@given(nparts=st.integers(1, 200), fan_in=st.integers(2, 16))
def test_tree_reduce_covers_every_part_once_in_order(nparts: int, fan_in: int) -> None:
    parts = ArrayNode(name="a-parts", shape=(nparts, 3), chunks=(1, 3), dtype="float64")
    plan, out = tree_reduce(Plan(), parts, SumParts(), op="t", fan_in=fan_in)
    assert out.shape == (1, 3)
    leaves: list[list[int]] = [[i] for i in range(nparts)]
    for stage in plan.stages:
        assert all(len(t.reads) <= fan_in for t in stage.tasks)
        new = []
        for t in stage.tasks:
            idx = [b[0] for _, b in t.reads]
            assert idx == sorted(idx) and idx == list(range(idx[0], idx[0] + len(idx)))
            new.append([leaf for i in idx for leaf in leaves[i]])
        leaves = new
    assert leaves == [list(range(nparts))]


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 500), cols=st.integers(1, 40), chunk=st.integers(1, 600))
def test_memory_projection_bounds_blocks(rows: int, cols: int, chunk: int) -> None:
    from blocklin.ops.products import GramPartial
    from blocklin.plan.graph import StageInput, Task, make_stage
    from blocklin.plan.memory import project_task_memory

    node = ArrayNode(name="src-x", shape=(rows, cols), chunks=(min(chunk, rows), cols),
                     dtype="float64", url="/x")
    stage = make_stage("gram/partial", GramPartial("float64"), [StageInput(node)],
                       [Task(out=(i, 0, 0), reads=((0, (i, 0)),)) for i in range(node.grid[0])],
                       shape=(node.grid[0], cols, cols), chunks=(1, cols, cols), dtype="float64",
                       extra_memory=cols * cols * 8)
    mem = project_task_memory([stage])
    block = min(chunk, rows) * cols * 8
    assert block + cols * cols * 8 <= mem <= block + 4 * cols * cols * 8
