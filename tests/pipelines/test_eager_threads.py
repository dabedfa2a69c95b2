"""Eager pipeline steps run their computes with the pipeline's ``num_workers``.

An eager step (randomized SVD, PCA, a regression fit) runs its own computes after
the shared one; they used to drop ``num_workers`` and so ran on every core. The
block tasks running at once are counted with a profile hook on the threads the
local scheduler starts, the real ``run_task`` and nothing patched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
import yaml

import blocklin as bl
from blocklin.pipelines.runner import RunOptions, load_pipeline, run_pipeline
from blocklin.plan.runtime import run_task


class TaskConcurrency:
    """The most ``run_task`` calls seen running at once, and how many ran."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if frame.f_code is not run_task.__code__ or event not in ("call", "return"):
            return
        with self.lock:
            if event == "call":
                self.now += 1
                self.calls += 1
                self.most = max(self.most, self.now)
            else:
                self.now -= 1


@pytest.fixture
def concurrency() -> Iterator[TaskConcurrency]:
    seen = TaskConcurrency()
    threading.setprofile(seen)  # threads started from now on: the schedulers' pools
    try:
        yield seen
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]


def test_eager_steps_keep_num_workers(tmp_path: Path, concurrency: TaskConcurrency) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1600, 8))
    bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    bl.from_array(x @ rng.standard_normal((8, 1)), tmp_path / "y.zarr", chunks=(100, None))
    spec = {"name": "eager", "output_dir": "out",
            "inputs": {"X": {"path": "X.zarr"}, "y": {"path": "y.zarr"}},
            "executor": {"num_workers": 1},
            "steps": [{"name": "svd", "op": "randomized_svd", "inputs": {"A": "X"},
                       "params": {"k": 3}},
                      {"name": "pca", "op": "pca", "inputs": {"A": "X"}, "params": {"k": 3}},
                      {"name": "fit", "op": "linear_regression", "inputs": {"X": "X", "y": "y"},
                       "params": {"solver": "lbfgs"}}],
            "outputs": {"svd": {"step": "svd"}, "pca": {"step": "pca"}, "fit": {"step": "fit"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    manifest = run_pipeline(load_pipeline(tmp_path / "spec.yaml"), RunOptions())
    assert manifest["executor"]["num_workers"] == 1
    assert concurrency.calls >= 3 * 16  # every step ran passes over X's 16 blocks
    assert concurrency.most == 1
    s = np.load(tmp_path / "out" / "svd.npz")["singular_values"]
    np.testing.assert_allclose(s, np.linalg.svd(x, compute_uv=False)[:3], rtol=1e-10)
