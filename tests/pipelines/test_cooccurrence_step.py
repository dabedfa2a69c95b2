"""The cooccurrence pipeline step: outputs equal the operator's, and a refresh with
appended rows equals a recompute over the whole input, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from tests.pipelines.conftest import base_spec

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline


def _tokens(ntok: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 31)
    ids = rng.choice(30, size=(ntok, 1), p=p / p.sum()).astype(np.int64)
    ids[rng.random(ntok) < 0.04] = 0  # id 0 ends a document
    return ids


def _spec(params: dict[str, Any]) -> dict[str, Any]:
    return base_spec(steps=[{"name": "co", "op": "cooccurrence", "inputs": {"A": "X"},
                             "params": params}],
                     outputs={"co": {"step": "co"}})


def _assert_same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("weighting", ["harmonic", "linear"])
def test_window_step_refresh_equals_recompute(tmp_path: Path, write_spec: Any,
                                              weighting: str) -> None:
    t0, t1, t2 = _tokens(700, 0), _tokens(150, 1), _tokens(3, 2)  # a batch shorter than w
    params = {"window": 4, "weighting": weighting, "vocab_size": 30, "boundary": 0,
              "embedding_dim": 3}
    bl.from_array(t0, tmp_path / "X.zarr", chunks=(64, None))
    np.save(tmp_path / "b1.npy", t1)
    np.save(tmp_path / "b2.npy", t2)
    pipe = load_pipeline(write_spec(_spec(params)))
    run_pipeline(pipe)
    first = load_small(tmp_path / "out" / "co.npz")
    ref, scale = bl.ops.cooccurrence_counts(tmp_path / "X.zarr", window=4, weighting=weighting,
                                            vocab_size=30, boundary=0,
                                            work_dir=str(tmp_path / "w"))
    np.testing.assert_array_equal(first["counts"], ref.data)
    np.testing.assert_array_equal(first["indices"], ref.indices)
    assert int(first["scale"]) == scale and first["embedding"].shape == (30, 3)
    for b in ("b1", "b2"):
        m = refresh_pipeline(pipe, str(tmp_path / f"{b}.npy"))
        assert m["refresh"]["outputs"] == {"co": "incremental"}
    refreshed = load_small(tmp_path / "out" / "co.npz")
    # The same pipeline run from scratch over the appended input.
    full = np.vstack([t0, t1, t2])
    other = tmp_path / "again"
    other.mkdir()
    bl.from_array(full, other / "X.zarr", chunks=(64, None))
    spec = _spec(params)
    again = load_pipeline(write_spec(spec, "again/spec.yaml"))
    run_pipeline(again)
    _assert_same_bits(refreshed, load_small(other / "out" / "co.npz"))
    assert refreshed["counts"].sum() > first["counts"].sum()


def test_item_set_step_refresh_equals_recompute(tmp_path: Path, write_spec: Any) -> None:
    x0 = sp.random(200, 25, density=0.2, format="csr", random_state=3)
    x1 = sp.random(60, 25, density=0.2, format="csr", random_state=4)
    bl.from_array(x0, tmp_path / "X.zarr", chunks=(50, None))
    sp.save_npz(tmp_path / "b.npz", x1)
    pipe = load_pipeline(write_spec(_spec({"diagonal": True})))
    run_pipeline(pipe)
    refresh_pipeline(pipe, str(tmp_path / "b.npz"))
    got = load_small(tmp_path / "out" / "co.npz")
    b = (sp.vstack([x0, x1]) != 0).astype(float)
    ref = sp.csr_matrix(b.T @ b)
    c = sp.csr_matrix((got["data"], got["indices"], got["indptr"]), shape=(25, 25))
    np.testing.assert_array_equal(c.toarray(), ref.toarray())
    assert "tail" not in got and "embedding" not in got


def test_window_step_needs_vocab_size(tmp_path: Path, write_spec: Any) -> None:
    bl.from_array(_tokens(100, 0), tmp_path / "X.zarr", chunks=(32, None))
    pipe = load_pipeline(write_spec(_spec({"window": 2})))
    with pytest.raises(InputValueError, match="vocab_size"):
        run_pipeline(pipe)
