"""A chunk blocklin wrote and cannot find is an error; foreign arrays keep zarr's fill rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml
import zarr
from tests.pipelines.conftest import base_spec, run_cli

import blocklin as bl
from blocklin.errors import MissingChunkError
from blocklin.ml import LinearRegression
from blocklin.pipelines.inspect import inspect_array
from blocklin.testing.fixtures import ExecutorCase


def _stored(tmp_path: Path) -> tuple[np.ndarray, Path]:
    x = np.random.default_rng(0).normal(size=(600, 5))
    path = tmp_path / "X.zarr"
    bl.from_array(x, path, chunks=(100, None))
    return x, path


def test_gram_refuses_a_lost_chunk(tmp_path: Path) -> None:
    _, path = _stored(tmp_path)
    (path / "c" / "3" / "0").unlink()
    with pytest.raises(MissingChunkError, match=r"missing chunk 3\.0 of array .*X\.zarr") as info:
        bl.ops.gram(bl.open(path)).compute(work_dir=str(tmp_path / "w"))
    assert info.value.chunk == (3, 0)
    with pytest.raises(MissingChunkError):
        bl.open(path).to_numpy()
    with pytest.raises(MissingChunkError):
        bl.ops.column_stats(bl.open(path)).compute(work_dir=str(tmp_path / "w2"))


def test_estimator_refuses_a_lost_chunk(tmp_path: Path) -> None:
    x, path = _stored(tmp_path)
    y = bl.from_array(x.sum(1, keepdims=True), tmp_path / "y.zarr", chunks=(100, None))
    (path / "c" / "5" / "0").unlink()
    with pytest.raises(MissingChunkError):
        LinearRegression(solver="normal").fit(str(path), y)


def test_cli_run_exits_4_on_a_lost_chunk(tmp_path: Path) -> None:
    _, path = _stored(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(base_spec()))
    (path / "c" / "2" / "0").unlink()
    res = run_cli("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 4, res.stderr
    assert "missing chunk 2.0" in res.stderr
    assert not (tmp_path / "out" / "gram.npz").exists()


def test_sparse_lost_block_is_an_error(tmp_path: Path) -> None:
    x = sp.random(300, 40, density=0.05, format="csr", random_state=1)
    A = bl.from_array(x, tmp_path / "S.zarr", chunks=(100, None))
    shutil.rmtree(tmp_path / "S.zarr" / "b" / "1" / "indptr" / "c")
    with pytest.raises(MissingChunkError, match=r"missing chunk 1\.0"):
        bl.open(A.url).block(1)


@pytest.mark.parametrize("fast_path", [True, False], ids=["crc32c-codecs", "zarr-defaults"])
@pytest.mark.parametrize("fill", [0.0, 5.5, np.nan])
def test_foreign_array_reads_missing_chunks_as_its_fill_value(tmp_path: Path, fill: float,
                                                              fast_path: bool) -> None:
    # With bytes + crc32c codecs blocklin decodes the chunks itself; with zarr's
    # defaults (zstd) it reads through zarr. Either way zarr's fill rule applies.
    codecs = {"compressors": [zarr.codecs.Crc32cCodec()]} if fast_path else {}
    z = zarr.create_array(tmp_path / "F.zarr", shape=(40, 3), chunks=(10, 3), dtype="f8",
                          fill_value=fill, **codecs)
    z[:10] = 1.0
    z[30:] = 2.0  # chunks 1 and 2 are never written
    A = bl.open(tmp_path / "F.zarr")
    assert (A.meta.codec is not None) == fast_path and not A.meta.owned
    np.testing.assert_array_equal(A.to_numpy(), z[:])
    info = inspect_array(str(tmp_path / "F.zarr"))
    assert "fill value" in info["missing_chunks"]
    if fill == 5.5:
        g = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
        ref = z[:]
        np.testing.assert_allclose(g, ref.T @ ref, rtol=1e-14)


def test_inspect_says_missing_chunks_of_owned_arrays_are_errors(tmp_path: Path) -> None:
    _, path = _stored(tmp_path)
    assert inspect_array(str(path))["missing_chunks"].startswith("error")


def test_lost_chunk_is_named_on_every_executor(tmp_path: Path, executor: ExecutorCase) -> None:
    _, path = _stored(tmp_path)
    (path / "c" / "4" / "0").unlink()
    with pytest.raises(MissingChunkError) as info:
        executor.compute(bl.ops.gram(bl.open(path)))
    assert info.value.chunk == (4, 0) and info.value.array.endswith("X.zarr")


def test_from_array_refuses_to_overwrite_its_own_source(tmp_path: Path) -> None:
    from blocklin.errors import OutputAliasError

    x, path = _stored(tmp_path)
    A = bl.open(path)
    with pytest.raises(OutputAliasError):
        bl.from_array(A, path, overwrite=True)
    np.testing.assert_array_equal(bl.open(path).to_numpy(), x)
