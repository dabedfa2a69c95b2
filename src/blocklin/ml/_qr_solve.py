"""Solving least squares from a TSQR pass: from its R (Householder accuracy, ridge by
stacking, least norm when rank deficient) or from its exact double-double Gram."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from blocklin.ml._solvers import min_norm
from blocklin.ops.glm.conditioning import Conditioning, conditioning

__all__ = ["QR_RANK_RCOND", "ExactSolution", "QRSolve", "exact_solve", "qr_solve"]


#: A TSQR factor whose column-equilibrated singular values fall below this fraction of
#: the largest (times k) is rank deficient: exact linear dependence leaves σ of a few
#: units of rounding, while the ill-conditioned designs QR must solve (NIST's Filip:
#: 2·10⁻¹⁰) sit far above it.
QR_RANK_RCOND = 10 * np.finfo(float).eps


@dataclass(frozen=True)
class QRSolve:
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


@dataclass(frozen=True)
class ExactSolution:
    """β and the objective there, from the exact Gram (:func:`exact_solve`)."""

    beta: np.ndarray
    objective: float


def exact_solve(gram: np.ndarray, k: int, l2: np.ndarray, W: float) -> ExactSolution | None:
    """β and the objective from the double-double Gram of √w·[Z y] (Z with k columns).

    The penalized normal equations ``(ZᵀWZ + W·diag(l2))β = ZᵀWy`` are solved by
    Cholesky in double-double after an exact power-of-two equilibration, which gives β
    to about κ(Z)²·2⁻¹⁰⁶ (κ of the equilibrated Z): far beyond a double-precision QR
    solve's κ(Z)·2⁻⁵³ while κ(Z) < 10¹⁶. The minimum of the penalized sum of squares is
    yᵀWy − r₁₂ᵀr₁₂ with R₁₁ᵀr₁₂ = ZᵀWy, in double-double. None when ZᵀWZ is singular to
    that precision.
    """
    from blocklin.ops.extended import (
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
    return ExactSolution(beta, 0.5 * sse / W)

