"""ComputeOptions: one frozen value taken the same way by compute, the eager operators,
the estimators and a pipeline run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

import blocklin as bl
from blocklin.errors import ConfigError, InputValueError, PlanMemoryError
from blocklin.executors.options import ComputeOptions
from blocklin.ml import PCA, LinearRegression, TruncatedSVD
from blocklin.pipelines.runner import RunOptions, compute_options, load_pipeline


@pytest.fixture
def A(tmp_path: Path) -> bl.BlockMatrix:
    x = np.random.default_rng(3).standard_normal((400, 12))
    return bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))


def test_value_is_checked_when_built() -> None:
    with pytest.raises(ConfigError, match="executor"):
        ComputeOptions(executor="ray")
    with pytest.raises(ConfigError, match="device"):
        ComputeOptions(device="tpu")
    with pytest.raises(InputValueError, match="memory size"):
        ComputeOptions(max_task_memory="lots")
    with pytest.raises(ConfigError, match="num_workers"):
        ComputeOptions(num_workers=0)
    with pytest.raises(ConfigError, match="resume"):
        ComputeOptions(resume="yes")  # type: ignore[arg-type]
    opts = ComputeOptions(work_dir=Path("/tmp/w"))  # type: ignore[arg-type]
    assert opts.work_dir == "/tmp/w"
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.resume = True  # type: ignore[misc]


def test_unknown_option_is_named_everywhere(A: bl.BlockMatrix, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'max_memory'.*max_task_memory"):
        bl.compute(bl.ops.gram(A), max_memory="1GiB")
    with pytest.raises(ConfigError, match="'max_memory'"):
        bl.ops.randomized_svd(A, 3, max_memory="1GiB")
    with pytest.raises(ConfigError, match="'max_memory'"):
        LinearRegression(compute_options={"max_memory": "1GiB"}).fit(A, np.ones(400))
    with pytest.raises(ConfigError, match="ComputeOptions or a dict"):
        TruncatedSVD(3, compute_options=["dask"]).fit(A)  # type: ignore[arg-type]


def test_of_merges_value_dict_and_keywords() -> None:
    base = ComputeOptions(executor="spark", work_dir="/w", resume=True)
    assert ComputeOptions.of(base) is base
    got = ComputeOptions.of(base, work_dir="/v")
    assert (got.executor, got.work_dir, got.resume) == ("spark", "/v", True)
    got = ComputeOptions.of({"num_workers": 2}, num_workers=3)
    assert got.num_workers == 3 and got.executor == "dask"
    # Filling only what is unset: an estimator's own executor/work_dir parameters.
    got = base.updated(executor="dask", work_dir="/x", num_workers=4)
    assert (got.executor, got.work_dir, got.num_workers) == ("spark", "/w", 4)


def test_one_value_reaches_every_entry_point(A: bl.BlockMatrix, tmp_path: Path) -> None:
    """A per-task limit far below one block refuses the plan, whichever entry point
    carries it: proof the value reaches the passes (and is not silently dropped)."""
    tiny = ComputeOptions(work_dir=str(tmp_path / "w"), max_task_memory="1KiB")
    y = A.to_numpy() @ np.arange(12.0)
    with pytest.raises(PlanMemoryError):
        bl.compute(bl.ops.gram(A), compute_options=tiny)
    with pytest.raises(PlanMemoryError):
        bl.ops.randomized_svd(A, 3, compute_options=tiny)
    with pytest.raises(PlanMemoryError):
        bl.ops.pca(A, 3, compute_options=tiny)
    for est in (TruncatedSVD(3, compute_options=tiny), PCA(3, compute_options=tiny)):
        with pytest.raises(PlanMemoryError):
            est.fit(A)
    with pytest.raises(PlanMemoryError):
        LinearRegression(solver="normal", compute_options=tiny).fit(A, y)
    # Keywords replace the value's fields: the same call with a roomy limit runs.
    g = bl.compute(bl.ops.gram(A), compute_options=tiny, max_task_memory="64MiB")[0]
    x = A.to_numpy()
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)


def test_value_and_keywords_give_the_same_bits(A: bl.BlockMatrix, tmp_path: Path) -> None:
    opts = ComputeOptions(work_dir=str(tmp_path / "a"), num_workers=2)
    by_value = bl.ops.randomized_svd(A, 4, n_iter=1, compute_options=opts)
    by_keywords = bl.ops.randomized_svd(A, 4, n_iter=1, work_dir=str(tmp_path / "b"),
                                        num_workers=2)
    np.testing.assert_array_equal(by_value.s, by_keywords.s)
    np.testing.assert_array_equal(by_value.Vt, by_keywords.Vt)
    est = TruncatedSVD(4, n_iter=1, compute_options=opts).fit(A)
    np.testing.assert_array_equal(est.singular_values_, by_value.s)
    s = np.linalg.svd(A.to_numpy(), compute_uv=False)[:4]
    np.testing.assert_allclose(by_value.s, s, rtol=1e-2)


def test_pipeline_builds_one_value_from_spec_and_command_line(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((50, 4))
    bl.from_array(x, tmp_path / "X.zarr", chunks=(25, None))
    spec = {"name": "t", "inputs": {"X": {"path": "X.zarr"}},
            "executor": {"executor": "dask", "num_workers": 2, "work_dir": "work"},
            "resources": {"max_task_memory": "512MiB"},
            "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
            "outputs": {"g": {"step": "g"}}, "output_dir": "out"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    pipe = load_pipeline(path)
    from_spec = compute_options(pipe, RunOptions())
    assert isinstance(from_spec, ComputeOptions)
    assert (from_spec.num_workers, from_spec.max_task_memory) == (2, "512MiB")
    assert from_spec.work_dir == str(tmp_path / "work")
    cli = compute_options(pipe, RunOptions(num_workers=1, max_task_memory="1GiB"))
    assert (cli.num_workers, cli.max_task_memory, cli.work_dir) == (1, "1GiB", from_spec.work_dir)
