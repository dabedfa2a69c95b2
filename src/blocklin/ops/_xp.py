"""Array helpers of the block kernels, for any array namespace (numpy, CuPy, strict).

Kernels are written against the array API standard (:mod:`blocklin.plan.device`);
the few calls they need that the standard lacks are here, each the namespace's
native function where it has one (numpy, CuPy) and a standard form otherwise. Where
numpy's own call decides the bits (``einsum``'s summation order, LAPACK's routine),
numpy keeps it: the namespace dispatch never changes a CPU result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.special

from blocklin.plan.device import is_numpy, is_sparse, namespace, sparse_module

__all__ = ["as_dtype", "col_sumsq", "concat", "empty", "expit", "log_expit", "logsumexp_rows",
           "sumsq", "to_dense", "triu"]


def to_dense(x: Any) -> Any:
    """A sparse matrix densified on its device; dense arrays unchanged."""
    return x.toarray() if is_sparse(x) else x


def as_dtype(x: Any, dtype: str) -> Any:
    """Dense ``x`` as ``dtype`` (``"float64"``...) in its namespace; no copy when it is."""
    xp = namespace(x)
    return xp.astype(x, getattr(xp, dtype), copy=False)


def concat(parts: Sequence[Any], axis: int) -> Any:
    """Join blocks along ``axis`` (1: a row panel's column blocks, 0: stacked rows); CSR
    when any part is sparse (on the parts' device), else dense in their namespace."""
    if len(parts) == 1:
        return parts[0]
    sparse = [p for p in parts if is_sparse(p)]
    if sparse:
        mod = sparse_module(sparse[0])
        join = mod.hstack if axis == 1 else mod.vstack
        return mod.csr_matrix(join(list(parts), format="csr"))
    xp = namespace(*parts)
    return xp.concat(list(parts), axis=axis)


def triu(x: Any) -> Any:
    """The upper triangle of a 2-D array (zeros below the diagonal)."""
    xp = namespace(x)
    native = getattr(xp, "triu", None)
    if native is not None:
        return native(x)
    rows = xp.arange(x.shape[0])[:, None]
    cols = xp.arange(x.shape[1])[None, :]
    return xp.where(rows <= cols, x, xp.zeros_like(x))


def col_sumsq(x: Any) -> Any:
    """Σᵢ xᵢⱼ² per column (numpy: ``einsum``, whose bits the CPU results carry)."""
    return sumsq(x, 0)


def sumsq(x: Any, axis: int) -> Any:
    """Sums of squares of a 2-D array along ``axis`` (numpy: ``einsum``)."""
    xp = namespace(x)
    if is_numpy(xp):
        out: np.ndarray = np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", x, x)
        return out
    return xp.sum(x * x, axis=axis)


def empty(xp: Any, shape: tuple[int, ...], order: Literal["C", "F"] = "C") -> Any:
    """An uninitialised float64 array; ``order`` (numpy only: LAPACK's column-major)."""
    if is_numpy(xp):
        return np.empty(shape, order=order)
    return xp.empty(shape, dtype=xp.float64)


def expit(x: Any) -> Any:
    """The logistic function 1/(1 + e⁻ˣ) (numpy: scipy's; elsewhere a form that never
    overflows)."""
    xp = namespace(x)
    if is_numpy(xp):
        return scipy.special.expit(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_expit(x: Any) -> Any:
    """log(1/(1 + e⁻ˣ)) = min(x, 0) − log1p(e^−|x|), finite for every finite x."""
    xp = namespace(x)
    if is_numpy(xp):
        return scipy.special.log_expit(x)
    return xp.minimum(x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))


def logsumexp_rows(m: Any) -> Any:
    """log Σⱼ exp(mᵢⱼ) per row, shifted by the row maximum (numpy: scipy's)."""
    xp = namespace(m)
    if is_numpy(xp):
        return scipy.special.logsumexp(m, axis=1)
    top = xp.max(m, axis=1, keepdims=True)
    return top[:, 0] + xp.log(xp.sum(xp.exp(m - top), axis=1))
