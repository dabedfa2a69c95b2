"""Sparse ingest: a Parquet table of (row, col, value) records into CSR row panels, from
the API, the CLI and a refresh of an input ingested that way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import yaml
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.errors import InputValueError, NonFiniteError
from blocklin.pipelines.ingest import ingest
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline
from blocklin.storage.sparse import to_scipy


def _write_coo(path: Path, x: sp.spmatrix, shape: tuple[int, int] | None = None,
               shuffle: int | None = None) -> None:
    c = sp.coo_matrix(x)
    order = np.arange(c.nnz) if shuffle is None else \
        np.random.default_rng(shuffle).permutation(c.nnz)
    t = pa.table({"row": c.row[order].astype(np.int64), "col": c.col[order].astype(np.int32),
                  "value": c.data[order]})
    if shape is not None:
        t = t.replace_schema_metadata({"shape": json.dumps(list(shape))})
    pq.write_table(t, path)


def _csr(m: int, n: int, seed: int) -> sp.csr_matrix:
    return sp.random(m, n, density=0.05, format="csr", random_state=seed,
                     data_rvs=np.random.default_rng(seed).standard_normal)


def test_coo_parquet_ingests_as_csr(tmp_path: Path) -> None:
    x = _csr(500, 60, 0)
    _write_coo(tmp_path / "x.parquet", x, shuffle=1)  # records in any order
    res = ingest(str(tmp_path / "x.parquet"), str(tmp_path / "X.zarr"), sparse=True,
                 chunk_rows=128)
    A, coo = res.matrix, sp.coo_matrix(x)
    # Without a 'shape' in the schema: one past the largest row and column.
    shape = (int(coo.row.max()) + 1, int(coo.col.max()) + 1)
    assert res.format == "parquet-coo" and A.meta.format == "csr"
    assert A.shape == shape and A.chunks == (128, shape[1])
    assert (to_scipy(A) != sp.csr_matrix(x)[:shape[0], :shape[1]]).nnz == 0
    # The schema's shape keeps trailing empty rows and columns; duplicates are summed.
    dup = sp.coo_matrix((np.r_[coo.data, 1.0, 2.0], (np.r_[coo.row, 3, 3], np.r_[coo.col, 7, 7])),
                        shape=(520, 64))
    _write_coo(tmp_path / "d.parquet", dup, shape=(520, 64))
    B = ingest(str(tmp_path / "d.parquet"), str(tmp_path / "D.zarr"), sparse=True).matrix
    assert B.shape == (520, 64) and (to_scipy(B) != dup.tocsr()).nnz == 0


def test_bad_coo_sources_are_refused_and_nothing_written(tmp_path: Path) -> None:
    x = _csr(100, 10, 2)
    _write_coo(tmp_path / "x.parquet", x)
    pq.write_table(pa.table({"row": [0, 1], "column": [0, 1], "value": [1.0, 2.0]}),
                   tmp_path / "named.parquet")
    pq.write_table(pa.table({"row": [0.5], "col": [0], "value": [1.0]}),
                   tmp_path / "float.parquet")
    pq.write_table(pa.table({"row": [0, 1], "col": [0, 1], "value": [1.0, np.nan]}),
                   tmp_path / "nan.parquet")
    cases = [("named.parquet", {}, InputValueError, "no column 'col'"),
             ("float.parquet", {}, InputValueError, "non-negative integers"),
             ("x.parquet", {"ncols": 5}, InputValueError, "outside the shape"),
             ("x.parquet", {"label": "value"}, InputValueError, "do not apply"),
             ("nan.parquet", {}, NonFiniteError, "nan.parquet")]
    for i, (src, kw, err, msg) in enumerate(cases):
        with pytest.raises(err, match=msg):
            ingest(str(tmp_path / src), str(tmp_path / f"out{i}.zarr"), sparse=True, **kw)  # type: ignore[arg-type]
        assert not (tmp_path / f"out{i}.zarr").exists()


def test_cli_ingests_coo_parquet(tmp_path: Path) -> None:
    _write_coo(tmp_path / "x.parquet", _csr(300, 40, 3))
    res = run_cli("ingest", "x.parquet", "X.zarr", "--sparse", "--ncols", "45", "--json",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "parquet-coo" and doc["shape"][1] == 45
    assert bl.open(tmp_path / "X.zarr").meta.format == "csr"


def test_refresh_of_a_coo_input_appends_csr_rows(tmp_path: Path) -> None:
    x0, x1 = _csr(600, 50, 4), _csr(90, 50, 5)
    # The batch reaches fewer columns: the input's count is kept.
    x1 = sp.csr_matrix(x1 @ sp.diags((np.arange(50) < 49).astype(float)))
    x1.eliminate_zeros()
    _write_coo(tmp_path / "base.parquet", x0, shape=(600, 50))
    _write_coo(tmp_path / "week.parquet", x1)
    ingest(str(tmp_path / "base.parquet"), str(tmp_path / "terms.zarr"), sparse=True,
           chunk_rows=200)
    doc = {"name": "coo", "output_dir": "out", "inputs": {"T": {"path": "terms.zarr"}},
           "steps": [{"name": "stats", "op": "column_stats", "inputs": {"A": "T"}}],
           "outputs": {"stats": {"step": "stats"}}, "refresh": {"input": "T"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    pipe = load_pipeline(tmp_path / "spec.yaml")
    run_pipeline(pipe)
    m = refresh_pipeline(pipe, str(tmp_path / "week.parquet"))
    assert m["refresh"]["outputs"] == {"stats": "incremental"}
    grown = bl.open(tmp_path / "terms.zarr")
    full = sp.vstack([x0, x1]).tocsr()
    assert grown.meta.format == "csr" and (to_scipy(grown) != full).nnz == 0
    stats = load_small(tmp_path / "out" / "stats.npz")
    np.testing.assert_allclose(stats["mean"], np.asarray(full.mean(axis=0)).ravel(),
                               rtol=1e-12, atol=1e-15)
