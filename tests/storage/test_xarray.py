"""xarray opens what blocklin writes: ingested inputs (with column names as coordinates) and
pipeline outputs, with the right dimensions and the stored values."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import blocklin as bl
from blocklin.pipelines.ingest import ingest

xr = pytest.importorskip("xarray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _table(path: Path, cols: dict[str, Any]) -> None:
    pq.write_table(pa.table(cols), path)


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(257, 3)), rng.integers(0, 3, 257).astype(float)
    src = tmp_path / "train.parquet"
    _table(src, {"age": x[:, 0], "city": ["a"] * 257, "income": x[:, 1], "score": x[:, 2],
                 "y": y})
    return src, x, y


def test_ingested_table_opens_in_xarray(table: Any, tmp_path: Path) -> None:
    src, x, y = table
    data = tmp_path / "data"
    ingest(str(src), str(data / "X.zarr"), label="y", chunk_rows=100)
    ds = xr.open_zarr(data, consolidated=False)
    X, Y = ds["X.zarr"], ds["X.label.zarr"]
    assert X.dims == ("row", "col") and Y.dims == ("row", "label")
    assert dict(ds.sizes) == {"row": 257, "col": 3, "label": 1}
    # Column names from ingest are the coordinate (the string column was dropped).
    assert list(ds["col"].values) == ["age", "income", "score"]
    assert list(ds["label"].values) == ["y"]
    np.testing.assert_array_equal(X.values, x)
    np.testing.assert_array_equal(X.sel(col="income").values, x[:, 1])
    np.testing.assert_array_equal(Y.sel(label="y").values, y)
    # blocklin's own readers are unchanged.
    np.testing.assert_array_equal(bl.open(data / "X.zarr").to_numpy(), x)
    assert bl.open(data / "X.zarr").meta.dimension_names == ("row", "col")
    import zarr

    assert zarr.open_array(data / "X.label.zarr", mode="r").metadata.dimension_names == \
        ("row", "label")


def test_appended_rows_keep_dimensions(table: Any, tmp_path: Path) -> None:
    from blocklin.pipelines.append import append_rows

    src, _, y = table
    ingest(str(src), str(tmp_path / "X.zarr"), label="y", chunk_rows=100)
    more = bl.from_array(y[:40, None], tmp_path / "more.zarr")
    append_rows(str(tmp_path / "X.label.zarr"), more, "more", "batch-1")
    label = bl.open(tmp_path / "X.label.zarr")
    assert label.shape == (297, 1) and label.meta.dimension_names == ("row", "label")
    doc = json.loads((tmp_path / "X.label.zarr" / "zarr.json").read_bytes())
    assert doc["dimension_names"] == ["row", "label"]


def test_second_table_in_the_folder_never_gets_the_first_ones_names(
        table: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, x, _ = table
    data = tmp_path / "data"
    ingest(str(src), str(data / "A.zarr"), label="y")
    _table(tmp_path / "b.parquet", {"p": x[:, 0], "q": x[:, 1], "r": x[:, 2]})
    with caplog.at_level(logging.WARNING, logger="blocklin"):
        ingest(str(tmp_path / "b.parquet"), str(data / "B.zarr"))
    assert "names the columns of A.zarr" in caplog.text
    ds = xr.open_zarr(data, consolidated=False)
    assert "col" not in ds.coords  # positions, not A's names on B (nor B's on A)
    np.testing.assert_array_equal(ds["B.zarr"].values, x)
    assert bl.open(data / "B.zarr").provenance["columns"] == ["p", "q", "r"]
    # The same table again (e.g. re-ingested with a new column): its names replace its own.
    _table(tmp_path / "c.parquet", {"u": x[:, 0], "v": x[:, 1]})
    ingest(str(tmp_path / "c.parquet"), str(tmp_path / "C" / "X.zarr"))
    _table(tmp_path / "c.parquet", {"u": x[:, 0], "v": x[:, 1], "w": x[:, 2]})
    ingest(str(tmp_path / "c.parquet"), str(tmp_path / "C" / "X.zarr"), overwrite=True)
    assert list(xr.open_zarr(tmp_path / "C", consolidated=False)["col"].values) == \
        ["u", "v", "w"]


@pytest.mark.filterwarnings("error")
def test_pipeline_matrix_outputs_open_in_xarray(tmp_path: Path) -> None:
    from blocklin.pipelines.runner import load_pipeline, run_pipeline

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(4, 3))
    bl.from_array(a, tmp_path / "A.zarr", chunks=(128, None))
    bl.from_array(b, tmp_path / "B.zarr")
    spec = {"name": "p", "inputs": {"A": {"path": "A.zarr"}, "B": {"path": "B.zarr"}},
            "steps": [{"name": "prod", "op": "matmul", "inputs": {"A": "A", "B": "B"}},
                      {"name": "g", "op": "gram", "inputs": {"A": "A"}}],
            "outputs": {"prod": {"step": "prod"}, "g": {"step": "g"}}, "output_dir": "out"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run_pipeline(load_pipeline(tmp_path / "spec.yaml"))
    # The folder also holds the manifest, the report and .npz files: xarray reads the
    # outputs from the group's consolidated metadata, without a warning about them.
    ds = xr.open_zarr(tmp_path / "out")
    assert list(ds.data_vars) == ["prod.zarr"]
    assert ds["prod.zarr"].dims == ("row", "col")
    np.testing.assert_allclose(ds["prod.zarr"].values, a @ b, rtol=1e-12)
    np.testing.assert_array_equal(ds["prod.zarr"].values,
                                  bl.open(tmp_path / "out" / "prod.zarr").to_numpy())

    # A second run with another B: the group names the new output, not the old one.
    bl.from_array(rng.normal(size=(4, 5)), tmp_path / "B.zarr", overwrite=True)
    run_pipeline(load_pipeline(tmp_path / "spec.yaml"))
    ds = xr.open_zarr(tmp_path / "out")
    assert dict(ds.sizes) == {"row": 300, "col": 5}
    np.testing.assert_allclose(ds["prod.zarr"].values,
                               a @ bl.open(tmp_path / "B.zarr").to_numpy(), rtol=1e-12)
