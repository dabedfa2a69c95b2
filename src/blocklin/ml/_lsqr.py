"""Sketch-and-precondition least squares: LSQR over X, one pass an iteration, the
preconditioner from a sparse-sign sketch of the centred X."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from blocklin.config import default_work_dir
from blocklin.executors.progress import local_pass
from blocklin.executors.progress import step as progress_step
from blocklin.ml._params import FitParams, column_moments
from blocklin.ml._solvers import TrainData, min_norm
from blocklin.ops.glm.lsqr import LsqrLayout, lsqr_spec
from blocklin.ops.glm.moments import Moments

__all__ = ["SketchResult", "sketch_solve"]


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

        work = data.compute_options.work_dir or default_work_dir()
        ones = from_array(np.ones((A.shape[0], 1)), join_url(work, f"ones-{A.shape[0]}-"
                                                                  f"{A.chunks[0]}.zarr"),
                          chunks=(A.chunks[0], None), overwrite=True)
        data.passes += 1
        sx, s1 = compute(sketch(A, k, "sparse_sign", seed), sketch(ones, k, "sparse_sign", seed),
                         compute_options=data.compute_options)
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


def sketch_solve(params: FitParams, data: TrainData) -> SketchResult:
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
    fi = params.fit_intercept
    mom, sd, _, l2 = column_moments(params, data)
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
            out = LsqrLayout(coef.size).unpack(data.run(lsqr_spec(
                coef, c, fi, data.has_weights, data.x_col_blocks)))
        g = out.product[:p][keep]
        if fi:
            g = g - muk * out.product[p]
        return out.sq_norm, g

    x, norms, iterations = _lsqr(product, P, pen[keep], params.max_iter, params.tol)
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
    from blocklin.ops.tsqr import householder_r

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

