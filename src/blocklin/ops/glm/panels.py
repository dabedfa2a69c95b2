"""Reading a GLM pass's row panel: X (CSR kept sparse, anything else dense float64), the
label and the weights, and the ``[X 1 y]`` design buffer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from blocklin.ops._xp import (
    as_dtype,
    empty,
    to_dense,
)
from blocklin.ops.glm.sparse import csr_panel
from blocklin.ops.inputs import (
    hstack_panel,
)
from blocklin.plan.device import namespace


def dense(block: Any) -> np.ndarray:
    """A block as dense float64 on its device (numpy, CuPy or another namespace)."""
    out: np.ndarray = as_dtype(to_dense(block), "float64")
    return out


def read_panel(blocks: Sequence[Any], nx: int, has_w: bool) -> tuple[Any, np.ndarray,
                                                                 np.ndarray | None]:
    """X's row panel (scipy CSR stays CSR, float64; anything else dense float64), y, w."""
    x = csr_panel(blocks, nx)
    if x is None:
        x = dense(hstack_panel(blocks[:nx]))
    y, w = label_weight(blocks, nx, has_w)
    return x, y, w


def label_weight(blocks: Sequence[Any], nx: int,
                  has_w: bool) -> tuple[np.ndarray, np.ndarray | None]:
    y = dense(blocks[nx])
    w = None
    if has_w:
        wb = dense(blocks[nx + 1])
        w = namespace(wb).reshape(wb, (-1,))
    return y, w


def design(blocks: Sequence[Any], nx: int, intercept: bool,
            y: np.ndarray | None = None, order: Literal["C", "F"] = "C") -> np.ndarray:
    """``[X 1 y]`` (ones column if ``intercept``, y if given) as one float64 buffer.

    X's column blocks are written straight into the buffer (sparse ones densified),
    so no joined or converted copy of the panel is made on the way; ``order="F"`` gives
    the column-major buffer LAPACK factors in place.
    """
    p = sum(b.shape[1] for b in blocks[:nx])
    c = p + int(intercept) + (0 if y is None else y.shape[1])
    xp = namespace(*blocks[:nx])
    z: np.ndarray = empty(xp, (blocks[0].shape[0], c), order)
    col = 0
    for b in blocks[:nx]:
        z[:, col:col + b.shape[1]] = as_dtype(to_dense(b), "float64")
        col += b.shape[1]
    if intercept:
        z[:, p] = 1.0
    if y is not None:
        z[:, p + int(intercept):] = y
    return z

