"""Non-finite values are refused where data enters a pipeline: ``ingest`` (unless
``--allow-nonfinite``) and ``refresh`` batches (nothing appended, batch not applied,
outputs and manifest untouched, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from tests.pipelines.conftest import base_spec, run_cli

import blocklin as bl
from blocklin.errors import NonFiniteError
from blocklin.pipelines.ingest import ingest
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline

COEF = np.array([1.5, -2.0, 0.25])


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})


def _rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, x @ COEF + 0.5 + 0.01 * rng.normal(size=n)


def test_ingest_refuses_nonfinite_naming_row_and_column(tmp_path: Path) -> None:
    x, y = _rows(1, 700)
    x[613, 1] = np.nan
    pq.write_table(_table(x, y), tmp_path / "t.parquet", row_group_size=100)
    with pytest.raises(NonFiniteError) as info:
        ingest(str(tmp_path / "t.parquet"), str(tmp_path / "X.zarr"), label="y", chunk_rows=128)
    exc = info.value
    assert (exc.array, exc.row, exc.col) == (str(tmp_path / "t.parquet"), 613, 1)
    assert "column 'b'" in str(exc) and "allow_nonfinite" in str(exc)
    assert not (tmp_path / "X.zarr").exists() and not (tmp_path / "X.label.zarr").exists()
    # A bad label is named as the label column.
    x[613, 1], y[42] = 0.0, -np.inf
    pq.write_table(_table(x, y), tmp_path / "u.parquet", row_group_size=100)
    with pytest.raises(NonFiniteError, match="label column 'y'") as info:
        ingest(str(tmp_path / "u.parquet"), str(tmp_path / "X.zarr"), label="y")
    assert (info.value.row, info.value.col) == (42, None)
    assert not (tmp_path / "X.zarr").exists() and not (tmp_path / "X.label.zarr").exists()


def test_ingest_sparse_npz_refuses_nonfinite(tmp_path: Path) -> None:
    s = sp.random(300, 8, density=0.2, format="lil", random_state=3)
    s[207, 5] = np.inf
    sp.save_npz(tmp_path / "s.npz", s.tocsr())
    with pytest.raises(NonFiniteError) as info:
        ingest(str(tmp_path / "s.npz"), str(tmp_path / "S.zarr"), chunk_rows=100)
    assert (info.value.array, info.value.row, info.value.col) == (str(tmp_path / "s.npz"), 207, 5)
    assert not (tmp_path / "S.zarr").exists()
    res = ingest(str(tmp_path / "s.npz"), str(tmp_path / "S.zarr"), chunk_rows=100,
                 allow_nonfinite=True)
    assert res.matrix.provenance["allow_nonfinite"] is True
    assert np.isinf(bl.open(tmp_path / "S.zarr").block(2).toarray()[7, 5])


def test_cli_ingest_exit_2_unless_allow_nonfinite(tmp_path: Path) -> None:
    x, y = _rows(2, 50)
    x[17, 2] = np.inf
    pcsv.write_csv(_table(x, y), tmp_path / "t.csv")
    dest = tmp_path / "X.zarr"
    r = run_cli("ingest", str(tmp_path / "t.csv"), str(dest))
    assert r.returncode == 2, r.stderr
    assert "at row 17, column 2" in r.stderr and "--allow-nonfinite" in r.stderr
    assert not dest.exists()
    r = run_cli("ingest", str(tmp_path / "t.csv"), str(dest), "--allow-nonfinite", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shape"] == [50, 4]
    got = bl.open(dest)
    assert got.provenance["allow_nonfinite"] is True and np.isinf(got.to_numpy()[17, 2])


def _ridge(tmp_path: Path, write_spec: Any) -> tuple[Any, Path]:
    x, y = _rows(3, 400)
    pq.write_table(_table(x, y), tmp_path / "train.parquet")
    ingest(str(tmp_path / "train.parquet"), str(tmp_path / "X.zarr"), label="y", chunk_rows=128)
    spec = base_spec(inputs={"X": {"path": "X.zarr"}, "y": {"path": "X.label.zarr"}},
                     steps=[{"name": "model", "op": "linear_regression",
                             "inputs": {"X": "X", "y": "y"}, "params": {"solver": "normal"}},
                            {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}}],
                     outputs={"model": {"step": "model"}, "stats": {"step": "stats"}},
                     refresh={"input": "X", "label_input": "y", "label_column": "y"})
    path = write_spec(spec)
    pipe = load_pipeline(path)
    run_pipeline(pipe)
    return pipe, path


def _snapshot(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "out"
    return {"manifest": (out / "manifest.json").read_bytes(),
            "outputs": {p.name: p.read_bytes() for p in sorted(out.glob("*.npz"))},
            "X": (bl.open(tmp_path / "X.zarr").shape, bl.open(tmp_path / "X.zarr").provenance),
            "y": (bl.open(tmp_path / "X.label.zarr").shape,
                  bl.open(tmp_path / "X.label.zarr").provenance)}


def test_refresh_refuses_a_nan_batch_and_changes_nothing(tmp_path: Path, write_spec: Any) -> None:
    # Today's main appended the batch, marked it applied and saved a model with a NaN
    # intercept for good.
    pipe, spec = _ridge(tmp_path, write_spec)
    before = _snapshot(tmp_path)
    xb, yb = _rows(4, 90)
    xb[33, 0] = np.nan
    pq.write_table(_table(xb, yb), tmp_path / "bad.parquet")
    with pytest.raises(NonFiniteError) as info:
        refresh_pipeline(pipe, str(tmp_path / "bad.parquet"))
    assert (info.value.row, info.value.col) == (33, 0) and "column 'a'" in str(info.value)
    assert _snapshot(tmp_path) == before
    # The command line says the same with exit status 2.
    r = run_cli("refresh", str(spec), "--append", str(tmp_path / "bad.parquet"))
    assert r.returncode == 2, r.stderr
    assert "at row 33, column 0" in r.stderr
    assert _snapshot(tmp_path) == before
    # A clean batch afterwards applies as if the bad one had never been offered.
    xg, yg = _rows(5, 90)
    pq.write_table(_table(xg, yg), tmp_path / "good.parquet")
    m = refresh_pipeline(pipe, str(tmp_path / "good.parquet"))
    assert m["refresh"]["rows"] == 490 and len(m["refresh"]["batches"]) == 1
    x, y = _rows(3, 400)
    full_x, full_y = np.vstack([x, xg]), np.concatenate([y, yg])
    ref = np.linalg.lstsq(np.column_stack([full_x, np.ones(490)]), full_y, rcond=None)[0]
    model = load_small(tmp_path / "out" / "model.npz")
    np.testing.assert_allclose(model["coef"], ref[:3], rtol=1e-9)
    np.testing.assert_allclose(model["intercept"], ref[3], rtol=1e-9)
