"""Progress of every pass (operators, estimators, engines) and numpy warnings from tasks."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputDtypeError
from blocklin.executors.lazy import Lazy
from blocklin.executors.progress import PassEnd, PassStart, progress_to, step
from blocklin.ml import LinearRegression, TruncatedSVD
from blocklin.ops.inputs import as_matrix, row_panel_reads
from blocklin.plan.graph import Task, TaskContext, make_stage
from blocklin.testing.faults import slow_down

PASS_LINE = re.compile(r"^blocklin: (?P<label>.*) · pass (?P<n>\d+): (?P<tasks>\d+) tasks?")


def _pass_lines(err: str) -> list[re.Match[str]]:
    return [m for line in err.splitlines() if (m := PASS_LINE.match(line))]


class Recorder:
    """A sink keeping everything it hears, with the time each update arrived."""

    def __init__(self) -> None:
        self.starts: list[PassStart] = []
        self.ends: list[PassEnd] = []
        self.updates: list[tuple[float, str, int, int]] = []
        self.notes: list[str] = []

    def pass_started(self, start: PassStart) -> None:
        self.starts.append(start)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        self.updates.append((time.monotonic(), stage, done, total))

    def pass_finished(self, end: PassEnd) -> None:
        self.ends.append(end)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self) -> None:
        pass


@pytest.fixture
def data(tmp_path: Path) -> tuple[np.ndarray, Any]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 8)) @ np.diag(np.linspace(5, 0.5, 8))
    return x, bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))


def test_truncated_svd_reports_every_pass(data: Any, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    x, X = data
    est = TruncatedSVD(3, n_iter=3, progress=True, work_dir=str(tmp_path / "w")).fit(X)
    np.testing.assert_allclose(est.singular_values_, np.linalg.svd(x, compute_uv=False)[:3],
                               rtol=1e-8)
    lines = _pass_lines(capsys.readouterr().err)
    # n_iter power passes and the TSQR finish, each one line, numbered in order.
    assert len(lines) == est.n_passes_ == 4
    assert [int(m["n"]) for m in lines] == [1, 2, 3, 4]
    assert [m["label"] for m in lines] == [
        "TruncatedSVD.fit · power iteration 1/3", "TruncatedSVD.fit · power iteration 2/3",
        "TruncatedSVD.fit · power iteration 3/3", "TruncatedSVD.fit · range finish (TSQR)"]
    assert all(int(m["tasks"]) >= X.nblocks[0] for m in lines)  # a task per row block at least
    # Off by default: the same fit prints nothing.
    TruncatedSVD(3, n_iter=2, work_dir=str(tmp_path / "w")).fit(X)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("stored", [False, True])
def test_lbfgs_reports_every_pass(data: Any, tmp_path: Path, stored: bool,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    x, X = data
    y = x @ np.arange(1.0, 9.0) + 0.5 + np.random.default_rng(4).standard_normal(600) * 0.01
    model = LinearRegression(solver="lbfgs", tol=1e-12, max_iter=50, progress=True,
                             work_dir=str(tmp_path / "w"))
    model.fit(X if stored else x, y)
    ref = np.linalg.lstsq(np.column_stack([x, np.ones(600)]), y, rcond=None)[0]
    np.testing.assert_allclose(model.coef_, ref[:8], rtol=1e-6)
    lines = _pass_lines(capsys.readouterr().err)
    assert len(lines) == model.n_passes_ > 5  # the moments pass, then one per evaluation
    assert lines[0]["label"] == "LinearRegression.fit · column moments"
    assert [m["label"] for m in lines[1:]] == [
        f"LinearRegression.fit · lbfgs evaluation {i}" for i in range(1, len(lines))]


def test_compute_hook_and_steps(data: Any, tmp_path: Path) -> None:
    x, X = data
    seen: list[tuple[str, int, int]] = []
    g = bl.compute(bl.ops.gram(X), work_dir=str(tmp_path / "w"),
                   progress=lambda *a: seen.append(a))[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    # Once per stage group before running (0 done), then up by one per finished task.
    first = seen[0]
    assert first == ("gram/partial", 0, X.nblocks[0])
    partial = [d for label, d, _ in seen if label == "gram/partial"]
    assert partial == list(range(X.nblocks[0] + 1))
    # Steps nest; the sink in effect hears passes run anywhere inside the block.
    rec = Recorder()
    with progress_to(rec), step("outer"), step("inner"):
        bl.compute(bl.ops.gram(X), work_dir=str(tmp_path / "w"))
    assert [s.step for s in rec.starts] == ["outer · inner"]
    assert rec.ends[0].ok and rec.ends[0].tasks_run == sum(s.total for s in rec.starts[0].stages)


def test_bad_progress_is_refused_before_any_pass(data: Any, tmp_path: Path) -> None:
    _, X = data
    with pytest.raises(InputDtypeError, match="progress must be"):
        TruncatedSVD(2, progress="yes", work_dir=str(tmp_path / "w")).fit(X)
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("zarr.json"))


# -- numpy warnings inside tasks ---------------------------------------------------------
class _Exploding:
    """A kernel whose exp overflows on large entries, which it then clips: a finite
    result after numpy reported an overflow."""

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        z = np.exp(np.asarray(blocks[0]) * 1000.0)
        return np.where(np.isfinite(z), z, 0.0).sum(axis=0)[None, :]


def _exploding(A: Any) -> Lazy:
    m = as_matrix(A)
    tasks = [Task(out=(i, 0), reads=row_panel_reads(m, 0, i)) for i in range(m.grid[0])]
    n = m.shape[1]
    stage = make_stage("test/exploding", _Exploding(), [m.input], tasks,
                       shape=(m.grid[0], n), chunks=(1, n), dtype="float64")
    return Lazy(m.plan.add(stage), stage.output, "matrix", label="exploding")


def test_runtime_warning_in_tasks_becomes_one_message(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    x = np.full((400, 3), 2.0)
    x[::100, 0] = 1e-3  # one small entry per block: those stay finite
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    with caplog.at_level(logging.WARNING, logger="blocklin"):
        # Before the task wrapper counted them, the RuntimeWarning (an error under this
        # suite's filterwarnings) failed every task.
        out = _exploding(A).compute(work_dir=str(tmp_path / "w")).to_numpy()
    with np.errstate(over="ignore"):
        big = np.exp(x * 1000)
    expected = np.where(np.isfinite(big), big, 0.0)
    np.testing.assert_allclose(out, expected.reshape(4, 100, 3).sum(axis=1), rtol=1e-12)
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert msg.startswith("stage test/exploding:") and "kernel test/exploding (_Exploding)" in msg
    assert "overflow 4 times in 4 of 4 block tasks" in msg
    err = capfd.readouterr().err
    assert "RuntimeWarning" not in err and "overflow encountered" not in err


# -- engines -----------------------------------------------------------------------------
def test_distributed_progress_and_dashboard(data: Any, tmp_path: Path, dask_client: Any) -> None:
    x, X = data
    rec = Recorder()
    g = bl.compute(bl.ops.gram(X), client=dask_client, work_dir=str(tmp_path / "w"),
                   progress=rec)[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    assert any(dask_client.dashboard_link in n for n in rec.notes)
    partial = [d for _, label, d, _ in rec.updates if label == "gram/partial"]
    assert partial == list(range(1, X.nblocks[0] + 1))  # one update per finished task


@pytest.mark.spark
def test_spark_progress_steps_per_task(tmp_path: Path, spark_session: Any) -> None:
    pytest.importorskip("pyspark")
    x = np.random.default_rng(5).standard_normal((800, 4))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    # 8 block tasks of 0.3 s on local[2]: 4 Spark tasks of 2 blocks, in two waves.
    (G,) = slow_down(bl.ops.gram(A), seconds=0.3)
    rec = Recorder()
    g = bl.compute(G, executor="spark", spark=spark_session, work_dir=str(tmp_path / "w"),
                   progress=rec)[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    partial = [(t, d) for t, label, d, _ in rec.updates if label == "gram/partial"]
    groups = len(rec.starts[0].stages)
    assert len(rec.updates) > groups
    # Counts arrive while the job runs, not all when its results come back: the first
    # wave's tasks are reported well before the last.
    first_t, first_done = partial[0]
    last_t, last_done = partial[-1]
    assert 0 < first_done < last_done == 8
    assert last_t - first_t > 0.25
