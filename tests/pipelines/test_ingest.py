"""Ingest from .npy, CSV, Parquet (row group by row group) and zarr, against the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import zarr

import blocklin as bl
from blocklin.pipelines.ingest import ingest


@pytest.fixture
def table(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1037, 4))
    y = rng.integers(0, 2, size=1037).astype(np.float64)
    t = pa.table({"a": x[:, 0], "b": x[:, 1], "id": [f"r{i}" for i in range(1037)],
                  "c": x[:, 2], "label": y, "d": x[:, 3].astype(np.float32)})
    return x, y, t


def test_parquet_streams_row_groups_and_splits_label(tmp_path: Path, table: tuple) -> None:
    x, y, t = table
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=100)  # 11 row groups
    res = ingest(str(tmp_path / "t.parquet"), str(tmp_path / "X.zarr"), label="label",
                 chunk_rows=256)
    assert res.columns == ("a", "b", "c", "d")  # the text column is skipped
    assert res.matrix.chunks == (256, 4) and res.matrix.shape == (1037, 4)
    np.testing.assert_allclose(bl.open(tmp_path / "X.zarr").to_numpy(),
                               np.column_stack([x[:, :3], x[:, 3].astype(np.float32)]))
    assert res.label is not None and res.label.url.endswith("X.label.zarr")
    np.testing.assert_array_equal(bl.open(res.label.url).to_numpy()[:, 0], y)
    assert res.matrix.provenance["columns"] == ["a", "b", "c", "d"]


def test_csv_with_selected_columns(tmp_path: Path, table: tuple) -> None:
    x, _, t = table
    pcsv.write_csv(t, tmp_path / "t.csv")
    res = ingest(str(tmp_path / "t.csv"), str(tmp_path / "X.zarr"), columns=["c", "a"],
                 chunk_rows=500, dtype="float32")
    got = bl.open(tmp_path / "X.zarr").to_numpy()
    assert got.dtype == np.float32 and res.columns == ("c", "a")
    np.testing.assert_allclose(got, x[:, [2, 0]].astype(np.float32), rtol=1e-6)


def test_npy_and_zarr_sources(tmp_path: Path) -> None:
    x = np.arange(300 * 5, dtype=np.int32).reshape(300, 5)
    np.save(tmp_path / "x.npy", x)
    ingest(str(tmp_path / "x.npy"), str(tmp_path / "A.zarr"), chunk_rows=64)
    a = bl.open(tmp_path / "A.zarr")
    assert a.dtype == np.int32 and a.chunks == (64, 5)
    np.testing.assert_array_equal(a.to_numpy(), x)
    z = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(300, 5), chunks=(7, 5),
                          dtype="float64")
    z[:] = x
    ingest(str(tmp_path / "plain.zarr"), str(tmp_path / "B.zarr"), chunk_rows=100)
    np.testing.assert_array_equal(bl.open(tmp_path / "B.zarr").to_numpy(), x)


def test_failed_ingest_leaves_nothing(tmp_path: Path) -> None:
    rows = ["a,b"] + [f"{i},{i}" for i in range(50)] + [",1"]
    (tmp_path / "bad.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="missing values"):
        ingest(str(tmp_path / "bad.csv"), str(tmp_path / "X.zarr"), chunk_rows=8)
    assert not (tmp_path / "X.zarr").exists()


def test_sparse_npz_ingest_verify_and_refresh_appends_csr(tmp_path: Path) -> None:
    import scipy.sparse as sp

    from blocklin.pipelines.inspect import inspect_array, verify_array
    from blocklin.pipelines.refresh import append_batch

    x = sp.random(300, 40, density=0.05, format="csr", random_state=0)
    sp.save_npz(tmp_path / "t.npz", x)
    res = ingest(str(tmp_path / "t.npz"), str(tmp_path / "S.zarr"), chunk_rows=100)
    assert res.format == "npz" and res.matrix.shape == (300, 40)
    np.testing.assert_array_equal(np.vstack([res.matrix.block(i).toarray() for i in range(3)]),
                                  x.toarray())
    assert inspect_array(str(tmp_path / "S.zarr"))["format"] == "csr"
    assert verify_array(str(tmp_path / "S.zarr"))["ok"] is True
    part = next((tmp_path / "S.zarr" / "b" / "1" / "data" / "c").iterdir())
    raw = bytearray(part.read_bytes())
    raw[3] ^= 0x01
    part.write_bytes(bytes(raw))
    report = verify_array(str(tmp_path / "S.zarr"))
    assert not report["ok"] and [c["chunk"] for c in report["corrupt"]] == ["b/1"]
    # A dense batch extends a CSR input with CSR rows (the corrupt block is not read:
    # its checksum trailer is, and verify still names it).
    dense = bl.from_array(np.ones((5, 40)), tmp_path / "D.zarr")
    grown = append_batch(res.matrix, dense, "x")
    assert grown.shape == (305, 40) and grown.meta.format == "csr"
    np.testing.assert_array_equal(grown.block(3).toarray(), np.ones((5, 40)))
    assert [c["chunk"] for c in verify_array(str(tmp_path / "S.zarr"))["corrupt"]] == ["b/1"]


def test_exclude_and_dropped_columns_are_named(tmp_path: Path, table: tuple) -> None:
    x, _, t = table
    pq.write_table(t, tmp_path / "t.parquet")
    res = ingest(str(tmp_path / "t.parquet"), str(tmp_path / "X.zarr"), label="label",
                 exclude=["b", "d"])
    assert res.columns == ("a", "c") and res.dropped == (("id", "string"),)
    np.testing.assert_array_equal(bl.open(tmp_path / "X.zarr").to_numpy(), x[:, [0, 2]])
    with pytest.raises(ValueError, match=r"--exclude 'z'.*no such column"):
        ingest(str(tmp_path / "t.parquet"), str(tmp_path / "Y.zarr"), exclude=["z"])
    assert not (tmp_path / "Y.zarr").exists()
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match="not npy"):
        ingest(str(tmp_path / "x.npy"), str(tmp_path / "Z.zarr"), exclude=["c0"])


def test_cli_names_features_and_dropped_columns(tmp_path: Path, table: tuple) -> None:
    from tests.pipelines.conftest import run_cli

    _, _, t = table
    pq.write_table(t.append_column("label2", t.column("label")), tmp_path / "t.parquet")
    res = run_cli("ingest", "t.parquet", "X.zarr", "--label", "label", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # the second label-like column became a feature, and the output says so
    assert "features (5): a, b, c, d, label2" in res.stdout
    assert "dropped (not numeric): id (string)" in res.stdout
    res = run_cli("ingest", "t.parquet", "X2.zarr", "--label", "label", "--exclude", "label2",
                  cwd=tmp_path)
    assert "features (4): a, b, c, d" in res.stdout


def test_small_table_is_not_padded_to_a_default_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(442, 2))
    pcsv.write_csv(pa.table({"a": x[:, 0], "b": x[:, 1], "y": x.sum(1)}), tmp_path / "t.csv")
    res = ingest(str(tmp_path / "t.csv"), str(tmp_path / "X.zarr"), label="y", codec="none")
    assert res.matrix.chunks == (442, 2) and res.label is not None
    assert res.label.chunks == (442, 1)
    stored = sum(p.stat().st_size for p in (tmp_path / "X.zarr").rglob("*") if p.is_file())
    assert stored < 442 * 2 * 8 + 4096  # the data, its crc and metadata; not 64 MiB
    np.testing.assert_array_equal(bl.open(tmp_path / "X.zarr").to_numpy(), x)
    np.testing.assert_array_equal(bl.open(res.label.url).to_numpy()[:, 0], x.sum(1))
