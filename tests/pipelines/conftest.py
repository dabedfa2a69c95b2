"""Shared fixtures: a small stored matrix, spec files, and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import blocklin as bl

CLI = [sys.executable, "-m", "blocklin._cli"]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``blocklin`` command line in a fresh process."""
    full_env = {**os.environ, "BLOCKLIN_DEBUG": "0", **(env or {})}
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def matrix(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """A 500 x 6 float64 matrix stored in row blocks of 120 (the last one partial)."""
    x = np.random.default_rng(7).normal(size=(500, 6))
    path = tmp_path / "X.zarr"
    bl.from_array(x, path, chunks=(120, None))
    return x, path


def base_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "inputs": {"X": {"path": "X.zarr"}},
        "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}},
                  {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}}],
        "outputs": {"gram": {"step": "g"}, "stats": {"step": "stats"}},
        "output_dir": "out",
        "refresh": {"input": "X"},
    }
    spec.update(over)
    return spec


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    def write(doc: Any, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return p

    return write
