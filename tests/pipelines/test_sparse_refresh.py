"""Refresh on CSR inputs: CSR row blocks appended (never densified), the same bytes as
a matrix stored whole, an interrupted append leaving the input readable as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputChangedError
from blocklin.pipelines.append import append_batch, batch_records, copy_rows
from blocklin.pipelines.ingest import ingest
from blocklin.storage.sparse import CSRBlock, append_sparse, to_scipy


def _csr(m: int, seed: int, n: int = 30) -> sp.csr_matrix:
    return sp.random(m, n, density=0.1, format="csr", random_state=seed,
                     data_rvs=np.random.default_rng(seed).standard_normal)


@pytest.mark.parametrize(("rows", "batch"), [(1000, 450), (900, 300), (1000, 20)])
def test_append_csr_rows_equals_storing_them_whole(tmp_path: Path, rows: int,
                                                   batch: int) -> None:
    x0, x1 = _csr(rows, 0), _csr(batch, 1)
    A = bl.from_array(x0, tmp_path / "A.zarr", chunks=(300, None))
    B = bl.from_array(x1, tmp_path / "B.zarr", chunks=(300, None))
    out = append_batch(A, B, "b1.npz")
    whole = bl.from_array(sp.vstack([x0, x1]), tmp_path / "W.zarr", chunks=(300, None))
    assert out.shape == whole.shape and out.chunks == whole.chunks
    # Same canonical CSR components, same checksums: the same fingerprint and layout.
    assert out.fingerprint == whole.fingerprint
    assert out.provenance["layout"]["nnz"] == whole.provenance["layout"]["nnz"]
    again = bl.open(tmp_path / "A.zarr")
    assert isinstance(again.block(again.nblocks[0] - 1, 0), CSRBlock)
    assert (to_scipy(again) != sp.vstack([x0, x1])).nnz == 0
    assert [r["rows"] for r in batch_records(again)] == [[rows, rows + batch]]
    # The same batch again is recognised by its content: nothing appended.
    assert append_batch(again, B, "b1-again.npz").shape == again.shape
    # Rows of a committed batch, copied out for another pipeline, stay CSR.
    C = copy_rows(again, rows, rows + batch, str(tmp_path / "C.zarr"))
    assert C.meta.format == "csr" and (to_scipy(C) != x1).nnz == 0


def test_interrupted_append_leaves_the_input_as_it_was(tmp_path: Path) -> None:
    x0, x1 = _csr(1000, 2), _csr(450, 3)
    A = bl.from_array(x0, tmp_path / "A.zarr", chunks=(300, None))
    fp = A.fingerprint

    def fail() -> None:
        raise InputChangedError("simulated writer that bypassed the lock")

    with pytest.raises(InputChangedError):
        append_sparse(A, [x1], {}, before_commit=fail)
    # The last block now holds more rows than the metadata says: its leading rows read.
    A2 = bl.open(tmp_path / "A.zarr")
    assert A2.shape == (1000, 30) and A2.fingerprint == fp
    assert (to_scipy(A2) != x0).nnz == 0
    g = bl.ops.gram(A2).compute(work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(g, (x0.T @ x0).toarray(), rtol=1e-12, atol=1e-12)
    out = append_sparse(A2, [x1], {})
    assert (to_scipy(out) != sp.vstack([x0, x1])).nnz == 0


def test_npz_batch_staged_as_csr_and_appended(tmp_path: Path) -> None:
    x0, x1 = _csr(700, 4), _csr(130, 5)
    sp.save_npz(tmp_path / "base.npz", x0)
    sp.save_npz(tmp_path / "week.npz", x1)
    A = ingest(str(tmp_path / "base.npz"), str(tmp_path / "A.zarr"), chunk_rows=200).matrix
    staged = ingest(str(tmp_path / "week.npz"), str(tmp_path / "S.zarr"), chunk_rows=200).matrix
    assert staged.meta.format == "csr"
    out = append_batch(A, staged, "week.npz")
    assert (to_scipy(out) != sp.vstack([x0, x1])).nnz == 0
