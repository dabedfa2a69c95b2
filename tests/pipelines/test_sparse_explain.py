"""A dry run of regressions on wide CSR inputs: ``auto``'s solver and its reason are
shown, and the projection is that of the passes the fit makes (no (p+2)² statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml

import blocklin as bl
from blocklin.pipelines.runner import RunOptions, explain_pipeline, load_pipeline


def _pipeline(tmp_path: Path, op: str, cols: int) -> Any:
    x = sp.random(600, cols, density=2e-3, format="csr", random_state=0)
    bl.from_array(x, tmp_path / "X.zarr", chunks=(200, None))
    bl.from_array((np.arange(600) % 2.0)[:, None], tmp_path / "y.zarr", chunks=(200, None))
    doc = {"name": "wide", "output_dir": "out",
           "inputs": {"X": {"path": "X.zarr"}, "y": {"path": "y.zarr"}},
           "steps": [{"name": "fit", "op": op, "inputs": {"X": "X", "y": "y"}}],
           "outputs": {"fit": {"step": "fit"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_pipeline(tmp_path / "spec.yaml")


def test_wide_sparse_linear_regression_explains_auto(tmp_path: Path) -> None:
    # 8,000 features: the normal equations' statistics would take 488 MiB per task; the
    # passes L-BFGS makes fit in 8 MiB.
    info = explain_pipeline(_pipeline(tmp_path, "linear_regression", 8000),
                            RunOptions(max_task_memory=8 * 2**20))
    (step,) = info["eager"]
    assert step["note"].startswith("solver auto -> lbfgs: 8,000 features: the normal "
                                   "equations' (p+2)² statistics would take 488.5 MiB")
    assert step["note"] in info["text"]
    assert {r["pass"] for r in step["stages"]} == {"moments pass", "loss and gradient pass"}


def test_narrow_sparse_linear_regression_explains_auto(tmp_path: Path) -> None:
    info = explain_pipeline(_pipeline(tmp_path, "linear_regression", 40))
    assert "solver auto -> normal: 40 features, CSR X" in info["eager"][0]["note"]


def test_wide_sparse_logistic_regression_explains_auto(tmp_path: Path) -> None:
    info = explain_pipeline(_pipeline(tmp_path, "logistic_regression", 8000),
                            RunOptions(max_task_memory=8 * 2**20))
    (step,) = info["eager"]
    assert step["note"].startswith("solver auto -> lbfgs: 8,001 coefficients exceed 4096")
    assert "Newton pass (binomial)" not in {r["pass"] for r in step["stages"]}
