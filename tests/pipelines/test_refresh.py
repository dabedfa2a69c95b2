"""Incremental refresh: results equal a full recompute; retries are no-ops; interruptions
re-run to the same result; readers never see a half-appended matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.pipelines.conftest import base_spec

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.pipelines.manifest import load_manifest, load_small
from blocklin.pipelines.refresh import FAULT_ENV, refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline
from blocklin.pipelines.spec import SpecError


def _check(out: Path, x: np.ndarray) -> None:
    np.testing.assert_allclose(load_small(out / "gram.npz")["value"], x.T @ x, rtol=1e-11)
    st = load_small(out / "stats.npz")
    assert int(st["count"]) == x.shape[0]
    np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(st["variance"], x.var(0, ddof=1), rtol=1e-11)
    np.testing.assert_allclose(st["min"], x.min(0))
    np.testing.assert_allclose(st["norm_l2"], np.sqrt((x**2).sum(0)), rtol=1e-12)


@pytest.fixture
def pipe(matrix: Any, write_spec: Any) -> Any:
    p = load_pipeline(write_spec(base_spec()))
    run_pipeline(p)
    return p


def test_refresh_is_incremental_and_equals_recompute(matrix: Any, pipe: Any,
                                                     tmp_path: Path) -> None:
    x, xpath = matrix
    b1 = np.random.default_rng(1).normal(size=(75, 6))
    b2 = np.random.default_rng(2).normal(size=(300, 6)) * 3
    np.save(tmp_path / "b1.npy", b1)
    np.save(tmp_path / "b2.npy", b2)
    m1 = refresh_pipeline(pipe, str(tmp_path / "b1.npy"))
    assert m1["refresh"]["outputs"] == {"gram": "incremental", "stats": "incremental"}
    # Only the batch's rows were read: one pass over 75 rows, not over the whole input.
    assert m1["stats"]["blocks_read"] == 1
    m2 = refresh_pipeline(pipe, str(tmp_path / "b2.npy"))
    full = np.vstack([x, b1, b2])
    np.testing.assert_array_equal(bl.open(xpath).to_numpy(), full)
    _check(tmp_path / "out", full)
    assert m2["refresh"]["rows"] == 875 and len(m2["refresh"]["batches"]) == 2
    assert bl.open(xpath).chunks == (120, 6)


def test_same_batch_twice_is_skipped(matrix: Any, pipe: Any, tmp_path: Path) -> None:
    x, xpath = matrix
    b = np.random.default_rng(5).normal(size=(30, 6))
    np.save(tmp_path / "b.npy", b)
    refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    before = (tmp_path / "out" / "manifest.json").read_text()
    res = refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    assert res["skipped"] is True
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    assert bl.open(xpath).shape == (530, 6)
    _check(tmp_path / "out", np.vstack([x, b]))


@pytest.mark.parametrize("point", ["after_append", "after_outputs"])
def test_interrupted_refresh_reruns_to_same_result(matrix: Any, pipe: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   point: str) -> None:
    x, xpath = matrix
    b = np.random.default_rng(9).normal(size=(130, 6))
    np.save(tmp_path / "b.npy", b)
    monkeypatch.setenv(FAULT_ENV, point)
    with pytest.raises(RuntimeError, match="injected fault"):
        refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    monkeypatch.delenv(FAULT_ENV)
    assert not (tmp_path / "out" / ".blocklin.lock").exists()
    res = refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    if point == "after_outputs":
        assert res.get("skipped") is True  # the manifest was committed before the fault
    full = np.vstack([x, b])
    np.testing.assert_array_equal(bl.open(xpath).to_numpy(), full)
    _check(tmp_path / "out", full)
    assert load_manifest(tmp_path / "out")["refresh"]["rows"] == 630  # type: ignore[index]


def test_readers_of_the_old_version_see_the_old_matrix(matrix: Any, pipe: Any,
                                                       tmp_path: Path) -> None:
    x, xpath = matrix
    old = bl.open(xpath)  # a reader holding the metadata from before the append
    np.save(tmp_path / "b.npy", np.full((50, 6), 7.0))
    refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    np.testing.assert_array_equal(old.to_numpy(), x)  # rewritten last block: old rows intact
    assert bl.open(xpath).shape == (550, 6)


def test_refresh_errors(matrix: Any, write_spec: Any, tmp_path: Path) -> None:
    spec = base_spec()
    spec.pop("refresh")
    norefresh = load_pipeline(write_spec(spec, "norefresh.yaml"))
    np.save(tmp_path / "b.npy", np.ones((4, 6)))
    with pytest.raises(SpecError, match="no refresh section"):
        refresh_pipeline(norefresh, str(tmp_path / "b.npy"))
    fresh = load_pipeline(write_spec(base_spec()))
    with pytest.raises(SpecError, match="run the pipeline"):
        refresh_pipeline(fresh, str(tmp_path / "b.npy"))
    run_pipeline(fresh)
    np.save(tmp_path / "narrow.npy", np.ones((4, 5)))
    with pytest.raises(InputValueError, match="has 5 columns"):
        refresh_pipeline(fresh, str(tmp_path / "narrow.npy"))
    assert bl.open(tmp_path / "X.zarr").shape == (500, 6)
    assert not list((tmp_path / "out" / ".refresh" / "batches").iterdir())


def test_label_refresh_interrupted_between_features_and_labels(tmp_path: Path,
                                                               write_spec: Any,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from blocklin.pipelines.ingest import ingest

    rng = np.random.default_rng(11)
    x, x2 = rng.normal(size=(300, 3)), rng.normal(size=(80, 3))
    y, y2 = x @ [1.0, -2.0, 0.5], x2 @ [1.0, -2.0, 0.5] + 0.1

    def table(a: np.ndarray, b: np.ndarray) -> pa.Table:
        return pa.table({"a": a[:, 0], "b": a[:, 1], "c": a[:, 2], "y": b})

    pq.write_table(table(x, y), tmp_path / "train.parquet")
    pq.write_table(table(x2, y2), tmp_path / "new.parquet")
    ingest(str(tmp_path / "train.parquet"), str(tmp_path / "X.zarr"), label="y",
           chunk_rows=128)
    spec = base_spec(inputs={"X": {"path": "X.zarr"}, "y": {"path": "X.label.zarr"}},
                     steps=[{"name": "xty", "op": "crossprod", "inputs": {"A": "X", "B": "y"}}],
                     outputs={"xty": {"step": "xty"}},
                     refresh={"input": "X", "label_input": "y", "label_column": "y"})
    pipe = load_pipeline(write_spec(spec))
    run_pipeline(pipe)
    monkeypatch.setenv(FAULT_ENV, "after_append_x")  # rows appended, labels not yet
    with pytest.raises(RuntimeError, match="injected fault"):
        refresh_pipeline(pipe, str(tmp_path / "new.parquet"))
    assert bl.open(tmp_path / "X.zarr").shape[0] == 380
    assert bl.open(tmp_path / "X.label.zarr").shape[0] == 300
    monkeypatch.delenv(FAULT_ENV)
    m = refresh_pipeline(pipe, str(tmp_path / "new.parquet"))
    assert m["refresh"]["outputs"] == {"xty": "incremental"}
    assert bl.open(tmp_path / "X.label.zarr").shape[0] == 380
    full_x, full_y = np.vstack([x, x2]), np.concatenate([y, y2])
    np.testing.assert_allclose(load_small(tmp_path / "out" / "xty.npz")["value"][:, 0],
                               full_x.T @ full_y, rtol=1e-12)


def test_truncated_svd_refresh_matches_lapack(tmp_path: Path, write_spec: Any) -> None:
    rng = np.random.default_rng(21)
    basis = rng.normal(size=(4, 12))
    x, x2 = rng.normal(size=(400, 4)) @ basis, rng.normal(size=(90, 4)) @ basis
    bl.from_array(x, tmp_path / "X.zarr", chunks=(128, None))
    np.save(tmp_path / "b.npy", x2)
    spec = base_spec(steps=[{"name": "svd", "op": "truncated_svd", "inputs": {"A": "X"},
                             "params": {"n_components": 4}}],
                     outputs={"svd": {"step": "svd"}})
    pipe = load_pipeline(write_spec(spec))
    run_pipeline(pipe)
    m = refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    assert m["refresh"]["outputs"] == {"svd": "incremental"}
    full = np.vstack([x, x2])
    got = load_small(tmp_path / "out" / "svd.npz")
    # Rank 4 data, 4 components: the row update is exact up to rounding.
    np.testing.assert_allclose(got["singular_values"],
                               np.linalg.svd(full, compute_uv=False)[:4], rtol=1e-9)
    centered = full - full.mean(0)
    total = (centered**2).sum() / len(full)
    ratio = ((centered @ got["components"].T) ** 2).sum(0) / len(full) / total
    np.testing.assert_allclose(got["explained_variance_ratio"], ratio, rtol=1e-8)
    assert int(got["n_samples_seen"]) == 490
    assert (tmp_path / "out" / "report" / "svd-spectrum.png").is_file()
