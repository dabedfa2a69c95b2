"""Driver-side solvers: small-state optimizers fed by one pass over the data per evaluation.

* :func:`solve_quadratic` -- the normal equations from the statistics (Cholesky on the
  equilibrated system, eigen-decomposition fallback for singular systems).
* :func:`coordinate_descent` -- elastic net on a Gram matrix (no passes: the Gram
  matrix is already in memory).
* L-BFGS and OWL-QN live in :mod:`blocklin.ml._quasi_newton`.

References
----------
J. Friedman, T. Hastie, R. Tibshirani. Regularization paths for generalized linear
models via coordinate descent. J. Stat. Softw. 33(1), 2010.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from blocklin.errors import InputValueError, NonFiniteError, ShapeMismatchError
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import ComputeOptions
from blocklin.executors.progress import local_pass
from blocklin.ml._validation import _is_dask, is_stored, stored_matrix
from blocklin.ops.glm.passes import PassSpec, build_pass, run_local
from blocklin.storage.finite import all_finite

__all__ = [
    "QuadSolution",
    "TrainData",
    "coordinate_descent",
    "min_norm",
    "range_basis",
    "solve_quadratic",
    "training_data",
]

#: Sweeps coordinate descent may make; sweeps cost no passes over the data.
CD_MAX_SWEEPS = 20_000
#: Coordinate descent stops when no scaled coordinate moves by more than this.
CD_TOL = 1e-13


@dataclass
class QuadSolution:
    """Solution of a penalized quadratic plus how it was obtained."""

    x: np.ndarray
    rcond: float
    method: str
    iterations: int = 0
    history: list[float] = field(default_factory=list)


def solve_quadratic(A: np.ndarray, b: np.ndarray, l2: np.ndarray) -> QuadSolution:
    """Minimize ½xᵀ(A + diag(l2))x − bᵀx by Cholesky, falling back for singular systems.

    Coordinates with a zero diagonal (constant features after centering, unpenalized)
    get 0, as MLlib does. The rest is equilibrated by its diagonal, so ``rcond``
    (LAPACK's 1-norm reciprocal condition estimate) does not depend on column units.
    A system that is not numerically positive definite is solved through a truncated
    eigen-decomposition: the minimum-norm solution.
    """
    M = A + np.diag(l2)
    dg = np.diag(M).copy()
    active = dg > 0
    x = np.zeros_like(b, dtype=np.float64)
    if not active.any():
        return QuadSolution(x, 1.0, "cholesky")
    idx = np.flatnonzero(active)
    s = 1.0 / np.sqrt(dg[idx])
    Ms = M[np.ix_(idx, idx)] * s[:, None] * s[None, :]
    bs = b[idx] * (s[:, None] if b.ndim == 2 else s)
    c, info = scipy.linalg.lapack.dpotrf(Ms, lower=0, clean=1)
    rcond = 0.0
    if info == 0:
        rcond, _ = scipy.linalg.lapack.dpocon(c, np.abs(Ms).sum(axis=0).max())
    if rcond > 1e2 * np.finfo(float).eps:
        xs = scipy.linalg.cho_solve((c, False), bs)
        method = "cholesky"
    else:
        evals, evecs = np.linalg.eigh(Ms)
        cut = evals.max(initial=0.0) * Ms.shape[0] * np.finfo(float).eps
        inv = np.where(evals > cut, 1.0 / np.where(evals > cut, evals, 1.0), 0.0)
        proj = evecs.T @ bs
        xs = evecs @ (proj * (inv[:, None] if proj.ndim == 2 else inv))
        # That is the least-norm solution of the equilibrated system; the null space in
        # original units (Ms v = 0 ⇔ M (s∘v) = 0) moves it to the least-norm one there.
        xs = xs * (s[:, None] if xs.ndim == 2 else s)
        x[idx] = min_norm(xs, evecs[:, evals <= cut] * s[:, None])
        return QuadSolution(x, float(rcond), "eigh")
    x[idx] = xs * (s[:, None] if xs.ndim == 2 else s)
    return QuadSolution(x, float(rcond), method)


def range_basis(H: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis of the numerical range of a PSD matrix; None if nonsingular.

    The Hessians of logistic losses without a penalty are singular for structural
    reasons: more features than rows of positive weight, and for the softmax its
    invariance to a shift common to all classes. Their null space does not move with
    the coefficients (every probability stays positive), so ``LogisticRegression``'s
    Newton solver fixes this basis at its first iteration and solves each later step
    within it. A truncated eigen-solve of every Hessian
    instead decides anew, from rounding, whether an eigenvalue near its cut is noise;
    two fits of the same objective (integer weights against repeated rows) then part
    by 1e-3. The decision here is made once, on the Hessian at the start, where the
    noise sits 10¹³ below the smallest genuine eigenvalue of ordinary data.
    """
    dg = np.diag(H)
    active = dg > 0
    idx = np.flatnonzero(active)
    s = 1.0 / np.sqrt(dg[idx])
    Ms = H[np.ix_(idx, idx)] * s[:, None] * s[None, :]
    if active.all():
        c, info = scipy.linalg.lapack.dpotrf(Ms, lower=0, clean=1)
        if info == 0:
            rcond, _ = scipy.linalg.lapack.dpocon(c, np.abs(Ms).sum(axis=0).max())
            if rcond > 1e2 * np.finfo(float).eps:
                return None
    evals, evecs = np.linalg.eigh(Ms)
    keep = evals > evals.max(initial=0.0) * Ms.shape[0] * np.finfo(float).eps
    V = np.zeros((H.shape[0], int(keep.sum())))
    # range(S⁻¹·Ms·S⁻¹) = S⁻¹·range(Ms)
    V[idx] = evecs[:, keep] / s[:, None]
    basis: np.ndarray = np.linalg.qr(V)[0]
    return basis


def min_norm(x: np.ndarray, null: np.ndarray, counted: int | None = None) -> np.ndarray:
    """The solution ``x + N·t`` of least norm over its first ``counted`` entries.

    x is any solution of a singular system and the columns of N span its null space, so
    every solution is x + N·t; the least-norm one (scikit-learn's and LAPACK's answer)
    takes t minimizing ‖(x + N·t)[:counted]‖. ``counted`` leaves an unpenalized
    intercept out of the norm.
    """
    if null.shape[1] == 0:
        return x
    rows = slice(None) if counted is None else slice(0, counted)
    t = np.linalg.lstsq(null[rows], -x[rows], rcond=None)[0]
    out: np.ndarray = x + null @ t
    return out


def coordinate_descent(A: np.ndarray, b: np.ndarray, l1: np.ndarray, l2: np.ndarray,
                       x0: np.ndarray | None = None, max_sweeps: int = CD_MAX_SWEEPS,
                       tol: float = CD_TOL) -> QuadSolution:
    """Minimize ½xᵀAx − bᵀx + Σ l1ⱼ|xⱼ| + ½Σ l2ⱼxⱼ² by cyclic coordinate descent.

    Notes
    -----
    Works on the p × p matrix only: O(p²) per sweep, no passes over the data. Stops
    when no coordinate moves by more than ``tol`` in the metric of A's diagonal,
    relative to the size of the solution.
    """
    p = A.shape[0]
    x = np.zeros(p) if x0 is None else np.array(x0, dtype=np.float64)
    grad = A @ x - b
    diag = np.diag(A).copy()
    denom = diag + l2
    scale = np.sqrt(np.maximum(diag, 0.0))
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - sweeps is reported
        biggest = 0.0
        for j in range(p):
            if denom[j] <= 0:
                continue
            old = x[j]
            rho = diag[j] * old - grad[j]
            new = np.sign(rho) * max(abs(rho) - l1[j], 0.0) / denom[j]
            if new != old:
                grad += A[:, j] * (new - old)
                x[j] = new
                biggest = max(biggest, abs(new - old) * scale[j])
        size = float(np.max(np.abs(x) * scale, initial=0.0))
        if biggest <= tol * max(size, 1e-300):
            break
    return QuadSolution(x, 0.0, "coordinate_descent", sweeps)


# --------------------------------------------------------------------------- passes
@dataclass
class TrainData:
    """Training data as the solvers see it: something that runs one pass and counts passes.

    In-memory data (numpy, scipy sparse) runs the block kernels in process over fixed
    chunks of ``chunk_rows`` rows; stored data (BlockMatrix) runs them as a plan on the
    configured executor. Both reduce in the same fixed-order tree.
    """

    n_rows: int
    n_features: int
    local: tuple[Any, np.ndarray, np.ndarray | None] | None = None
    stored: tuple[Any, Any, Any] | None = None
    compute_options: ComputeOptions = field(default_factory=ComputeOptions)
    chunk_rows: int = 65_536
    passes: int = 0
    cache: bool = False  # passes keep decoded blocks in worker memory (see ``cached``)

    @contextmanager
    def cached(self) -> Iterator[TrainData]:
        """Passes inside keep the decoded blocks of X, y and w in worker memory.

        For solvers that pass over the data many times: each pass runs with
        ``cache_bytes`` (the user's ``compute_options`` value, else ``"auto"``; see
        :func:`blocklin.compute`), so later passes take blocks from the workers' block
        caches instead of re-reading zarr (blocks that do not fit are re-read). On
        exit this process's cache (the threaded scheduler's) is emptied; worker
        processes free theirs at the next compute run without a cache.
        """
        self.cache = True
        try:
            yield self
        finally:
            self.cache = False
            if self.stored is not None:
                from blocklin.storage.blockcache import process_cache

                process_cache().clear()

    @property
    def _options(self) -> ComputeOptions:
        if self.cache and self.compute_options.cache_bytes is None:
            return self.compute_options.replace(cache_bytes="auto")
        return self.compute_options

    @property
    def has_weights(self) -> bool:
        if self.local is not None:
            return self.local[2] is not None
        return self.stored is not None and self.stored[2] is not None

    @property
    def sparse(self) -> bool:
        """Whether X is CSR (in memory or stored): its passes keep the panels sparse."""
        if self.local is not None:
            return bool(sp.issparse(self.local[0]))
        return self.stored is not None and getattr(self.stored[0].meta, "format", "") == "csr"

    @property
    def x_col_blocks(self) -> int:
        if self.stored is None:
            return 1
        return int(self.stored[0].nblocks[1])

    def run(self, spec: PassSpec) -> np.ndarray:
        """Run one pass and return the reduced partial (shape ``spec.part_shape``)."""
        self.passes += 1
        if self.local is not None:
            return self._run_local(spec)
        if self.stored is None:
            raise RuntimeError("TrainData holds no data")
        from blocklin.executors.api import compute

        X, Y, W = self.stored
        value = compute(build_pass(spec, X, Y, W), compute_options=self._options)[0]
        return np.asarray(value)

    def run_many(self, specs: list[PassSpec]) -> list[np.ndarray]:
        """Run several passes over the same data as one pass (fused into one plan)."""
        self.passes += 1
        if self.local is not None:
            return [self._run_local(s) for s in specs]
        if self.stored is None:
            raise RuntimeError("TrainData holds no data")
        from blocklin.executors.api import compute

        X, Y, W = self.stored
        return list(compute(*(build_pass(s, X, Y, W) for s in specs), compute_options=self._options))

    def _run_local(self, spec: PassSpec) -> np.ndarray:
        """A pass over the in-memory data, refused when it overflows.

        The data were checked finite at entry, so a non-finite result (checked on the
        small reduced partial) can only be an overflow; stored data get the same check
        task by task (:mod:`blocklin.plan.finite`).
        """
        assert self.local is not None
        x, y, w = self.local
        with local_pass(spec.op):  # one "task": the in-memory pass, for progress
            out = run_local(spec, x, y, w, self.chunk_rows)
        if not all_finite(out):
            raise NonFiniteError(f"the {spec.op} pass result", detail=(
                "computed from finite in-memory X, y and sample weights: the arithmetic "
                "overflowed float64. Rescale the data (e.g. divide large columns by a "
                "constant)"))
        return out

    def run_lazy(self, lazy: Lazy) -> Any:
        """Run another operator's lazy result over the stored data (one pass)."""
        from blocklin.executors.api import compute

        self.passes += 1
        return compute(lazy, compute_options=self._options)[0]


@contextmanager
def training_data(X: Any, y: np.ndarray | Any, sample_weight: Any,
                  compute_options: ComputeOptions) -> Iterator[TrainData]:
    """Yield :class:`TrainData` for validated X (in memory or BlockMatrix/dask) and labels.

    ``y`` is a numpy array (already encoded for classifiers) or a stored column. For
    stored X, in-memory labels and weights are written row-aligned with X's blocks to
    temporary arrays removed when the block ends.
    """
    w = None if sample_weight is None else _weights(sample_weight, _nrows(X))
    if not (is_stored(X) or _is_dask(X)):
        yy = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
        yield TrainData(X.shape[0], X.shape[1], local=(X, yy, w),
                        compute_options=compute_options)
        return
    work = compute_options.work_dir
    with ExitStack() as stack:
        A = stack.enter_context(stored_matrix(X, work_dir=work, name="X"))
        rows = (A.chunks[0], None)
        Y = stack.enter_context(stored_matrix(y, work_dir=work, chunks=rows, name="y"))
        Wt = None if w is None else stack.enter_context(
            stored_matrix(w, work_dir=work, chunks=rows, name="w"))
        yield TrainData(A.shape[0], A.shape[1], stored=(A, Y, Wt),
                        compute_options=compute_options)


def _nrows(X: Any) -> int:
    return int(X.shape[0])


def _weights(sample_weight: Any, n: int) -> np.ndarray:
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ShapeMismatchError(f"sample_weight has {w.shape[0]} entries; X has {n} rows")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputValueError("sample_weight must be finite and non-negative")
    if not w.sum() > 0:
        raise InputValueError("sample_weight are all zero: the weights need a positive sum")
    return w
