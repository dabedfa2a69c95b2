"""Finding NaN and infinity in blocks: a cheap test, and the first bad value's place.

:func:`all_finite` is the test every writer and every task output goes through, so
it is one read of the data with no temporary array: the sum of an array is finite
exactly when no element is NaN or infinite, unless finite elements overflowed the
sum, which the exact element test then tells apart. :func:`first_nonfinite` runs
only once something is known to be wrong, to name the row and column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from blocklin.errors import NonFiniteError

__all__ = ["all_finite", "check_block", "first_nonfinite"]


def _values(a: Any) -> np.ndarray:
    """The stored values of a dense array or a scipy.sparse matrix (its ``.data``)."""
    return np.asarray(a.data if sp.issparse(a) else a)


def all_finite(a: Any) -> bool:
    """Whether a dense array or scipy.sparse matrix holds no NaN or infinity.

    Integer and boolean arrays are always finite. Cost: one read of the values, no
    temporary (a second, exact pass only when finite values overflow their sum).
    """
    v = _values(a)
    if v.dtype.kind not in "fc":
        return True
    # IEEE arithmetic carries NaN and ±inf into the sum (inf - inf is NaN), so a
    # finite sum proves every element finite.
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(v, axis=None)
    return bool(np.isfinite(total)) or bool(np.isfinite(v).all())


def first_nonfinite(a: Any) -> tuple[int, ...] | None:
    """The index of the first NaN or infinite element in row-major order, or None.

    For a scipy.sparse matrix, the (row, column) of the first non-finite stored
    value. Meant for the failure path: it makes a boolean copy of the values.
    """
    if sp.issparse(a):
        csr = a.tocsr()
        bad = np.flatnonzero(~np.isfinite(csr.data)) if csr.dtype.kind in "fc" else ()
        if not len(bad):
            return None
        rows = np.searchsorted(csr.indptr, bad, side="right") - 1
        cols = csr.indices[bad]
        k = int(np.lexsort((cols, rows))[0])
        return int(rows[k]), int(cols[k])
    v = np.asarray(a)
    if v.dtype.kind not in "fc":
        return None
    where = np.argwhere(~np.isfinite(v))  # C order: the first row is the first element
    return tuple(int(i) for i in where[0]) if len(where) else None


def check_block(a: Any, array: str, block: tuple[int, ...], origin: tuple[int, ...],
                fix: str) -> None:
    """Raise :class:`NonFiniteError` if block ``block`` of ``array`` holds NaN or infinity.

    Parameters
    ----------
    a : numpy array or scipy.sparse matrix
        The block's values.
    array : str
        What to name in the error (the target array's URL, a source file).
    block : tuple of int
        The block's index in ``array``'s grid.
    origin : tuple of int
        Global index of the block's first element, to report global row and column.
    fix : str
        How to get past the refusal, appended to the message.
    """
    if all_finite(a):
        return
    local = first_nonfinite(a)
    row = col = None
    if local is not None and len(local) == 2:
        row, col = origin[0] + local[0], origin[1] + local[1]
    raise NonFiniteError(array, block, row, col, detail=fix)
