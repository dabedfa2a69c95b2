"""`blocklin run --executor spark`: the same spec on Spark (local mode), end to end in a subprocess."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tests.pipelines.conftest import base_spec, run_cli

from blocklin.pipelines.manifest import load_small

pytestmark = pytest.mark.spark


def test_run_on_spark_matches_dask_bitwise(tmp_path: Path, matrix: tuple[np.ndarray, Path],
                                           write_spec: Callable[..., Path]) -> None:
    x, _ = matrix
    spec = write_spec(base_spec())
    on_spark = run_cli("run", str(spec), "--executor", "spark", timeout=300)
    assert on_spark.returncode == 0, on_spark.stderr
    assert "on spark" in on_spark.stdout
    g_spark = load_small(tmp_path / "out" / "gram.npz")["value"]
    np.testing.assert_allclose(g_spark, x.T @ x, rtol=1e-12)
    on_dask = run_cli("run", str(spec), "--executor", "dask")
    assert on_dask.returncode == 0, on_dask.stderr
    g_dask = load_small(tmp_path / "out" / "gram.npz")["value"]
    assert g_spark.tobytes() == g_dask.tobytes()
