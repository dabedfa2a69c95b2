"""The CLI's progress lines cover every pass of a run (the iterative steps' own passes
included), and -v/-vv/--quiet/BLOCKLIN_LOG_LEVEL choose what is logged."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.pipelines.conftest import run_cli

import blocklin as bl

PASS = re.compile(r"^blocklin: run cli-log · (?:(?P<label>.*) · )?pass (?P<n>\d+): \d+ tasks?")
INFO = " INFO blocklin."
DEBUG = " DEBUG blocklin."


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A matrix, its label and a spec: a planned step, an SVD and an L-BFGS regression."""
    tmp = tmp_path_factory.mktemp("cli-log")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((500, 6)) @ np.diag([6.0, 5, 4, 3, 2, 1])
    y = x @ np.arange(1.0, 7.0) + 2.0 + 0.01 * rng.standard_normal(500)
    bl.from_array(x, tmp / "X.zarr", chunks=(100, None))
    bl.from_array(y[:, None], tmp / "y.zarr", chunks=(100, None))
    spec = {"name": "cli-log", "output_dir": "out", "report": False,
            "inputs": {"X": {"path": "X.zarr"}, "y": {"path": "y.zarr"}},
            "steps": [{"name": "stats", "op": "column_stats", "inputs": {"A": "X"}},
                      {"name": "svd", "op": "randomized_svd", "inputs": {"A": "X"},
                       "params": {"k": 2, "n_iter": 3}},
                      {"name": "lr", "op": "linear_regression",
                       "inputs": {"X": "X", "y": "y"},
                       "params": {"solver": "lbfgs", "max_iter": 30, "tol": 1e-10}}],
            "outputs": {"stats": {"step": "stats"}, "svd": {"step": "svd"},
                        "lr": {"step": "lr"}}}
    (tmp / "p.yaml").write_text(yaml.safe_dump(spec))
    return tmp, x, y


def test_progress_lines_cover_the_iterative_steps(project: tuple[Path, np.ndarray, np.ndarray]
                                                  ) -> None:
    tmp, x, y = project
    res = run_cli("run", "p.yaml", cwd=tmp)
    assert res.returncode == 0, res.stderr
    passes = [m for line in res.stderr.splitlines() if (m := PASS.match(line))]
    # One line per pass, numbered through the run.
    assert [int(m["n"]) for m in passes] == list(range(1, len(passes) + 1))
    labels = [m["label"] or "" for m in passes]
    assert labels[0] == ""  # the planned steps' one pass
    svd = [lb for lb in labels if lb.startswith("step svd")]
    assert svd == [f"step svd · randomized_svd · power iteration {i}/3" for i in (1, 2, 3)] \
        + ["step svd · randomized_svd · range finish (TSQR)"]
    lr = [lb for lb in labels if lb.startswith("step lr")]
    assert lr[0] == "step lr · LinearRegression.fit · column moments"
    evals = [lb for lb in lr if "lbfgs evaluation" in lb]
    assert evals == [f"step lr · LinearRegression.fit · lbfgs evaluation {i}"
                     for i in range(1, len(evals) + 1)] and len(evals) > 3
    assert any(lb.startswith("step lr · LinearRegression.summary") for lb in lr)
    assert len(labels) == 1 + len(svd) + len(lr)
    # Results: the passes reported are the ones that computed these.
    with np.load(tmp / "out" / "svd.npz") as z:
        np.testing.assert_allclose(z["singular_values"], np.linalg.svd(x, compute_uv=False)[:2],
                                   rtol=1e-6)
    with np.load(tmp / "out" / "lr.npz") as z:
        ref = np.linalg.lstsq(np.column_stack([x, np.ones(500)]), y, rcond=None)[0]
        np.testing.assert_allclose(z["coef"], ref[:6], rtol=1e-6)
    # Default level WARNING: no INFO or DEBUG records; stdout holds the summary only.
    assert INFO not in res.stderr and DEBUG not in res.stderr
    assert "blocklin:" not in res.stdout and "pipeline cli-log (run)" in res.stdout


def test_verbose_quiet_and_env_choose_the_log_level(
        project: tuple[Path, np.ndarray, np.ndarray]) -> None:
    tmp, _, _ = project
    res = run_cli("-vv", "run", "p.yaml", cwd=tmp)
    assert res.returncode == 0, res.stderr
    assert f"{INFO}pipelines.execute: pipeline cli-log on dask" in res.stderr
    assert f"{INFO}pipelines.execute: step svd done in" in res.stderr
    assert f"{DEBUG}executors.api: plan:" in res.stderr  # plan sizes at DEBUG
    res = run_cli("run", "p.yaml", cwd=tmp, env={"BLOCKLIN_LOG_LEVEL": "INFO"})
    assert res.returncode == 0, res.stderr
    assert INFO in res.stderr and DEBUG not in res.stderr
    # --quiet: errors only, no progress either; it wins over the environment.
    res = run_cli("--quiet", "run", "p.yaml", cwd=tmp, env={"BLOCKLIN_LOG_LEVEL": "DEBUG"})
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    res = run_cli("run", "p.yaml", cwd=tmp, env={"BLOCKLIN_LOG_LEVEL": "chatty"})
    assert res.returncode == 2 and "log level must be DEBUG, INFO" in res.stderr
    res = run_cli("-v", "--quiet", "run", "p.yaml", cwd=tmp)
    assert res.returncode == 2 and "not both" in res.stderr
