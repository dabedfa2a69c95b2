"""Non-finite values: refused where they enter (from_array), found inside the pass that
reads them (every operator, every executor), named by array, block, row and column."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputValueError, NonFiniteError
from blocklin.executors.lazy import Lazy
from blocklin.ops.inputs import as_matrix, row_panel_reads
from blocklin.plan.graph import Task, TaskContext, make_stage
from blocklin.testing.fixtures import ExecutorCase

ROW, COL = 213, 4  # the bad value: row block 2 of 100-row panels


def _sparse(seed: int, bad: float) -> sp.csr_matrix:
    s = sp.random(400, 6, density=0.3, format="lil", random_state=seed)
    s[ROW, COL] = bad
    return s.tocsr()


def _x(bad: float = np.nan) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((400, 6))
    x[ROW, COL] = bad
    return x


def _assert_names(exc: NonFiniteError, url: str, block: tuple[int, ...], row: int,
                  col: int) -> None:
    assert (exc.array, exc.block, exc.row, exc.col) == (url, block, row, col)
    assert f"at row {row}, column {col}" in str(exc)


# -- where data enters ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_from_array_refuses_nonfinite_by_default(tmp_path: Path, bad: float) -> None:
    x = _x(bad)
    path = tmp_path / "A.zarr"
    with pytest.raises(NonFiniteError) as info:
        bl.from_array(x, path, chunks=(100, None))
    _assert_names(info.value, str(path), (2, 0), ROW, COL)
    assert isinstance(info.value, InputValueError) and not path.exists()
    # 2-D tiles: the block is (row block, column block), row and column stay global.
    with pytest.raises(NonFiniteError) as info:
        bl.from_array(x, path, chunks=(100, 4))
    _assert_names(info.value, str(path), (2, 1), ROW, COL)
    assert not path.exists()


def test_from_array_dask_and_sparse_refuse_nonfinite(tmp_path: Path) -> None:
    x = _x()
    path = tmp_path / "D.zarr"
    with pytest.raises(NonFiniteError) as info:
        bl.from_array(da.from_array(x, chunks=(50, 6)), path, chunks=(100, None))
    _assert_names(info.value, str(path), (2, 0), ROW, COL)
    assert not path.exists()
    s = _sparse(1, np.inf)
    with pytest.raises(NonFiniteError) as info:
        bl.from_array(s, tmp_path / "S.zarr", chunks=(100, None))
    _assert_names(info.value, str(tmp_path / "S.zarr"), (2, 0), ROW, COL)
    assert not (tmp_path / "S.zarr").exists()


def test_check_finite_false_stores_them(tmp_path: Path) -> None:
    x = _x()
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None), check_finite=False)
    np.testing.assert_array_equal(bl.open(A.url).to_numpy(), x)  # NaN == NaN here


# -- inside the passes that read them -----------------------------------------------------------
def _stored(tmp_path: Path) -> dict[str, Any]:
    dense = bl.from_array(_x(), tmp_path / "A.zarr", chunks=(100, None), check_finite=False)
    s = _sparse(2, np.nan)
    sparse = bl.from_array(s, tmp_path / "S.zarr", chunks=(100, None), check_finite=False)
    return {"dense": dense, "sparse": sparse}


OPERATORS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "gram": lambda A, B, W: bl.ops.gram(A),
    "column_stats": lambda A, B, W: bl.ops.column_stats(A),
    "matmul": lambda A, B, W: bl.ops.matmul(A, W),
    "matmul_tn": lambda A, B, W: bl.ops.matmul(A.T, B),
    "sketch_gaussian": lambda A, B, W: bl.ops.sketch(A, 4, kind="gaussian"),
    "sketch_countsketch": lambda A, B, W: bl.ops.sketch(A, 4, kind="countsketch"),
    "sketch_sparse_sign": lambda A, B, W: bl.ops.sketch(A, 4, kind="sparse_sign"),
    "sketch_srht": lambda A, B, W: bl.ops.sketch(A, 4, kind="srht"),
    "sketch_right": lambda A, B, W: bl.ops.sketch(A, 3, side="right"),
    "tsqr_r": lambda A, B, W: bl.ops.tsqr_r(A),
    "tsqr": lambda A, B, W: bl.ops.tsqr(A).R,
    "standardized_gram": lambda A, B, W: bl.ops.gram(bl.ops.standardize(A)),
    # k = 3 keeps 4 of each panel's 100 rows: the NaN row must still be among them.
    "coordinated": lambda A, B, W: bl.ops.sketched_matmul(A, B, 3, kind="coordinated"),
}


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_operators_name_the_first_nonfinite_value(tmp_path: Path, op: str, fmt: str) -> None:
    A = _stored(tmp_path)[fmt]
    B = bl.from_array(np.ones((400, 2)), tmp_path / "B.zarr", chunks=(100, None))
    W = bl.from_array(np.ones((6, 2)), tmp_path / "W.zarr")
    with pytest.raises(NonFiniteError) as info:
        bl.compute(OPERATORS[op](A, B, W), work_dir=str(tmp_path / "w"))
    _assert_names(info.value, A.url, (2, 0), ROW, COL)


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_svd_and_out_arrays_are_not_sealed(tmp_path: Path, fmt: str) -> None:
    A = _stored(tmp_path)[fmt]
    with pytest.raises(NonFiniteError) as info:
        bl.ops.randomized_svd(A, 2, work_dir=str(tmp_path / "w"))
    _assert_names(info.value, A.url, (2, 0), ROW, COL)
    W = bl.from_array(np.ones((6, 2)), tmp_path / "W.zarr")
    out = tmp_path / "P.zarr"
    with pytest.raises(NonFiniteError):
        bl.compute(bl.ops.matmul(A, W, out=str(out)), work_dir=str(tmp_path / "w"))
    # The bad block was never written or recorded, and the array was never sealed.
    assert not (out / "zarr.json").exists() and not (out / "c" / "2").exists()


def test_nonfinite_found_on_every_executor(tmp_path: Path, executor: ExecutorCase) -> None:
    # Workers in other processes (distributed, Spark) send the error back with its fields.
    A = _stored(tmp_path)["dense"]
    with pytest.raises(NonFiniteError) as info:
        executor.compute(bl.ops.gram(A))
    _assert_names(info.value, A.url, (2, 0), ROW, COL)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_overflow_names_the_stage(tmp_path: Path) -> None:
    # Finite input whose Gram overflows float64: the partial, not the input, is named.
    x = np.full((300, 3), 1e200)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    with pytest.raises(NonFiniteError, match=r"stage gram/partial computed them from finite "
                                             r"input blocks of .*A\.zarr.*overflowed") as info:
        bl.ops.gram(A).compute(work_dir=str(tmp_path / "w"))
    assert info.value.array.startswith(str(tmp_path / "w")) and info.value.row is None
    # Large finite results are not mistaken for overflow: the output's entries are 1e308
    # each, so their sum overflows and the check falls back to the exact element test.
    y = np.full((100, 3), 1e153)
    G = bl.ops.gram(bl.from_array(y, tmp_path / "Y.zarr", chunks=(100, None))).compute(
        work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(G, y.T @ y, rtol=1e-14)


class _SVDValues:
    """A kernel that fails on NaN the way LAPACK wrappers do (scipy's check_finite)."""

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return scipy.linalg.svdvals(np.asarray(blocks[0]))[None, :]


def _svdvals_node(A: Any) -> Lazy:
    m = as_matrix(A)
    tasks = [Task(out=(i, 0), reads=row_panel_reads(m, 0, i)) for i in range(m.grid[0])]
    n = m.shape[1]
    stage = make_stage("test/svdvals", _SVDValues(), [m.input], tasks,
                       shape=(m.grid[0], n), chunks=(1, n), dtype="float64")
    return Lazy(m.plan.add(stage), stage.output, "small", label="svdvals")


def test_a_kernel_failing_on_nonfinite_input_is_named(tmp_path: Path) -> None:
    A = bl.from_array(_x(), tmp_path / "A.zarr", chunks=(100, None), check_finite=False)
    with pytest.raises(NonFiniteError) as info:
        _svdvals_node(A).compute(work_dir=str(tmp_path / "w"))
    _assert_names(info.value, A.url, (2, 0), ROW, COL)
    assert isinstance(info.value.__cause__, ValueError)  # scipy's own error, kept as cause
    x = np.random.default_rng(3).standard_normal((400, 6))
    got = _svdvals_node(bl.from_array(x, tmp_path / "C.zarr", chunks=(100, None))).compute(
        work_dir=str(tmp_path / "w"))
    # A small result reads back its first block: the first panel's singular values.
    np.testing.assert_allclose(got[0], np.linalg.svd(x[:100], compute_uv=False), rtol=1e-12)
