"""Input handling shared by the estimators: numpy, dask, BlockMatrix or zarr path → BlockMatrix.

In-memory inputs (numpy arrays, array-likes, dask arrays) are validated as
scikit-learn does (``validate_data``: finite, numeric, 2-D, ``n_features_in_``) and
written to a private temporary BlockMatrix under the work directory, removed when
the ``with`` block ends; a dask array's values are checked as it is written. Stored
inputs (BlockMatrix, zarr path) are used in place: only their shape and dtype are
checked, no pass over the data; NaN or infinity in them raises
:class:`~blocklin.errors.NonFiniteError` from the first pass that reads them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from blocklin.config import default_work_dir
from blocklin.errors import InputDtypeError, InputValueError, NonFiniteError, ShapeMismatchError
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.leases import scratch_folder

__all__ = ["is_stored", "n_rows", "open_stored", "stored_matrix", "validate_features"]


def is_stored(X: Any) -> bool:
    """True for inputs read in place (BlockMatrix, zarr path)."""
    return isinstance(X, BlockMatrix | str | os.PathLike)


def _is_dask(X: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a core dependency
        return False
    return isinstance(X, da.Array)


def open_stored(X: Any) -> BlockMatrix:
    """A stored input (see :func:`is_stored`) as a BlockMatrix; no pass over the data."""
    if isinstance(X, BlockMatrix):
        return X
    return open_matrix(X)


def validate_features(estimator: Any, X: Any, *, reset: bool, accept_sparse: bool = False) -> Any:
    """Check X like scikit-learn's ``validate_data`` and set/check ``n_features_in_``.

    Returns the validated in-memory array (float64 numpy; CSR with ``accept_sparse``)
    or the opened BlockMatrix / the dask array unchanged. Raises
    ``ValueError``/``TypeError`` subclasses that scikit-learn's checks expect (its
    own messages for in-memory data).
    """
    if is_stored(X) or _is_dask(X):
        A = open_stored(X) if is_stored(X) else X
        if A.ndim != 2:
            raise InputValueError(f"Expected 2D array, got an array of shape {A.shape}")
        if np.dtype(A.dtype).kind not in "fiub":
            raise InputDtypeError(f"X must be real-valued; got dtype {A.dtype}")
        _check_n_features(estimator, int(A.shape[1]), reset)
        return A
    from sklearn.utils.validation import validate_data

    return validate_data(estimator, X, reset=reset, dtype=[np.float64, np.float32],
                         ensure_min_samples=1, accept_sparse="csr" if accept_sparse else False)


def _check_n_features(estimator: Any, n: int, reset: bool) -> None:
    if reset:
        estimator.n_features_in_ = n
        return
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and expected != n:
        raise ShapeMismatchError(f"X has {n} features, but {type(estimator).__name__} is "
                                 f"expecting {expected} features as input.")


def n_rows(X: Any) -> int:
    """Number of rows of any accepted input."""
    return int(open_stored(X).shape[0] if is_stored(X) else X.shape[0])


@contextmanager
def stored_matrix(X: Any, *, work_dir: str | os.PathLike[str] | None = None,
                  chunks: Any = None, name: str = "X") -> Iterator[BlockMatrix]:
    """Yield X as a BlockMatrix; in-memory inputs go to a temporary array removed afterwards.

    Parameters
    ----------
    X : numpy array, array-like, scipy.sparse matrix, dask array, BlockMatrix or zarr path
        Already validated (see :func:`validate_features`). 1-D arrays become a column;
        sparse matrices are stored as CSR row blocks.
    work_dir : path, optional
        Local directory holding the temporary array (default: blocklin's work dir).
        It must be reachable from the workers when computing on a cluster.
    chunks : as :func:`blocklin.from_array`
        Block shape of the temporary array (give a matrix's row chunks to make a
        label vector row-aligned with it). Stored inputs keep their own.
    name : str
        Used in the temporary directory's name.

    Notes
    -----
    Writing an in-memory input is one pass over it; a stored input is not touched.
    The temporary array is removed even if the body raises. NaN or infinity in a
    dask array raises :class:`~blocklin.errors.NonFiniteError` (a ``ValueError``)
    naming ``name``, the block, row and column; stored inputs are checked inside the
    passes that read them.
    """
    if is_stored(X):
        yield open_stored(X)
        return
    arr = X if _is_dask(X) or hasattr(X, "tocsr") else np.asarray(X)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    # A leased scratch folder: `blocklin gc` leaves it alone while the fit runs.
    with scratch_folder(work_dir if work_dir is not None else default_work_dir(),
                        f"input-{name}-") as tmp:
        yield _store_input(arr, os.path.join(tmp, f"{name}.zarr"), chunks, name)


def _store_input(arr: Any, path: str, chunks: Any, name: str) -> BlockMatrix:
    """Write an in-memory input; a dask array's NaN or infinity is refused as it is written."""
    # numpy and scipy inputs were checked whole by scikit-learn's validation; a dask
    # array is checked block by block in the one pass that writes it.
    is_dask = _is_dask(arr)
    try:
        return from_array(arr, path, chunks=chunks, check_finite=is_dask)
    except NonFiniteError as exc:
        raise NonFiniteError(f"{name} (a dask array)", exc.block, exc.row, exc.col,
                             detail="remove or impute them before fitting") from None
