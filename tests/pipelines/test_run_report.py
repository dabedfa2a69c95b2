"""The run report tells the truth: every compute counted, dry runs that refuse what
would fail, and plots whose numbers match independent references.

The pipeline is a CSV ingested by ``blocklin.pipelines.ingest`` (so its columns have
names), with a planned step (column statistics), a randomized SVD, a PCA and a linear
regression: the last three run their own computes after the plan.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LinearRegression as SkLinear
from sklearn.metrics import r2_score, root_mean_squared_error
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.executors.base import RunStats, collect_stats
from blocklin.ml import LinearRegression
from blocklin.pipelines.ingest import ingest
from blocklin.pipelines.runner import RunOptions, explain_pipeline, load_pipeline, run_pipeline
from blocklin.pipelines.spec import SpecError
from blocklin.storage.leases import flush_removals

NAMES = ["age", "dose", "weight", "height", "score", "income"]
ROWS, COLS = 600, len(NAMES)


@pytest.fixture
def data(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X (600 x 6, columns of different scales) and a noisy linear label, ingested from
    a CSV in blocks of 100 rows."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(ROWS, COLS)) * np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.8]) + 0.3
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0]) + 4.0 + rng.normal(scale=0.7, size=ROWS)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*NAMES, "target"])
        w.writerows([*map(repr, row), repr(t)] for row, t in zip(x.tolist(), y.tolist(),
                                                                 strict=True))
    ingest(str(tmp_path / "d.csv"), str(tmp_path / "X.zarr"), label="target", chunk_rows=100)
    return x, y


def spec(**steps_params: Any) -> dict[str, Any]:
    svd = {"k": 3, **steps_params.get("svd", {})}
    return {
        "name": "report", "output_dir": "out",
        "inputs": {"X": {"path": "X.zarr"}, "y": {"path": steps_params.get("y", "X.label.zarr")}},
        "steps": [{"name": "stats", "op": "column_stats", "inputs": {"A": "X"}},
                  {"name": "svd", "op": "randomized_svd", "inputs": {"A": "X"}, "params": svd},
                  {"name": "pca", "op": "pca", "inputs": {"A": "X"}, "params": {"k": 2}},
                  {"name": "lr", "op": "linear_regression", "inputs": {"X": "X", "y": "y"}}],
        "outputs": {"stats": {"step": "stats"}, "svd": {"step": "svd"}, "pca": {"step": "pca"},
                    "lr": {"step": "lr"}},
    }


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_counts_equal_what_the_same_estimators_run(tmp_path: Path, data: Any) -> None:
    m = run_pipeline(load_pipeline(write(tmp_path, spec())))
    # The same operators and estimators, run here, counted by collect_stats.
    X, y = bl.open(tmp_path / "X.zarr"), bl.open(tmp_path / "X.label.zarr")
    work = str(tmp_path / "ref-work")
    parts: dict[str, list[RunStats]] = {}
    with collect_stats() as parts["plan"]:
        bl.compute(bl.ops.column_stats(X), work_dir=work)
    with collect_stats() as parts["svd"]:
        bl.ops.randomized_svd(X, 3, work_dir=work, with_stats=True)
    with collect_stats() as parts["pca"]:
        bl.ops.pca(X, 2, work_dir=work, with_stats=True)
    with collect_stats() as parts["lr"]:
        est = LinearRegression(work_dir=work).fit(X, y)
        est.predict(X)  # the residuals the report plots
        est.summary.as_arrays()  # R², RMSE, p-values written with the output
    runs = {r["name"]: r for r in m["step_runs"]}
    assert list(runs) == ["plan", "svd", "pca", "lr"]
    total = RunStats()
    for name, computes in parts.items():
        ref = RunStats()
        for r in computes:
            ref.merge(r)
        total.merge(ref)
        assert (runs[name]["computes"], runs[name]["tasks_run"], runs[name]["passes"]) \
            == (len(computes), ref.tasks_run, ref.passes), name
    assert runs["svd"]["passes"] == {str(tmp_path / "X.zarr"): 4.0}  # n_iter + 2
    assert m["stats"]["tasks_run"] == total.tasks_run > runs["plan"]["tasks_run"]
    assert m["stats"]["tasks_skipped"] == 0
    assert m["passes"] == total.passes
    assert m["passes"][str(tmp_path / "X.zarr")] == 1 + 4 + 4 + 3
    assert sum(r["seconds"] for r in m["step_runs"]) <= m["seconds"]
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert f"{total.tasks_run} tasks run, 0 skipped" in report
    assert f"- X (`{tmp_path / 'X.zarr'}`): 12" in report


def test_report_figures_match_references(tmp_path: Path, data: Any) -> None:
    x, y = data
    m = run_pipeline(load_pipeline(write(tmp_path, spec())))
    folder = tmp_path / "out" / "report"
    figures = json.loads((folder / "figures.json").read_text())
    # Regression: R² and RMSE as scikit-learn computes them for the same fit.
    pred = SkLinear().fit(x, y).predict(x)
    assert figures["lr"]["r2"] == pytest.approx(r2_score(y, pred), rel=1e-10)
    assert figures["lr"]["rmse"] == pytest.approx(root_mean_squared_error(y, pred), rel=1e-9)
    assert figures["lr"]["n"] == ROWS
    assert list(figures["lr"]["coefficients"]) == NAMES  # named as ingest recorded them
    # SVD: each component's share of ‖X‖_F², not of the top k (which would end at 1).
    s = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(figures["svd"]["explained_variance_ratio"],
                               s[:3] ** 2 / np.sum(s**2), rtol=1e-9)
    assert sum(figures["svd"]["explained_variance_ratio"]) < 0.99
    # PCA: of the centered X's total variance, as scikit-learn's PCA reports it.
    sc = np.linalg.svd(x - x.mean(0), compute_uv=False)
    np.testing.assert_allclose(figures["pca"]["explained_variance_ratio"],
                               sc[:2] ** 2 / np.sum(sc**2), rtol=1e-9)
    assert figures["stats"]["columns"] == NAMES
    # Wall time: the steps the manifest timed, and the driver's rest, sum to the run.
    assert sum(figures["time"].values()) == pytest.approx(m["seconds"], rel=1e-6)
    for png in m["report"]["plots"]:
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {Path(p).name for p in m["report"]["plots"]}
    assert names == {"time.png", "stats-columns.png", "svd-spectrum.png", "pca-spectrum.png",
                     "lr-residuals.png", "lr-coefficients.png"}


def _files(root: Path) -> set[Path]:
    flush_removals()  # removed arrays leave the tree before the walk, not under it
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize(("doc", "loc", "message"), [
    (spec(svd={"k": 7}), "steps[1].params.k", "at most min(600, 6) = 6 singular values"),
    (spec(y="y500.zarr"), "steps[3]", "X has 600 rows but y has 500"),
    (spec(y="y2.zarr"), "steps[3]", "y must be one column"),
])
def test_dry_run_refuses_before_any_compute(tmp_path: Path, data: Any, doc: dict[str, Any],
                                            loc: str, message: str) -> None:
    bl.from_array(np.ones((500, 1)), tmp_path / "y500.zarr")
    bl.from_array(np.ones((600, 2)), tmp_path / "y2.zarr")
    before = _files(tmp_path)
    pipe = load_pipeline(write(tmp_path, doc))
    before.add(tmp_path / "spec.yaml")
    for attempt in (explain_pipeline, run_pipeline):
        with pytest.raises(SpecError) as err:
            attempt(pipe)
        assert err.value.loc == loc and message in err.value.message
    assert _files(tmp_path) == before  # nothing written: no output, no work dir, no array


def test_dry_run_projects_every_step(tmp_path: Path, data: Any) -> None:
    y = bl.open(tmp_path / "X.label.zarr").to_numpy()
    bl.from_array(y, tmp_path / "y77.zarr", chunks=(77, None))  # not X's row blocks
    pipe = load_pipeline(write(tmp_path, spec(y="y77.zarr")))
    info = explain_pipeline(pipe)
    eager = {e["step"]: e for e in info["eager"]}
    assert list(eager) == ["svd", "pca", "lr"]
    assert eager["svd"]["passes"] == [4, 4] and eager["pca"]["passes"] == [4, 4]
    assert eager["lr"]["passes"][0] >= 2
    steps = {r["step"] for r in info["stages"]}
    assert steps == {"plan", "svd", "pca", "lr"}
    # Every pass over 6 columns of 100-row blocks: the same task counts as the run's.
    assert {r["tasks"] for r in info["stages"] if r["stage"].endswith("/partial")
            or r["stage"].startswith("rsvd/normal")} == {6}
    assert "lr (linear_regression): " in info["text"]
    # A memory limit the iterative steps' passes exceed is refused, naming the step.
    with pytest.raises(SpecError, match="step 'svd'") as err:
        explain_pipeline(pipe, RunOptions(max_task_memory=int(max(
            r["memory_per_task"] for r in info["stages"] if r["step"] == "plan")) + 1))
    assert err.value.loc == "resources.max_task_memory"


def test_dry_run_refuses_an_l1_penalty_the_solver_lacks(tmp_path: Path, data: Any) -> None:
    doc = spec()
    doc["steps"][3]["params"] = {"solver": "qr", "reg_param": 0.1, "elastic_net_param": 1.0}
    res = run_cli("run", str(write(tmp_path, doc)), "--dry-run")
    assert res.returncode == 2, res.stderr
    assert "steps[3]: linear_regression: solver 'qr' has no L1 penalty" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("step", "message"), [
    ({"name": "p", "op": "pca", "inputs": {"A": "z"}, "params": {"k": 2, "method": "gram"}},
     "already a transformed view"),
    ({"name": "t", "op": "truncated_svd", "inputs": {"A": "z"}, "params": {"n_components": 2}},
     "A is a lazy view"),
    ({"name": "r", "op": "linear_regression", "inputs": {"X": "z", "y": "y"}},
     "X is a lazy view"),
])
def test_dry_run_refuses_views_the_step_cannot_read(tmp_path: Path, data: Any,
                                                    step: dict[str, Any], message: str) -> None:
    doc = spec()
    doc["steps"] = [{"name": "z", "op": "standardize", "inputs": {"A": "X"}}, step]
    doc["outputs"] = {"out": {"step": step["name"]}}
    pipe = load_pipeline(write(tmp_path, doc))
    with pytest.raises(SpecError) as err:
        explain_pipeline(pipe)
    assert err.value.loc == "steps[1]" and message in err.value.message
    assert not (tmp_path / "out").exists()
