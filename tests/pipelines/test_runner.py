"""Running pipelines in process: results against numpy, manifests, reports, dry runs, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.pipelines.conftest import base_spec

import blocklin as bl
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.registry import merge_column_stats, operator_names, to_arrays
from blocklin.pipelines.runner import RunOptions, explain_pipeline, load_pipeline, run_pipeline
from blocklin.pipelines.spec import json_schema


def test_run_matches_numpy_and_writes_manifest_and_report(matrix: Any, write_spec: Any,
                                                          tmp_path: Path) -> None:
    x, _ = matrix
    bl.from_array(np.arange(18.0).reshape(6, 3), tmp_path / "W.zarr")
    spec = base_spec(
        inputs={"X": {"path": "X.zarr"}, "W": {"path": "W.zarr"}},
        steps=[{"name": "g", "op": "gram", "inputs": {"A": "X"}},
               {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}},
               {"name": "z", "op": "standardize", "inputs": {"A": "X"}},
               {"name": "corr", "op": "gram", "inputs": {"A": "z"}},
               {"name": "p", "op": "matmul", "inputs": {"A": "X", "B": "W"}},
               {"name": "pg", "op": "gram", "inputs": {"A": "p"}}],
        outputs={"gram": {"step": "g"}, "stats": {"step": "stats"}, "corr": {"step": "corr"},
                 "proj": {"step": "p"}, "pgram": {"step": "pg"}})
    pipe = load_pipeline(write_spec(spec))
    seen: list[tuple[str, int, int]] = []
    m = run_pipeline(pipe, progress=lambda *a: seen.append(a))
    out = tmp_path / "out"
    np.testing.assert_allclose(load_small(out / "gram.npz")["value"], x.T @ x, rtol=1e-12)
    st = load_small(out / "stats.npz")
    np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st["variance"], x.var(0, ddof=1), rtol=1e-12)
    z = (x - x.mean(0)) / x.std(0, ddof=1)
    np.testing.assert_allclose(load_small(out / "corr.npz")["value"], z.T @ z, rtol=1e-10)
    w = np.arange(18.0).reshape(6, 3)
    np.testing.assert_allclose(bl.open(out / "proj.zarr").to_numpy(), x @ w, rtol=1e-12)
    np.testing.assert_allclose(load_small(out / "pgram.npz")["value"], (x @ w).T @ (x @ w),
                               rtol=1e-10)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc == json.loads(json.dumps(m, default=str))
    assert doc["inputs"]["X"]["fingerprint"] == bl.open(tmp_path / "X.zarr").fingerprint
    assert doc["stats"]["tasks_run"] > 0 and doc["stats"]["stage_seconds"]
    assert doc["passes"][str(tmp_path / "X.zarr")] >= 1
    assert doc["outputs"]["proj"]["kind"] == "matrix"
    assert set(doc["versions"]) >= {"blocklin", "numpy", "dask", "zarr"}
    assert doc["peak_memory"]["driver_rss_bytes"] > 0
    assert doc["refresh"] == {"input": "X", "rows": 500, "batches": []}
    assert (out / "report" / "report.md").is_file()
    assert (out / "report" / "gram-spectrum.png").stat().st_size > 1000
    assert (out / "report" / "time.png").is_file()
    # The progress hook reached every stage's total.
    finals: dict[str, tuple[int, int]] = {}
    for label, done, total in seen:
        finals[label] = (done, total)
    assert finals and all(d == t for d, t in finals.values())
    assert not (out / ".blocklin.lock").exists()


def test_dry_run_reports_plan_without_writing(matrix: Any, write_spec: Any,
                                             tmp_path: Path) -> None:
    pipe = load_pipeline(write_spec(base_spec()))
    info = explain_pipeline(pipe)
    assert not (tmp_path / "out").exists()
    stages = {s["stage"]: s for s in info["stages"]}
    fused = stages["gram/partial + column_stats/partial"]
    assert fused["tasks"] == 5  # 500 rows in blocks of 120: one task per row block
    assert fused["memory_per_task"] > 120 * 6 * 8
    assert info["passes"] == {str(tmp_path / "X.zarr"): 1.0}  # gram and stats share one pass


def test_resume_skips_finished_blocks(matrix: Any, write_spec: Any, tmp_path: Path) -> None:
    pipe = load_pipeline(write_spec(base_spec()))
    run_pipeline(pipe, RunOptions(keep_intermediates=True))  # else a success removes them
    again = run_pipeline(pipe, RunOptions(resume=True))
    assert again["stats"]["tasks_run"] == 0 and again["stats"]["tasks_skipped"] > 0
    x, _ = matrix
    np.testing.assert_allclose(load_small(tmp_path / "out" / "gram.npz")["value"], x.T @ x,
                               rtol=1e-12)


def test_registry_and_schema() -> None:
    names = operator_names()
    assert {"gram", "column_stats", "matmul", "crossprod", "standardize"} <= set(names)
    schema = json_schema()
    assert schema["title"] == "blocklin pipeline"
    assert set(schema["required"]) >= {"name", "inputs", "steps", "outputs", "output_dir"}


def test_merge_column_stats_equals_stats_of_union() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(25, 3)) + 2

    def stats(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"count": np.asarray(len(x)), "mean": x.mean(0), "variance": x.var(0, ddof=1),
                "min": x.min(0), "max": x.max(0), "norm_l1": np.abs(x).sum(0),
                "norm_l2": np.sqrt((x**2).sum(0)), "num_nonzeros": (x != 0).sum(0)}

    merged = merge_column_stats(stats(a), stats(b))
    for k, v in stats(np.vstack([a, b])).items():
        np.testing.assert_allclose(merged[k], v, rtol=1e-12)


def test_to_arrays_handles_result_shapes() -> None:
    assert set(to_arrays((np.ones(2), np.zeros(3)), ("u", "s"))) == {"u", "s"}
    assert set(to_arrays({"a": np.ones(2), "b": "text"})) == {"a"}
    with pytest.raises(KeyError):
        to_arrays(np.ones(3))["missing"]


def test_sketched_crossprod_and_tsqr_steps(write_spec: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 3))
    bl.from_array(a, tmp_path / "A.zarr", chunks=(512, None))
    bl.from_array(b, tmp_path / "B.zarr", chunks=(512, None))
    spec = base_spec(inputs={"A": {"path": "A.zarr"}, "B": {"path": "B.zarr"}},
                     steps=[{"name": "sk", "op": "sketched_crossprod",
                             "inputs": {"A": "A", "B": "B"}, "params": {"k": 300, "seed": 1}},
                            {"name": "r", "op": "tsqr", "inputs": {"A": "A"}}],
                     outputs={"sk": {"step": "sk"}, "r": {"step": "r"}}, refresh=None)
    run_pipeline(load_pipeline(write_spec(spec)))
    exact = a.T @ b
    est = load_small(tmp_path / "out" / "sk.npz")["value"]
    bound = 4 * np.sqrt((np.linalg.norm(a) ** 2 * np.linalg.norm(b) ** 2
                         + np.linalg.norm(exact) ** 2) / 300)
    assert 0 < np.linalg.norm(est - exact) < bound
    r = load_small(tmp_path / "out" / "r.npz")["value"]
    np.testing.assert_allclose(np.abs(r), np.abs(np.linalg.qr(a, mode="r")), atol=1e-9)
