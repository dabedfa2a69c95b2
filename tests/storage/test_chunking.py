"""Default block shapes follow the data: a small array is one block of its own rows, a
larger one equal blocks of at most BLOCKLIN_CHUNK_BYTES, so no edge block is padded up
to a full target-size chunk on disk (zarr stores edge chunks at the full chunk shape)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.config import chunk_rows_for, default_chunk_bytes
from blocklin.errors import InputValueError


def _stored(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_small_table_takes_kilobytes(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((442, 2))  # scikit-learn's diabetes, 2 columns
    A = bl.from_array(x, tmp_path / "X.zarr", codec="none")
    y = bl.from_array(x[:, :1], tmp_path / "y.zarr", codec="none")
    assert A.chunks == (442, 2) and y.chunks == (442, 1)
    assert _stored(tmp_path / "X.zarr") < 442 * 2 * 8 + 4096
    assert _stored(tmp_path / "y.zarr") < 442 * 8 + 4096
    # Asked for blocks larger than the array, it still gets one block of its own rows.
    B = bl.from_array(x, tmp_path / "B.zarr", chunks=(50_000, None), codec="none")
    assert B.chunks == (442, 2) and _stored(tmp_path / "B.zarr") < 442 * 2 * 8 + 4096


@pytest.mark.parametrize("kind", ["numpy", "dask", "sparse"])
def test_blocks_are_equal_and_at_most_the_target(tmp_path: Path, kind: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKLIN_CHUNK_BYTES", "64KiB")
    assert default_chunk_bytes() == 65536
    target = 65536 // (10 * 8)  # 819 rows of 10 float64 columns
    rows = 3 * target + 10  # a fixed-size rule: 3 full blocks and one of 10 rows
    x = np.random.default_rng(1).standard_normal((rows, 10))
    src = {"numpy": x, "dask": da.from_array(x, chunks=(500, 10)),
           "sparse": sp.csr_matrix(x)}[kind]
    A = bl.from_array(src, tmp_path / "X.zarr", codec="none")
    assert A.nblocks == (4, 1)
    assert A.chunks[0] <= target and A.chunks[0] * 4 - rows < 4  # under a row per block
    np.testing.assert_array_equal(np.asarray(A.to_numpy() if kind != "sparse"
                                             else bl.open(tmp_path / "X.zarr").to_numpy()), x)
    if kind != "sparse":  # dense: stored bytes are the data's (no padded edge chunk)
        assert _stored(tmp_path / "X.zarr") < rows * 10 * 8 * 1.01 + 8192


def test_chunk_rows_rule() -> None:
    assert chunk_rows_for(442, 2, 8) == 442
    assert chunk_rows_for(1, 10**6, 8) == 1
    target = default_chunk_bytes() // (100 * 8)
    assert chunk_rows_for(target, 100, 8) == target
    assert chunk_rows_for(target + 1, 100, 8) == target // 2 + 1
    for n in (target * 5 - 3, target * 7 + 1, 10**7):
        r = chunk_rows_for(n, 100, 8)
        blocks = -(-n // r)
        assert r <= target and r * blocks - n < blocks


def test_a_bad_chunk_bytes_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKLIN_CHUNK_BYTES", "lots")
    with pytest.raises(InputValueError, match="lots"):
        default_chunk_bytes()


def test_ingest_of_a_parquet_file_uses_equal_blocks(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from blocklin.pipelines.ingest import ingest

    monkeypatch.setenv("BLOCKLIN_CHUNK_BYTES", "16KiB")
    rows = 3 * (16384 // 16) + 5  # 2 feature columns of float64: 1024 rows a block at most
    x = np.random.default_rng(2).standard_normal((rows, 3))
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "y": x[:, 2]}), tmp_path / "t.parquet")
    res = ingest(str(tmp_path / "t.parquet"), str(tmp_path / "t.zarr"), label="y", codec="none")
    assert res.matrix.nblocks[0] == 4 and res.matrix.chunks[0] * 4 - rows < 4
    assert res.label is not None and res.label.chunks == (res.matrix.chunks[0], 1)
    np.testing.assert_array_equal(res.matrix.to_numpy()[:, 0], x[:, 0])
