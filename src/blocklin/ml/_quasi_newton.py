"""L-BFGS and OWL-QN on the driver: one pass over the data per function evaluation.

Both minimize ``F(x) = f(x) + Σⱼ l1ⱼ·|xⱼ|`` (``l1 = 0`` for L-BFGS) given a callable
returning f and ∇f, as MLlib does through breeze: limited-memory BFGS, OWL-QN's
pseudo-gradient and orthant projection for the L1 term. What differs from breeze is
how they stop and how their line searches treat rounding, so that ``tol`` controls the
accuracy of the answer, and four changes that cut the passes (on the correlated
problems of tests/ml/test_solver_convergence.py, OWL-QN needs 3-4x fewer):

* 30 correction pairs instead of 10 (``MEMORY``, within ``MEMORY_BYTES``);
* OWL-QN constrains the sign of the quasi-Newton direction only on coordinates at
  zero (which may only leave zero the way the pseudo-gradient points). Andrew and
  Gao zero every component whose sign disagrees with the pseudo-gradient; on a
  correlated design that discards much of the curvature information, and the unit
  step then overshoots. Coordinates away from zero are guarded by the orthant
  projection of the line search, and the direction is still one of descent
  (checked; the constrained steepest descent direction otherwise);
* OWL-QN's correction pairs act on the free coordinates only (nonzero, or with a
  nonzero pseudo-gradient);
* an optional ``move`` after each step, along directions the data term ignores
  (the multinomial's shift over classes, which only the penalty fixes and whose
  curvature can be 1e-9: :func:`blocklin.ml._iterative.class_shift`).

**Stopping rule.** Let g₀ = ∇f(x₀) and, at iterate k, G_k the gradient of F (OWL-QN: its
pseudo-gradient, the minimum-norm subgradient, which is 0 exactly at a minimizer).
The solver stops at the first k with

    ‖G_k‖_∞ ≤ tol · ‖g₀‖_∞,

or after ``max_iter`` iterations, or at the rounding floor of the passes: when no
step decreases F any more, or in 10 iterations (``STALL_ITERATIONS``) ‖G‖_∞ has not
reached a new low and F has not fallen by more than 64 units of rounding (see below).
A relative decrease of the objective (MLlib's rule) is not used: near a minimizer
F changes quadratically in the error, so stopping on ``|ΔF|/|F| ≤ tol`` leaves an
error of order √tol; the gradient rule leaves a relative error of about tol·κ (κ the
condition number of the Hessian in the solver's coordinates).

**Line search.** L-BFGS: the strong Wolfe conditions (Armijo constant 1e-4, curvature
0.9, as breeze's ``StrongWolfeLineSearch``), the first trial step 1 (``min(1, 1/‖d‖₂)``
on the first iteration), bracketing by the sign of the directional derivative
(every objective here is convex) and interpolation by the secant of the derivatives.
OWL-QN: backtracking along the orthant-projected path (Andrew and Gao), with quadratic
interpolation. Near a minimizer the change in F falls below the rounding of F itself
(≈ 1e-16·|F| per pass), and an Armijo test on values then fails at random; both
searches therefore also accept Hager and Zhang's approximate Wolfe condition
``φ'(α) ≤ (2·1e-4 − 1)·φ'(0)`` (the Armijo condition on the trapezoidal estimate of
the decrease, exact for quadratics) when F did not rise by more than 1e-10·|F|. The
directional derivative comes from gradients, which stay accurate far below that
floor, so the gradient rule above is reachable down to tol ≈ 1e-13.

References
----------
J. Nocedal, S. J. Wright. Numerical Optimization, 2nd ed., §3.5, §7.2. Springer, 2006.
G. Andrew, J. Gao. Scalable training of L1-regularized log-linear models. ICML 2007.
W. W. Hager, H. Zhang. A new conjugate gradient method with guaranteed descent and an
efficient line search. SIAM J. Optim. 16(1), 2005 (the approximate Wolfe conditions).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["QNResult", "lbfgs", "owlqn"]

ObjFun = Callable[[np.ndarray], tuple[float, np.ndarray]]
#: x -> (Δx, Δf, Δ∇f): a move along directions the data term of f does not see (the
#: softmax's shift common to all classes), lowering the penalty; it costs no pass.
Move = Callable[[np.ndarray], tuple[np.ndarray, float, np.ndarray]]

#: Armijo constant (sufficient decrease) and curvature constant of the line searches.
C1 = 1e-4
C2 = 0.9
#: How far F may rise, relative, for the approximate Wolfe condition to accept a step:
#: well above the rounding of a pass's loss sum, far below any decrease that matters.
APPROX_RISE = 1e-10
#: Function evaluations one line search may spend.
MAX_TRIALS = 20
#: With no new smallest ‖G‖_∞ and F lower by at most ``STALL_RISE``·|F| in this many
#: iterations, the solver is at its rounding floor (reached only when tol asks for more
#: than the passes' arithmetic gives). Either alone happens away from the floor: ‖G‖
#: is not monotone while OWL-QN finds the support, and F stops changing visibly while
#: ‖G‖ is still 1e-7 of its start.
STALL_ITERATIONS = 10
STALL_RISE = 64 * np.finfo(float).eps
#: Correction pairs kept: 30 (MLlib keeps 10; on the 20,000 × 30 correlated problems of
#: tests/ml/test_solver_convergence.py 30 pairs take 35-40% fewer passes to the same
#: accuracy), fewer when 30 pairs of n-vectors would pass ``MEMORY_BYTES``, never below 10.
MEMORY = 30
MEMORY_BYTES = 256 * 2**20


def default_memory(n: int) -> int:
    """Correction pairs for n unknowns: ``MEMORY`` within ``MEMORY_BYTES``, at least 10."""
    return int(min(MEMORY, max(10, MEMORY_BYTES // (16 * max(n, 1)))))


@dataclass
class QNResult:
    """What :func:`lbfgs` and :func:`owlqn` return."""

    x: np.ndarray
    history: list[float]  # F at x₀ and after each iteration
    evaluations: int
    reason: str  # "gradient", "max_iter" or "stalled"
    grad_norms: list[float] = field(default_factory=list)  # ‖G_k‖_∞ per iterate
    scale: float = 0.0  # the ‖∇f‖_∞ that ``tol`` is relative to

    @property
    def iterations(self) -> int:
        return len(self.history) - 1


class _Point(NamedTuple):
    x: np.ndarray
    f: float  # smooth part
    g: np.ndarray  # its gradient
    F: float  # f + Σ l1|x|


class _Memory:
    """The last ``m`` correction pairs and the two-loop product with them."""

    def __init__(self, m: int) -> None:
        self.pairs: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=m)

    def update(self, s: np.ndarray, y: np.ndarray) -> None:
        sy = float(s @ y)
        # Convex f gives sᵀy ≥ 0; a pair with no curvature to rounding would blow up H.
        if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            self.pairs.append((s, y, 1.0 / sy))

    def direction(self, q: np.ndarray, free: np.ndarray | None = None) -> np.ndarray:
        """−H·q for the L-BFGS inverse Hessian H (Nocedal and Wright, Algorithm 7.4).

        With ``free`` (OWL-QN), the pairs act on those coordinates only and the rest of
        the direction is 0: coordinates held at zero move no s, but their gradients
        change, and left in, that change corrupts the curvature of the others.
        """
        mask = None if free is None or free.all() else free.astype(np.float64)
        d = q.copy() if mask is None else q * mask
        pairs = []
        for s, y, rho in self.pairs:
            if mask is not None:
                y = y * mask
                sy = float(s @ y)
                if sy <= 1e-12 * float(np.linalg.norm(s * mask) * np.linalg.norm(y)):
                    continue
                rho = 1.0 / sy
            pairs.append((s, y, rho))
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * float(s @ d)
            alphas.append(a)
            d -= a * y
        if pairs:
            s, y, rho = pairs[-1]
            d *= 1.0 / (rho * float(y @ y))
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            d += (a - rho * float(y @ d)) * s
        if mask is not None:
            d *= mask
        return -d


def _pseudo_gradient(x: np.ndarray, g: np.ndarray, l1: np.ndarray) -> np.ndarray:
    """The minimum-norm subgradient of f + Σ l1|x| (Andrew and Gao's pseudo-gradient)."""
    pg: np.ndarray = g + l1 * np.sign(x)
    zero = x == 0
    right, left = g[zero] + l1[zero], g[zero] - l1[zero]
    pg[zero] = np.where(right < 0, right, np.where(left > 0, left, 0.0))
    return pg


def _accept(value: float, dphi: float, start: float, dphi0: float, decrease: float) -> bool:
    """Sufficient decrease: Armijo on values, or the approximate Wolfe condition."""
    if value <= start + C1 * decrease:
        return True
    return dphi <= (2 * C1 - 1) * dphi0 and value <= start + APPROX_RISE * abs(start)


def _secant(a: float, da: float, b: float, db: float) -> float:
    """Root of the line through (a, da), (b, db): the step where φ' is zero."""
    return a - da * (b - a) / (db - da)


def _wolfe_search(fun: ObjFun, start: _Point, d: np.ndarray, a0: float,
                  count: list[int]) -> _Point | None:
    """A step along d satisfying the strong Wolfe conditions (None if none is found)."""
    dphi0 = float(start.g @ d)
    lo_a, lo_d = 0.0, dphi0
    prev_a, prev_d = lo_a, lo_d
    hi: tuple[float, float] | None = None  # (step, φ') past the minimum or failing decrease
    best: _Point | None = None
    a = a0
    for _ in range(MAX_TRIALS):
        x = start.x + a * d
        f, g = fun(x)
        count[0] += 1
        dphi = float(g @ d)
        if not np.isfinite(f):
            hi = (a, np.inf)
        elif not _accept(f, dphi, start.F, dphi0, a * dphi0):
            hi = (a, dphi)
        else:
            pt = _Point(x, f, g, f)
            if best is None or f < best.F:
                best = pt
            if abs(dphi) <= C2 * abs(dphi0):
                return pt
            if dphi > 0:
                hi = (a, dphi)
            else:
                prev_a, prev_d = lo_a, lo_d
                lo_a, lo_d = a, dphi
        if hi is None:  # still descending: extrapolate to the secant root, 2x to 10x
            t = _secant(prev_a, prev_d, a, dphi) if dphi > prev_d else 4 * a
            a = min(max(t, 2 * a), 10 * a)
            continue
        ha, hd = hi
        width = ha - lo_a
        t = _secant(lo_a, lo_d, ha, hd) if np.isfinite(hd) and hd > 0 else lo_a + 0.5 * width
        a = min(max(t, lo_a + 0.1 * width), ha - 0.1 * width)
        if width <= 1e-12 * ha:
            break
    return best


def _projected_search(fun: ObjFun, start: _Point, d: np.ndarray, pg: np.ndarray,
                      l1: np.ndarray, a0: float, count: list[int]) -> _Point | None:
    """OWL-QN's backtracking along the orthant-projected path (None if no decrease)."""
    orthant = np.where(start.x != 0, np.sign(start.x), -np.sign(pg))
    dphi0 = float(pg @ d)
    a = a0
    for _ in range(MAX_TRIALS):
        ray = start.x + a * d
        x = np.where(np.sign(ray) == orthant, ray, 0.0)
        f, g = fun(x)
        count[0] += 1
        F = f + float(l1 @ np.abs(x))
        if np.isfinite(F):
            clipped = bool(np.any(x != ray))
            # Along an unclipped ray F is smooth: φ'(α) = (∇f + l1∘ξ)ᵀd.
            dphi = np.inf if clipped else float((g + l1 * orthant) @ d)
            if _accept(F, dphi, start.F, dphi0, float(pg @ (x - start.x))):
                return _Point(x, f, g, F)
            # Quadratic through φ(0), φ'(0), φ(a), kept within [0.1a, 0.5a].
            curv = F - start.F - a * dphi0
            t = -dphi0 * a * a / (2 * curv) if curv > 0 else 0.5 * a
            a = min(max(t, 0.1 * a), 0.5 * a)
        else:
            a *= 0.1
    return None


def _stalled(grad_norms: list[float], history: list[float]) -> bool:
    w = STALL_ITERATIONS
    if len(grad_norms) <= w:
        return False
    no_new_low = min(grad_norms[-w:]) > min(grad_norms[:-w])
    return bool(no_new_low and history[-w - 1] - history[-1] <= STALL_RISE * abs(history[-1]))


def _moved(pt: _Point, move: Move | None, l1: np.ndarray | None) -> _Point:
    if move is None:
        return pt
    dx, df, dg = move(pt.x)
    x, f = pt.x + dx, pt.f + df
    return _Point(x, f, pt.g + dg, f + (0.0 if l1 is None else float(l1 @ np.abs(x))))


def _minimize(fun: ObjFun, x0: np.ndarray, l1: np.ndarray | None, max_iter: int, tol: float,
              memory: int | None, move: Move | None, scale: float | None) -> QNResult:
    x = np.array(x0, dtype=np.float64)
    if memory is None:
        memory = default_memory(x.shape[0])
    f, g = fun(x)
    count = [1]
    penalty = 0.0 if l1 is None else float(l1 @ np.abs(x))
    pt = _Point(x, f, g, f + penalty)
    history = [pt.F]
    if scale is None:
        scale = float(np.max(np.abs(g), initial=0.0))
    mem = _Memory(memory)
    grad_norms: list[float] = []
    reason = "max_iter"
    while True:
        G = pt.g if l1 is None else _pseudo_gradient(pt.x, pt.g, l1)
        gnorm = float(np.max(np.abs(G), initial=0.0))
        grad_norms.append(gnorm)
        if gnorm <= tol * scale:
            reason = "gradient"
            break
        if _stalled(grad_norms, history):
            reason = "stalled"
            break
        if len(history) > max_iter:
            break
        new = None
        for attempt in range(2):  # on failure, once more from steepest descent
            if attempt:
                if not mem.pairs:
                    break
                mem.pairs.clear()
            d = mem.direction(G, None if l1 is None else (pt.x != 0) | (G != 0))
            if l1 is not None:
                d[(d * G >= 0) & ((pt.x == 0) | (attempt > 0))] = 0.0
            if float(G @ d) >= 0:
                continue
            a0 = 1.0 if mem.pairs else min(1.0, 1.0 / float(np.linalg.norm(d)))
            new = (_wolfe_search(fun, pt, d, a0, count) if l1 is None
                   else _projected_search(fun, pt, d, G, l1, a0, count))
            if new is not None:
                break
        if new is None:
            reason = "stalled"
            break
        new = _moved(new, move, l1)
        mem.update(new.x - pt.x, new.g - pt.g)
        pt = new
        history.append(pt.F)
    return QNResult(pt.x, history, count[0], reason, grad_norms, scale)


def lbfgs(fun: ObjFun, x0: np.ndarray, max_iter: int, tol: float,
          memory: int | None = None, move: Move | None = None,
          scale: float | None = None) -> QNResult:
    """Minimize a smooth convex f by L-BFGS; ``fun(x)`` returns (f, ∇f) in one pass.

    Stops when ‖∇f(x_k)‖_∞ ≤ ``tol``·‖∇f(x₀)‖_∞ (``scale`` in place of ‖∇f(x₀)‖_∞ when
    given: a warm start keeps its cold start's reference), after ``max_iter``
    iterations, or when no step decreases f (rounding floor); see the module
    docstring. Usually one evaluation per iteration (two or three on the first).
    """
    return _minimize(fun, x0, None, max_iter, tol, memory, move, scale)


def owlqn(fun: ObjFun, x0: np.ndarray, l1: np.ndarray, max_iter: int, tol: float,
          memory: int | None = None, move: Move | None = None,
          scale: float | None = None) -> QNResult:
    """Minimize f(x) + Σ l1ⱼ|xⱼ| (f smooth, convex) by OWL-QN; ``fun`` returns (f, ∇f).

    Stops when the pseudo-gradient's ‖·‖_∞ is at most ``tol``·‖∇f(x₀)‖_∞ (or
    ``tol``·``scale``, as :func:`lbfgs`), after ``max_iter`` iterations, or when no step
    decreases the objective (rounding floor); see the module docstring.
    """
    return _minimize(fun, x0, np.asarray(l1, dtype=np.float64), max_iter, tol, memory,
                     move, scale)
