"""Pieces shared by the linear and logistic estimators: parameters, statistics, penalties,
the QR solve and the sketch-preconditioned solve (the L-BFGS/OWL-QN fit: ``_iterative``)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg

from blocklin.config import default_work_dir
from blocklin.errors import InputDtypeError, InputValueError, ShapeMismatchError
from blocklin.executors.progress import local_pass
from blocklin.executors.progress import step as progress_step
from blocklin.ml._solvers import TrainData, min_norm
from blocklin.ml._validation import (
    _is_dask,
    is_stored,
    open_stored,
    stored_matrix,
    validate_features,
)
from blocklin.ops.glm.conditioning import Conditioning, conditioning
from blocklin.ops.glm.lsqr import lsqr_spec
from blocklin.ops.glm.moments import moments_spec

__all__ = [
    "Moments",
    "QRSolve",
    "check_common_params",
    "compute_options",
    "features",
    "labels_1d",
    "penalties",
    "predict_margin",
    "qr_solve",
    "sketch_solve",
]


# --------------------------------------------------------------------------- parameters
def _number(name: str, value: Any, lo: float, hi: float = np.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputDtypeError(f"{name} must be a real number; got {value!r}")
    if not (lo <= float(value) <= hi):
        raise InputValueError(f"{name} must be in [{lo}, {hi}]; got {value!r}")


def check_common_params(est: Any) -> None:
    """Validate the parameters both estimators share (before any pass)."""
    _number("reg_param", est.reg_param, 0.0)
    _number("elastic_net_param", est.elastic_net_param, 0.0, 1.0)
    _number("tol", est.tol, 0.0)
    if isinstance(est.max_iter, bool) or not isinstance(est.max_iter, numbers.Integral):
        raise InputDtypeError(f"max_iter must be an integer; got {est.max_iter!r}")
    if est.max_iter < 0:
        raise InputValueError(f"max_iter must be >= 0; got {est.max_iter}")
    for name in ("fit_intercept", "standardization"):
        if not isinstance(getattr(est, name), bool | np.bool_):
            raise InputDtypeError(f"{name} must be a bool; got {getattr(est, name)!r}")
    if est.compute_options is not None and not isinstance(est.compute_options, dict):
        raise InputDtypeError("compute_options must be a dict of blocklin.compute keywords")


def compute_options(est: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"executor": est.executor}
    if est.work_dir is not None:
        opts["work_dir"] = est.work_dir
    opts.update(est.compute_options or {})
    from blocklin.storage.stores import StorageOptions

    stored = getattr(est, "storage_options", None)
    if stored:
        # The work dir's (and out= targets') options, unless compute_options names some.
        opts.setdefault("storage_options", StorageOptions(stored).as_dict())
    return opts


def features(est: Any, X: Any, *, reset: bool) -> Any:
    """Validate X (see :func:`blocklin.ml._validation.validate_features`); scipy sparse
    matrices are accepted in memory as CSR (the kernels keep each chunk sparse)."""
    if hasattr(X, "tocsr") and hasattr(X, "nnz"):
        from sklearn.utils.validation import validate_data

        return validate_data(est, X, reset=reset, accept_sparse=["csr", "csc"],
                             dtype=[np.float64, np.float32]).tocsr()
    return validate_features(est, X, reset=reset)


def labels_1d(y: Any, X: Any) -> Any:
    """Validate labels: a finite numeric n-vector (or a stored column when X is stored)."""
    n = int(X.shape[0])
    if is_stored(y):
        Y = open_stored(y)
        if Y.shape != (n, 1):
            raise ShapeMismatchError(f"y must be an {n} x 1 column; got {Y.shape}")
        if is_stored(X):
            return Y
        y = Y.to_numpy()
    from sklearn.utils import check_array

    if y is None:
        raise InputValueError("requires y to be passed, but the target y is None")
    arr = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
    if arr.ndim == 2 and arr.shape[1] == 1:
        from sklearn.utils import column_or_1d

        arr = column_or_1d(arr, warn=True)  # scikit-learn's DataConversionWarning
    if arr.ndim != 1:
        raise InputValueError(f"y must be one column; got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ShapeMismatchError(f"X has {n} rows but y has {arr.shape[0]}")
    return arr


# --------------------------------------------------------------------------- statistics
@dataclass
class Moments:
    """Unpacked weighted moments of ``[X y]`` (see :func:`blocklin.ops.glm.normal_stats`)."""

    W: float
    W2: float
    n: int
    mean: np.ndarray
    #: (d, d) centered co-moments; a diagonal-only summary holds none (shape (0, 0)):
    #: a d × d matrix of its diagonal would be 20 GB at 50,000 features.
    C: np.ndarray
    full: bool
    diag: np.ndarray  # (d,) the co-moments' diagonal, Σw(z − μ)²

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_packed(cls, packed: np.ndarray, d: int) -> Moments:
        full = packed.shape[0] == d + 2 and d > 1
        if full:
            C = np.array(packed[2:2 + d, :d])
            diag = np.diag(C).copy()
        else:
            C, diag = np.zeros((0, 0)), packed[2, :d].copy()
        return cls(float(packed[0, 0]), float(packed[0, 1]), int(packed[0, 2]),
                   packed[1, :d].copy(), C, full, diag)

    def std(self) -> np.ndarray:
        """Unbiased weighted standard deviations (MLlib's Summarizer)."""
        denom = self.W - self.W2 / self.W
        if denom <= 0:
            denom = self.W
        out: np.ndarray = np.sqrt(np.maximum(self.diag, 0.0) / denom)
        return out

    def inverse_design(self, fit_intercept: bool) -> np.ndarray:
        """(ZᵀWZ)⁻¹ for Z = [X 1] (or X), from the centered statistics (pseudo-inverse)."""
        p = self.d - 1
        Cxx, mx = self.C[:p, :p], self.mean[:p]
        if not fit_intercept:
            return _pinvh(Cxx + self.W * np.outer(mx, mx))
        inv = _pinvh(Cxx)
        out = np.empty((p + 1, p + 1))
        out[:p, :p] = inv
        out[:p, p] = out[p, :p] = -inv @ mx
        out[p, p] = 1.0 / self.W + mx @ inv @ mx
        return out


def _pinvh(M: np.ndarray) -> np.ndarray:
    dg = np.diag(M)
    s = np.where(dg > 0, 1.0 / np.sqrt(np.where(dg > 0, dg, 1.0)), 0.0)
    scaled = M * s[:, None] * s[None, :]
    inv = _cholesky_inverse(scaled)
    if inv is None:
        inv = scipy.linalg.pinvh(scaled)
    return inv * s[:, None] * s[None, :]


#: Below this ratio of the Cholesky factor's smallest to largest diagonal entry the
#: design is treated as numerically singular and inverted through pinvh's cut-off.
_CHOL_RCOND = 1e-7


def _cholesky_inverse(M: np.ndarray) -> np.ndarray | None:
    """Inverse of a well-conditioned SPD matrix through Cholesky (an eigh costs 5×)."""
    if M.size == 0:
        return None
    try:
        c = scipy.linalg.cholesky(M, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    dg = np.abs(np.diag(c))
    if dg.min() <= _CHOL_RCOND * dg.max():
        return None
    inv, info = scipy.linalg.lapack.dpotri(c, lower=0)
    if info != 0:
        return None
    out: np.ndarray = np.triu(inv) + np.triu(inv, 1).T
    return out


def penalties(est: Any, sx: np.ndarray, sy: float, y_mean_abs: float) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Per-coefficient L1 and L2 weights (per unit weight) for MLlib's options."""
    lam, alpha = float(est.reg_param), float(est.elastic_net_param)
    l1 = np.full(sx.shape[0], lam * alpha)
    l2 = np.full(sx.shape[0], lam * (1.0 - alpha))
    if est.standardization:
        l1 = l1 * sx
        l2 = l2 * sx**2
    if getattr(est, "label_scaling", "none") == "mllib":
        # MLlib fits on y/σ_y with effective λ/σ_y; on the original scale only the L2
        # term changes (divided by σ_y). A constant label uses |ȳ| as MLlib does.
        ystd = sy if sy > 0 else y_mean_abs
        if ystd > 0:
            l2 = l2 / ystd
    return l1, l2


def column_moments(est: Any, data: TrainData) -> tuple[Moments, np.ndarray, np.ndarray,
                                                       np.ndarray]:
    """One pass for the weighted means and standard deviations of ``[X y]``; returns the
    moments, the standard deviations and the per-feature L1 and L2 penalties."""
    p = data.n_features
    with progress_step("column moments"):
        mom = Moments.from_packed(data.run(moments_spec(p, 1, data.has_weights,
                                                        data.x_col_blocks, False)), p + 1)
    sd = mom.std()
    l1, l2 = penalties(est, sd[:p], float(sd[p]), abs(float(mom.mean[p])))
    return mom, sd, l1, l2


# --------------------------------------------------------------------------- QR
#: A TSQR factor whose column-equilibrated singular values fall below this fraction of
#: the largest (times k) is rank deficient: exact linear dependence leaves σ of a few
#: units of rounding, while the ill-conditioned designs QR must solve (NIST's Filip:
#: 2·10⁻¹⁰) sit far above it.
QR_RANK_RCOND = 10 * np.finfo(float).eps


class QRSolve(NamedTuple):
    """What :func:`qr_solve` derives from a TSQR factor."""

    beta: np.ndarray
    cov: np.ndarray  # (ZᵀWZ)⁻¹
    objective: float
    T: np.ndarray  # triangular factor of the penalized system: TᵀT = ZᵀWZ + W·diag(l2)
    deficient: bool
    cond: Conditioning  # exact 2-norm ‖T‖ and κ(T), T scaled to unit columns


def qr_solve(R: np.ndarray, k: int, l2: np.ndarray, W: float) -> QRSolve:
    """Solve from the R of √w·[Z y] (Z with k columns): β, (ZᵀWZ)⁻¹, objective, the
    triangular factor T of the penalized system, whether T is rank deficient, and T's
    conditioning (from the singular values the rank test computes anyway).

    Ridge penalties are added by stacking √(W·l2)·I under R (no normal equations).
    A rank-deficient T (equilibrated singular values below k·``QR_RANK_RCOND`` of the
    largest) gives the least-squares solution of least norm over the features (the
    intercept, last, left out of the norm), as scikit-learn's.
    """
    R11, r12, r22 = R[:k, :k], R[:k, k], R[k, k]
    p = l2.shape[0]
    pen = np.zeros(k)
    pen[:p] = np.sqrt(W * l2)
    T, rhs = R11, r12
    if np.any(pen > 0):
        q, T = scipy.linalg.qr(np.vstack([R11, np.diag(pen)]), mode="economic")
        rhs = q.T @ np.concatenate([r12, np.zeros(k)])
    s = np.linalg.norm(T, axis=0)
    s = np.where(s > 0, s, 1.0)
    # Singular values only (a sixth of a full SVD's work); the vectors only when T is
    # rank deficient and needs them.
    sv = np.linalg.svd(T / s, compute_uv=False)
    keep = sv > k * QR_RANK_RCOND * sv.max(initial=0.0)
    deficient = not keep.all()
    if not deficient:
        beta = scipy.linalg.solve_triangular(T, rhs)
    else:
        U, sv, Vt = np.linalg.svd(T / s)
        keep = sv > k * QR_RANK_RCOND * sv.max(initial=0.0)
        beta = (Vt[keep].T @ ((U[:, keep].T @ rhs) / sv[keep])) / s
        beta = min_norm(beta, Vt[~keep].T / s[:, None], counted=p)
    resid = R11 @ beta - r12
    obj = 0.5 * (resid @ resid + r22**2) / W + 0.5 * float(l2 @ beta[:p] ** 2)
    return QRSolve(beta, _inverse_gram(R11), float(obj), T, deficient, conditioning(T, sv))


def _inverse_gram(R: np.ndarray) -> np.ndarray:
    """(RᵀR)⁻¹ from upper-triangular R: LAPACK ``dpotri`` (R is a Cholesky factor of
    RᵀR), a third of the flops of R⁻¹R⁻ᵀ; the pseudo-inverse when R is singular."""
    if np.all(np.diag(R) != 0) and np.all(np.isfinite(R)):
        inv, info = scipy.linalg.lapack.dpotri(R, lower=0)
        if info == 0:
            out: np.ndarray = np.triu(inv) + np.triu(inv, 1).T
            return out
    pinv = np.linalg.pinv(R)
    gram_inv: np.ndarray = pinv @ pinv.T
    return gram_inv


def exact_solve(gram: np.ndarray, k: int, l2: np.ndarray,
                W: float) -> tuple[np.ndarray, float] | None:
    """β and the objective from the double-double Gram of √w·[Z y] (Z with k columns).

    The penalized normal equations ``(ZᵀWZ + W·diag(l2))β = ZᵀWy`` are solved by
    Cholesky in double-double after an exact power-of-two equilibration, which gives β
    to about κ(Z)²·2⁻¹⁰⁶ (κ of the equilibrated Z): far beyond a double-precision QR
    solve's κ(Z)·2⁻⁵³ while κ(Z) < 10¹⁶. The minimum of the penalized sum of squares is
    yᵀWy − r₁₂ᵀr₁₂ with R₁₁ᵀr₁₂ = ZᵀWy, in double-double. None when ZᵀWZ is singular to
    that precision.
    """
    from blocklin.ops._extended import (
        dd_add,
        dd_back_substitute,
        dd_cholesky,
        dd_dot,
        dd_forward_substitute,
    )

    c = k + 1
    p = l2.shape[0]
    pen = np.zeros((c, c))
    pen[np.arange(p), np.arange(p)] = W * l2
    hi, lo = dd_add((gram[0], gram[1]), (pen, np.zeros((c, c))))
    dg = np.diag(hi)
    if not np.all(dg[:k] > 0) or not np.all(np.isfinite(hi)):
        return None
    # Scale by powers of two (exact) to a unit diagonal, so Cholesky sees κ_eq(Z)².
    e = -np.round(0.5 * np.log2(np.where(dg > 0, dg, 1.0))).astype(int)
    scale = np.ldexp(1.0, e[:, None] + e[None, :])
    hi, lo = hi * scale, lo * scale
    factor = dd_cholesky(np.stack([hi[:k, :k], lo[:k, :k]]))
    if factor is None:
        return None
    r12 = dd_forward_substitute(factor, (hi[:k, k], lo[:k, k]))
    bh, bl = dd_back_substitute(factor, r12)
    beta = np.ldexp(bh + bl, e[:k] - e[k])
    # yᵀWy − r₁₂ᵀr₁₂ cancels up to κ-fold: both terms in double-double.
    yy = (np.append(hi[k, k], -r12[0]), np.append(lo[k, k], -r12[1]))
    sse = max(dd_dot(yy, (np.append(1.0, r12[0]), np.append(0.0, r12[1]))), 0.0)
    sse *= np.ldexp(1.0, -2 * int(e[k]))
    if not np.all(np.isfinite(beta)):
        return None
    return beta, 0.5 * sse / W


# --------------------------------------------------------------------------- prediction
def predict_margin(X: Any, coef: np.ndarray, intercept: np.ndarray | float, est: Any) -> np.ndarray:
    """X @ coef + intercept for in-memory or stored X (one pass over stored X)."""
    if not (is_stored(X) or _is_dask(X)):
        out: np.ndarray = np.asarray(X @ coef, dtype=np.float64) + intercept
        return out
    from blocklin.executors.api import compute
    from blocklin.executors.intermediates import intermediates_scope
    from blocklin.ops.products import matmul

    opts = compute_options(est)
    # The margins' BlockMatrix lives in the work dir: read, then removed with the scope.
    with stored_matrix(X, work_dir=opts.get("work_dir"), name="X") as A, intermediates_scope():
        M = compute(matmul(A, np.ascontiguousarray(coef, dtype=np.float64)), **opts)[0]
        return np.asarray(M.to_numpy(), dtype=np.float64) + intercept


# --------------------------------------------------------------------------- sketch
@dataclass
class SketchResult:
    coef: np.ndarray  # (p + intercept,)
    history: list[float]
    iterations: int
    moments: Moments


def _sketch_centered(data: TrainData, mu: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """S·(X − 1μᵀ) for a random S (k × m, E[SᵀS] = I): one pass."""
    if data.local is None:
        from blocklin.ops.sketch import sketch
        from blocklin.ops.transforms import standardize

        assert data.stored is not None
        A = data.stored[0]
        # A sparse-sign sketch costs 8 flops per entry of X (a Gaussian one k): the
        # preconditioner is as good, the pass far cheaper for wide X.
        if getattr(A.meta, "format", "dense") == "dense":
            view = standardize(A, shift=mu)
            return np.asarray(data.run_lazy(sketch(view, k, "sparse_sign", seed)))
        # Sparse X is never densified: S(X − 1μᵀ) = SX − (S1)μᵀ, S1 from the same
        # counter-based S applied to a stored ones column (8 bytes a row).
        from blocklin.executors.api import compute
        from blocklin.storage.blockmatrix import from_array
        from blocklin.storage.stores import join_url

        work = data.compute_options.get("work_dir") or default_work_dir()
        ones = from_array(np.ones((A.shape[0], 1)), join_url(work, f"ones-{A.shape[0]}-"
                                                                  f"{A.chunks[0]}.zarr"),
                          chunks=(A.chunks[0], None), overwrite=True)
        data.passes += 1
        sx, s1 = compute(sketch(A, k, "sparse_sign", seed), sketch(ones, k, "sparse_sign", seed),
                         **data.compute_options)
        centered: np.ndarray = np.asarray(sx) - np.asarray(s1) @ mu[None, :]
        return centered
    x = data.local[0]
    n = x.shape[0]
    step = max(1, 2**22 // k)
    out = np.zeros((k, mu.shape[0]))
    data.passes += 1
    with local_pass("sketch"):
        for i, start in enumerate(range(0, n, step)):
            rng = np.random.default_rng([seed, i])
            block = x[start:start + step]
            g = rng.standard_normal((k, block.shape[0]))
            if hasattr(block, "toarray"):
                # G(X − 1μᵀ) = (XᵀGᵀ)ᵀ − (G1)μᵀ: the CSR chunk is never densified.
                out += (np.asarray(block.T @ g.T).T - np.outer(g.sum(axis=1), mu)) / np.sqrt(k)
            else:
                out += g @ (np.asarray(block) - mu) / np.sqrt(k)
    return out


#: With an intercept, a feature whose weighted deviation is at most this times its |mean|
#: is constant to rounding (centred, it holds only rounding noise): its coefficient is 0,
#: as MLlib gives constant features.
_CONST_TOL = 1e3 * np.finfo(float).eps
#: A sketched column whose R diagonal is at most this times the column's norm depends on
#: the columns before it to rounding: without an L2 penalty on it, it is left out
#: (coefficient 0, a basic least-squares solution).
_RANK_TOL = 1e3 * np.finfo(float).eps


def sketch_solve(est: Any, data: TrainData) -> SketchResult:
    """Sketch-and-precondition least squares (ridge allowed): LSQR over X, one pass an iteration.

    **Problem.** With the intercept eliminated (b = ȳ − μᵀβ, μ and ȳ the weighted means
    of X and y; μ = 0, ȳ = 0 without intercept) the objective is ‖b̄ − Kβ‖²/(2W) with
    ``K = [A; D]``, ``A = √w∘(X − 1μᵀ)``, ``D = diag(√(W·l2))`` and ``b̄ = [ỹ; 0]``,
    ``ỹ = √w∘(y − ȳ)``.

    **Preconditioner.** One pass for the moments, one for a sparse-sign sketch
    S(X − 1μᵀ) with k = 4p rows (E[SᵀS] = I): its R, scaled by √(W/n) and stacked on D
    (a QR, no normal equations), is an upper triangular P with PᵀP ≈ AᵀA + D², so
    ``KP⁻¹`` has a condition number of about 3 whatever κ(X).

    **Iteration.** LSQR on ``min ‖b̄ − KP⁻¹x‖`` from x = 0, then β = P⁻¹x. Its
    bidiagonalization is ``β₁u₁ = b̄``, ``α₁v₁ = P⁻ᵀKᵀu₁`` and

        β_{i+1}u_{i+1} = KP⁻¹v_i − α_i·u_i,   α_{i+1}v_{i+1} = P⁻ᵀKᵀu_{i+1} − β_{i+1}v_i.

    u has n + p entries. Its ridge part (p) is kept; its data part never is: it stays
    ``u_i = A·z_i − γ_i·ỹ`` for a p-vector z_i and a scalar γ_i (z₁ = 0, γ₁ = −1/β₁),
    because the data part of ``KP⁻¹v_i − α_i·u_i`` is ``A·ẑ − ĉ·ỹ`` with
    ``ẑ = P⁻¹v_i − α_i·z_i``, ``ĉ = −α_i·γ_i``; then ``z_{i+1} = ẑ/β_{i+1}``,
    ``γ_{i+1} = ĉ/β_{i+1}``. So each iteration is one pass
    (:func:`blocklin.ops.glm.lsqr.lsqr_spec`) forming, block by block,
    ``t = A·ẑ − ĉ·ỹ = √w∘(Z·coef − ĉ·y)`` (Z = [X 1], coef = (ẑ, ĉȳ − μᵀẑ)) and summing
    ``tᵀt`` and ``Zᵀ(√w∘t)`` in a fixed-order tree: ``β_{i+1}² = tᵀt + ‖ridge part‖²``
    and ``Aᵀt = Xᵀ(√w∘t) − μ·1ᵀ(√w∘t)`` give the next v. In exact arithmetic this is
    LSQR; only the data part of u is re-formed from (z, γ) in each pass instead of
    stored, and no n-vector outlives a pass. The rounding of that re-formed u is
    relative to |γ|·‖ỹ‖ ≤ ‖b̄‖/‖r‖ (u_{i+1}'s residual polynomial at 0 is bounded by
    1/‖r_i‖), against a step of size ‖r‖: the iterate keeps LSQR's accuracy.

    **Stopping.** LSQR's rules with ``atol = btol = tol`` (no condition limit): stop
    when ‖K̄ᵀr‖ ≤ tol·‖K̄‖‖r‖ or ‖r‖ ≤ tol·‖b̄‖ + tol·‖K̄‖‖x‖ (K̄ = KP⁻¹; LSQR's running
    estimates), when either test is below machine precision, or after ``max_iter``
    iterations. LSQR's φ̄ equals ‖r‖, so the objective history φ̄²/(2W) costs no pass.

    With an intercept, constant features get coefficient 0. Without an L2 penalty,
    features that depend on earlier ones to rounding (see ``_RANK_TOL``) are left out of
    the iteration, and the solution is then moved onto the minimum-norm one (as
    ``numpy.linalg.lstsq`` and the ``normal`` solver give) along the null space that
    the sketch reveals: a dependent column's sketch is the same combination of the
    kept columns' sketches as the column is of the columns.

    Passes: 3 + one per iteration (moments, sketch, ``β₁`` and ``Kᵀu₁``, iterations).

    References
    ----------
    C. C. Paige, M. A. Saunders. LSQR: an algorithm for sparse linear equations and
    sparse least squares. ACM TOMS 8(1), 1982.
    H. Avron, P. Maymounkov, S. Toledo. Blendenpik: supercharging LAPACK's least-squares
    solver. SIAM J. Sci. Comput. 32(3), 2010.
    """
    p = data.n_features
    fi = bool(est.fit_intercept)
    mom, sd, _, l2 = column_moments(est, data)
    mu = mom.mean[:p] if fi else np.zeros(p)
    ybar = float(mom.mean[p]) if fi else 0.0
    W = mom.W
    k = int(min(max(4 * p, p + 10), max(data.n_rows, p + 1)))
    with progress_step("sketch"):
        SA = _sketch_centered(data, mu, k)
    drop = (sd[:p] <= _CONST_TOL * np.abs(mu)) if fi else np.zeros(p, dtype=bool)
    pen = np.sqrt(W * l2)
    P, keep = _preconditioner(SA, np.sqrt(W / data.n_rows), pen, drop)
    muk = mu[keep]
    products = [0]

    def product(z: np.ndarray, c: float) -> tuple[float, np.ndarray]:
        """One pass: (tᵀt, Aᵀt) for t = A·z − c·ỹ over the kept columns."""
        coef = np.zeros(p + int(fi))
        coef[:p][keep] = z
        if fi:
            coef[p] = c * ybar - muk @ z
        label = f"LSQR iteration {products[0]}" if products[0] else "LSQR start"
        products[0] += 1
        with progress_step(label):
            out = data.run(lsqr_spec(coef, c, fi, data.has_weights,
                                     data.x_col_blocks)).reshape(-1)
        g = out[1:p + 1][keep]
        if fi:
            g = g - muk * out[p + 1]
        return float(out[0]), g

    x, norms, iterations = _lsqr(product, P, pen[keep], int(est.max_iter), float(est.tol))
    beta = np.zeros(p)
    if x.size:
        beta[keep] = scipy.linalg.solve_triangular(P, x)
    beta = _min_norm(beta, SA, keep, drop)
    coef = np.append(beta, ybar - mu @ beta) if fi else beta
    return SketchResult(coef, [r * r / (2.0 * W) for r in norms], iterations, mom)


def _min_norm(beta: np.ndarray, SA: np.ndarray, keep: np.ndarray,
              drop: np.ndarray) -> np.ndarray:
    """Move a solution that is zero on dependent columns to the minimum-norm one.

    Dependent column j = Σ_kept C_ij·column i, so N = [C; −I] spans the null space;
    C comes from the sketch, which keeps linear relations between columns exactly (up to
    rounding).
    """
    dependent = ~keep & ~drop
    if not dependent.any():
        return beta
    C = np.linalg.lstsq(SA[:, keep], SA[:, dependent], rcond=None)[0]
    N = np.zeros((beta.shape[0], int(dependent.sum())))
    N[keep] = C
    N[np.flatnonzero(dependent), np.arange(N.shape[1])] = -1.0
    return min_norm(beta, N)


def _preconditioner(SA: np.ndarray, scale: float, pen: np.ndarray,
                    drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper triangular P with PᵀP ≈ AᵀA + D² over the kept columns, and the kept mask.

    ``SA`` is the k × p sketch of the centred X (E[SᵀS] = I), so scale²·RᵀR ≈ AᵀA with
    scale² = W/n; D = diag(pen) is stacked under it. Columns in ``drop``, and unpenalized
    columns whose R diagonal is rounding against their norm, are left out.
    """
    keep = ~drop
    R = _r_factor(SA[:, keep])
    norms = np.linalg.norm(SA[:, keep], axis=0)
    dependent = (np.abs(np.diag(R)) <= _RANK_TOL * norms) & (pen[keep] == 0)
    if dependent.any():
        keep[np.flatnonzero(keep)[dependent]] = False
        R = _r_factor(SA[:, keep])
    P = scale * R
    if np.any(pen[keep] > 0):
        P = _r_factor(np.vstack([P, np.diag(pen[keep])]))
    return P, keep


def _r_factor(M: np.ndarray) -> np.ndarray:
    """TSQR's Householder R of M (k × q, k ≥ q), also for no columns at all."""
    from blocklin.ops.tsqr import _r_factor as householder_r

    return np.zeros((0, 0)) if M.shape[1] == 0 else householder_r(M)


@dataclass
class _Bidiag:
    """LSQR's plane rotations and running estimates (Paige and Saunders 1982, §4–6)."""

    alfa: float
    phibar: float
    bnorm: float
    rhobar: float = 0.0
    anorm: float = 0.0
    ddnorm: float = 0.0
    xxnorm: float = 0.0
    xnorm: float = 0.0
    zeta: float = 0.0
    cs2: float = -1.0
    sn2: float = 0.0
    tau: float = 0.0

    def rotate(self, alfa: float, beta: float, w_norm: float) -> tuple[float, float]:
        """Eliminate β_{i+1} (α_{i+1} = ``alfa``); the steps φ/ρ along w and θ/ρ for the next w."""
        rho = float(np.hypot(self.rhobar, beta))
        cs, sn = self.rhobar / rho, beta / rho
        theta = sn * alfa
        self.rhobar = -cs * alfa
        phi = cs * self.phibar
        self.phibar = sn * self.phibar
        self.tau = sn * phi
        self.alfa = alfa
        self.ddnorm += (w_norm / rho) ** 2
        # A rotation on the right of the bidiagonal matrix estimates ‖x‖.
        delta, gambar = self.sn2 * rho, -self.cs2 * rho
        rhs = phi - delta * self.zeta
        self.xnorm = float(np.sqrt(self.xxnorm + (rhs / gambar) ** 2))
        gamma = float(np.hypot(gambar, theta))
        self.cs2, self.sn2 = gambar / gamma, theta / gamma
        self.zeta = rhs / gamma
        self.xxnorm += self.zeta**2
        return phi / rho, theta / rho

    def converged(self, tol: float) -> bool:
        """LSQR's tests with atol = btol = ``tol`` and their machine-precision guards."""
        eps = np.finfo(float).eps
        rnorm = self.phibar
        test1 = rnorm / self.bnorm
        test2 = self.alfa * abs(self.tau) / (self.anorm * rnorm + eps)
        test3 = 1.0 / (self.anorm * np.sqrt(self.ddnorm) + eps)
        t1 = test1 / (1.0 + self.anorm * self.xnorm / self.bnorm)
        rtol = tol + tol * self.anorm * self.xnorm / self.bnorm
        return bool(1.0 + test3 <= 1.0 or 1.0 + test2 <= 1.0 or 1.0 + t1 <= 1.0
                    or test2 <= tol or test1 <= rtol)


def _lsqr(product: Any, P: np.ndarray, pen: np.ndarray, max_iter: int,
          tol: float) -> tuple[np.ndarray, list[float], int]:
    """LSQR on ``[A; D]·P⁻¹x ≈ [ỹ; 0]`` from x = 0, the data part of u as (z, γ).

    ``product(z, c)`` is one pass returning (tᵀt, Aᵀt) for t = A·z − c·ỹ. Returns x, the
    residual norms ‖r‖ at x₀ = 0 and after each iteration, and the iterations.
    """
    q = P.shape[0]
    tt, g = product(np.zeros(q), -1.0)
    beta = float(np.sqrt(max(tt, 0.0)))
    norms = [beta]
    x = np.zeros(q)
    if beta == 0.0 or q == 0:
        return x, norms, 0
    z, gam, ur = np.zeros(q), -1.0 / beta, np.zeros(q)
    v = scipy.linalg.solve_triangular(P, g, trans="T") / beta
    alfa = float(np.linalg.norm(v))
    if alfa == 0.0:
        return x, norms, 0
    v /= alfa
    w = v.copy()
    bd = _Bidiag(alfa, beta, beta, rhobar=alfa)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - it is reported
        Pv = scipy.linalg.solve_triangular(P, v)
        zhat, chat, urhat = Pv - alfa * z, -alfa * gam, pen * Pv - alfa * ur
        tt, g = product(zhat, chat)
        beta = float(np.sqrt(max(tt + urhat @ urhat, 0.0)))
        if beta > 0.0:
            z, gam, ur = zhat / beta, chat / beta, urhat / beta
            bd.anorm = float(np.sqrt(bd.anorm**2 + alfa**2 + beta**2))
            v = scipy.linalg.solve_triangular(P, g + pen * urhat, trans="T") / beta - beta * v
            alfa = float(np.linalg.norm(v))
            if alfa > 0.0:
                v /= alfa
        if bd.rhobar == 0.0 and beta == 0.0:  # nothing left to rotate: x is final
            norms.append(bd.phibar)
            break
        step, theta = bd.rotate(alfa, beta, float(np.linalg.norm(w)))
        x += step * w
        w = v - theta * w
        norms.append(bd.phibar)
        if bd.converged(tol):
            break
    return x, norms, it
