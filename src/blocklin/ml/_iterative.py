"""The L-BFGS/OWL-QN fit shared by the linear and logistic estimators: standardized
coordinates with a centred intercept, one pass per evaluation, and for the multinomial
the exact penalty-minimizing shift over classes after every step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blocklin.errors import NonFiniteError
from blocklin.executors.progress import step as progress_step
from blocklin.ml._params import FitParams, column_moments
from blocklin.ml._quasi_newton import Move, lbfgs, owlqn
from blocklin.ml._solvers import TrainData
from blocklin.ops.glm.gradient import LossGradLayout, loss_grad_spec
from blocklin.ops.glm.moments import Moments

__all__ = ["IterResult", "class_shift", "iterative_fit"]


@dataclass
class IterResult:
    coef: np.ndarray  # (p + intercept, k)
    history: list[float]
    moments: Moments
    grad_scale: float = 0.0  # the gradient norm the stopping rule is relative to


def _initial(family: str, mom: Moments, p: int, k: int, fit_intercept: bool) -> np.ndarray:
    theta = np.zeros((p + int(fit_intercept), k))
    if fit_intercept and family == "squared":
        theta[p] = mom.mean[p]
    elif fit_intercept and family == "binomial":
        m = min(max(float(mom.mean[p]), 1e-12), 1 - 1e-12)
        theta[p] = np.log(m / (1 - m))
    return theta


def iterative_fit(params: FitParams, data: TrainData, family: str, solver: str, k: int,
                  start: np.ndarray | None = None,
                  grad_scale: float | None = None) -> IterResult:
    """L-BFGS or OWL-QN over passes, in standardized coordinates with a centred intercept.

    One pass for the column moments (scales, centres, penalties, a starting
    intercept), then one pass per function evaluation. The solver works on
    ``vⱼ = βⱼ·√(σⱼ² + l2ⱼ)`` (σⱼ the weighted standard deviation: MLlib's standardization,
    plus the L2 term's share so that a near-constant penalized feature stays O(1)) and
    ``c = b + μᵀβ`` (μ the weighted column means): the margin is (x − μ)ᵀβ + c, so the
    intercept is decoupled from the coefficients and every curvature is O(1) whatever
    the columns' offsets and units. Each evaluation still multiplies X itself (the
    pass gets β and b = c − μᵀβ); the gradient is mapped back by the chain rule. The
    stopping rule (see :mod:`blocklin.ml._quasi_newton`) is ‖G‖_∞ ≤ tol·‖g₀‖_∞ in
    these coordinates. ``start`` (coefficients as returned, intercept last) replaces
    the intercept-only start (a warm start: ``partial_fit``); the tolerance stays
    relative to the cold start's gradient: ``grad_scale`` (a previous fit's), or else
    one more evaluation, at the cold start, measures it.
    """
    p = data.n_features
    fi = params.fit_intercept
    mom, sd, l1, l2 = column_moments(params, data)
    sx = sd[:p]
    curv = sx**2 + l2
    scale = np.where(curv > 0, 1.0 / np.sqrt(np.where(curv > 0, curv, 1.0)), 1.0)[:, None]
    mu = (mom.mean[:p] if fi else np.zeros(p))[:, None]
    shape = (p + int(fi), k)

    def to_coef(theta: np.ndarray) -> np.ndarray:
        c = theta.reshape(shape).copy()
        c[:p] *= scale
        if fi:
            c[p] -= (mu * c[:p]).sum(axis=0)
        return c

    evaluations = [0]

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        c = to_coef(theta)
        evaluations[0] += 1
        with progress_step(f"{solver} evaluation {evaluations[0]}"):
            packed = data.run(loss_grad_spec(family, c, fi, data.has_weights,
                                             data.x_col_blocks))
        loss, W, g = LossGradLayout(shape).unpack(packed)
        f = loss / W + 0.5 * float(np.sum(l2[:, None] * c[:p] ** 2))
        g = g / W
        g[:p] += l2[:, None] * c[:p]
        if fi:
            g[:p] -= mu * g[p]
        g[:p] *= scale
        return f, g.ravel()

    theta0 = _initial(family, mom, p, k, fi)
    if start is not None:
        if grad_scale is None:
            grad_scale = float(np.max(np.abs(fun(theta0.ravel())[1]), initial=0.0))
        theta0 = np.array(start, dtype=float).reshape(shape)  # to_coef's inverse
        if fi:
            theta0[p] += (mu * theta0[:p]).sum(axis=0)
        theta0[:p] /= scale
    a, c = l1[:, None] * scale, l2[:, None] * scale**2  # penalty weights in θ
    move = _shift_move(shape, p, a[:, 0], c[:, 0]) if k > 1 else None
    res = (owlqn(fun, theta0.ravel(), np.vstack([a, np.zeros((int(fi), 1))]).repeat(k, 1).ravel(),
                 params.max_iter, params.tol, move=move, scale=grad_scale)
           if solver == "owlqn" else
           lbfgs(fun, theta0.ravel(), params.max_iter, params.tol, move=move,
                 scale=grad_scale))
    _check_solution(solver, res.x, res.history)
    return IterResult(to_coef(res.x), res.history, mom, res.scale)


def class_shift(V: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per row j, the t minimizing Σₖ aⱼ|Vⱼₖ + t| + ½cⱼ(Vⱼₖ + t)² (0 unless it lowers it).

    The softmax loss does not change when a feature's coefficients move by the same t
    in every class, so only the penalty decides that shift: a convex piecewise
    quadratic whose minimum is at a kink (t = −Vⱼₖ) or at the stationary point of a
    piece, clipped to the piece. All candidates are evaluated, vectorized over rows.
    """
    p, k = V.shape
    kinks = np.sort(-V, axis=1)
    lo = np.hstack([np.full((p, 1), -np.inf), kinks])
    hi = np.hstack([kinks, np.full((p, 1), np.inf)])
    # On piece i, i of the k terms are positive: a(2i − k) + c(ΣV + k·t) = 0.
    i = np.arange(k + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -(a[:, None] * (2 * i - k) + c[:, None] * V.sum(axis=1, keepdims=True)) / \
            (c[:, None] * k)
    t = np.clip(np.where(np.isfinite(t), t, 0.0), lo, hi)
    cand = np.hstack([np.zeros((p, 1)), kinks, t])
    W = V[:, None, :] + cand[:, :, None]
    h = (a[:, None] * np.abs(W).sum(axis=2) + 0.5 * c[:, None] * (W * W).sum(axis=2))
    best = h.argmin(axis=1)  # the first minimum: t = 0 (no move) on ties
    out: np.ndarray = cand[np.arange(p), best]
    return out


def _shift_move(shape: tuple[int, int], p: int, a: np.ndarray, c: np.ndarray) -> Move:
    """The multinomial's loss-free move for the solver: every feature's coefficients
    shifted over classes to the penalty's minimum (see :func:`class_shift`).

    In θ the penalty of feature j is aⱼ‖θⱼ‖₁ + ½cⱼ‖θⱼ‖² and the smooth part of the
    objective holds the L2 term, so the move changes f by the L2 term's change and ∇f
    by cⱼ·t on row j. Without it the shift direction's curvature is cⱼ alone, tiny for a
    feature with a large deviation (c = λ(1−α)/σ²), and L-BFGS/OWL-QN crawl along it.
    """

    def move(x: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        theta = x.reshape(shape)
        t = class_shift(theta[:p], a, c)
        dx = np.zeros(shape)
        dx[:p] = t[:, None]
        new = theta[:p] + dx[:p]
        df = 0.5 * float(np.sum(c[:, None] * (new * new - theta[:p] ** 2)))
        dg = np.zeros(shape)
        dg[:p] = c[:, None] * dx[:p]
        return dx.ravel(), df, dg.ravel()

    return move


def _check_solution(solver: str, x: np.ndarray, history: list[float]) -> None:
    """Refuse a non-finite objective or solution instead of returning the start point.

    L-BFGS and OWL-QN stop at once on a NaN objective and return where they began (an
    intercept-only model). Every pass checks its own input and output, so this is a
    last guard against overflow in the driver's arithmetic.
    """
    if np.all(np.isfinite(history)) and np.all(np.isfinite(x)):
        return
    raise NonFiniteError(f"the {solver} objective", detail=(
        f"it is {history[-1]} after {len(history) - 1} iterations although every pass "
        "read finite values: the arithmetic overflowed float64. Rescale X and y"))
