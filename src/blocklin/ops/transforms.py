"""Lazy centering and scaling: a per-column affine transform fused into later reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.errors import InputValueError, ShapeMismatchError
from blocklin.ops.inputs import MatrixView, as_matrix
from blocklin.ops.stats import COUNT, M2, MEAN, column_stats_node
from blocklin.plan.graph import Affine, StageInput, Task, TaskContext, make_stage

__all__ = ["center", "scale", "standardize"]


@dataclass(frozen=True)
class AffineFromStats:
    """Shift and scale rows from a column summary."""

    with_mean: bool
    with_std: bool
    ddof: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        s = blocks[0][0]
        n = s[COUNT, 0]
        shift = s[MEAN] if self.with_mean else np.zeros_like(s[MEAN])
        if self.with_std:
            std = np.sqrt(s[M2] / max(n - self.ddof, 1))
            # As MLlib's StandardScaler: a constant column scales to 0, not to inf.
            scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
        else:
            scale = np.ones_like(shift)
        return np.stack([shift, scale])


@dataclass(frozen=True, eq=False)
class ConstantParams:
    """Given shift and scale vectors."""

    values: np.ndarray

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        return self.values


def standardize(A: Any, with_mean: bool = True, with_std: bool = True, *, ddof: int = 1,
                shift: np.ndarray | None = None, scale: np.ndarray | None = None) -> MatrixView:
    """A lazy view ``(A - shift) * scale`` that later operators apply as they read blocks.

    Parameters
    ----------
    A : BlockMatrix, path or lazy matrix
    with_mean, with_std : bool
        Subtract column means; divide by column standard deviations (computed in
        one extra pass, shared with other operators of the same compute).
    ddof : int
        Delta degrees of freedom of the standard deviation (1: unbiased, as MLlib).
    shift, scale : numpy arrays, optional
        Explicit vectors instead of computed statistics.

    Returns
    -------
    MatrixView
        Accepted by every operator in place of a matrix; no centered copy is written.

    Notes
    -----
    Costs one pass for the statistics (none with explicit vectors); the transform
    itself costs a block-sized temporary per task in the consuming operator.

    Scaling: with the default ``ddof=1``, ``gram(standardize(A))`` is ``(n - 1)`` times
    the correlation matrix of A's columns (divide by ``n - 1`` for the correlations),
    and ``gram(center(A))`` is ``(n - 1)`` times their covariance.
    """
    m = as_matrix(A)
    if m.input.transform is not None:
        raise InputValueError("A is already a transformed view; standardize the stored matrix")
    n = m.shape[1]
    if shift is not None or scale is not None:
        sh = np.zeros(n) if shift is None else np.asarray(shift, dtype=np.float64)
        sc = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
        if sh.shape != (n,) or sc.shape != (n,):
            raise ShapeMismatchError(f"shift and scale must have shape ({n},); got {sh.shape} and "
                                     f"{sc.shape}")
        values = np.stack([sh, sc])
        stage = make_stage("affine/constant", ConstantParams(values), [], [Task(out=(0, 0), reads=())],
                           shape=(2, n), chunks=(2, n), dtype="float64", params={"values": values})
        plan = m.plan.add(stage)
    else:
        stats = column_stats_node(A)
        stage = make_stage("affine/from_stats", AffineFromStats(with_mean, with_std, ddof),
                           [StageInput(stats.output)], [Task(out=(0, 0), reads=((0, (0, 0, 0)),))],
                           shape=(2, n), chunks=(2, n), dtype="float64",
                           params={"with_mean": with_mean, "with_std": with_std, "ddof": ddof})
        plan = m.plan.merge(stats.plan).add(stage)
    return MatrixView(plan, m.node, Affine(stage.output))


def center(A: Any, mean: np.ndarray | None = None) -> MatrixView:
    """A lazy view of A with column means subtracted (see :func:`standardize`)."""
    if mean is not None:
        return standardize(A, shift=mean)
    return standardize(A, with_mean=True, with_std=False)


def scale(A: Any, std: np.ndarray | None = None, *, ddof: int = 1) -> MatrixView:
    """A lazy view of A with columns divided by their standard deviation (no centering)."""
    if std is not None:
        s = np.asarray(std, dtype=np.float64)
        return standardize(A, shift=None, scale=np.divide(1.0, s, out=np.zeros_like(s), where=s > 0))
    return standardize(A, with_mean=False, with_std=True, ddof=ddof)
