"""Estimators refuse NaN and infinity with a ValueError subclass, as scikit-learn does,
whatever form X takes (numpy, dask, stored), on every solver; never a fitted model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import NonFiniteError
from blocklin.ml import LinearRegression, LogisticRegression, TruncatedSVD

ROW, COL = 250, 2

LINEAR_SOLVERS = ["auto", "normal", "qr", "lbfgs", "owlqn", "sketch"]
LOGISTIC_SOLVERS = ["auto", "newton", "lbfgs", "owlqn"]


def _data(tmp_path: Path, kind: str, bad: float = np.nan) -> tuple[Any, Any, Any, str]:
    """X with one bad value as numpy, dask or stored; regression and class labels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5))
    y = x @ np.arange(5.0) + 1.0
    x[ROW, COL] = bad
    yc = (y > 1.0).astype(np.float64)
    if kind == "numpy":
        return x, y, yc, ""
    if kind == "dask":
        return da.from_array(x, chunks=(100, 5)), y, yc, "X (a dask array)"
    A = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None), check_finite=False)
    Y = bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(100, None))
    YC = bl.from_array(yc[:, None], tmp_path / "yc.zarr", chunks=(100, None))
    return A, Y, YC, A.url


def _refused(tmp_path: Path, kind: str, name: str, fit: Any) -> None:
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=r"NaN|infinity|infinite") as info:
        fit(str(work))
    if kind == "numpy":  # scikit-learn's check at entry, before anything is written
        assert not work.exists()
        return
    exc = info.value
    assert isinstance(exc, NonFiniteError)
    assert exc.array == name and exc.row == ROW and exc.col == COL
    if kind == "stored":
        assert exc.block == (ROW // 100, 0)
    else:  # refused while the temporary copy was written; the copy is gone
        assert not work.exists() or not any(work.iterdir())


@pytest.mark.parametrize("kind", ["numpy", "dask", "stored"])
@pytest.mark.parametrize("solver", LINEAR_SOLVERS)
def test_linear_regression_refuses_nan(tmp_path: Path, solver: str, kind: str) -> None:
    # lbfgs/owlqn on a stored NaN used to return an intercept-only model (objective nan,
    # n_iter 0); qr and auto raised LinAlgError; normal returned NaN coefficients.
    X, y, _, name = _data(tmp_path, kind)
    _refused(tmp_path, kind, name,
             lambda w: LinearRegression(solver=solver, work_dir=w).fit(X, y))


@pytest.mark.parametrize("kind", ["numpy", "dask", "stored"])
@pytest.mark.parametrize("solver", LOGISTIC_SOLVERS)
def test_logistic_regression_refuses_inf(tmp_path: Path, solver: str, kind: str) -> None:
    X, _, yc, name = _data(tmp_path, kind, bad=np.inf)
    _refused(tmp_path, kind, name,
             lambda w: LogisticRegression(solver=solver, work_dir=w).fit(X, yc))


@pytest.mark.parametrize("kind", ["numpy", "dask", "stored"])
def test_truncated_svd_refuses_nan(tmp_path: Path, kind: str) -> None:
    # The stored case raised LinAlgError: SVD did not converge.
    X, _, _, name = _data(tmp_path, kind)
    _refused(tmp_path, kind, name, lambda w: TruncatedSVD(2, work_dir=w).fit(X))


def test_stored_labels_with_nan_are_named(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((400, 3))
    y = x.sum(axis=1)
    y[321] = np.nan
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    Y = bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(100, None), check_finite=False)
    for solver in ("normal", "lbfgs"):
        with pytest.raises(NonFiniteError) as info:
            LinearRegression(solver=solver, work_dir=str(tmp_path / "w")).fit(X, Y)
        assert (info.value.array, info.value.block, info.value.row, info.value.col) == \
            (Y.url, (3, 0), 321, 0)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("solver", ["normal", "qr", "lbfgs"])
def test_overflow_of_finite_in_memory_data_is_refused(solver: str) -> None:
    # Finite, so scikit-learn's check passes; the first pass's sums overflow float64.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 3)) * 1e200
    with pytest.raises(NonFiniteError, match="overflowed float64"):
        LinearRegression(solver=solver).fit(x, rng.standard_normal(300))
