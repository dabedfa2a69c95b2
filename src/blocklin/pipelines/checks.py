"""Dry-run checks of iterative (``eager``) steps: everything that needs no data values.

An eager step (randomized SVD, PCA, a regression fit) plans its passes as it runs,
from what earlier passes computed, so a run cannot show them before it starts.
What it can show, and refuse, without reading a block:

- shapes from metadata: ``k ≤ min(m, n)``, X and y with the same rows, y one column;
- parameter combinations the estimator refuses (an L1 penalty with a solver that
  has none), through the estimator's own parameter check;
- the memory of each kind of pass the step makes (planned with stand-in vectors of
  the right shapes: the projection depends on shapes only), against
  ``max_task_memory``;
- how many passes over its inputs it will make (a range for solvers that stop on a
  tolerance).

A checker returns a :class:`StepPlan`; the runner (:func:`blocklin.pipelines.runner.
explain_pipeline`) finalizes its passes like the shared plan and reports them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.errors import InputValueError, ShapeMismatchError
from blocklin.pipelines.registry import BuildContext
from blocklin.plan.graph import Plan

__all__ = ["ParamError", "StepPlan", "check_crossprod", "check_regression", "check_svd",
           "check_tsvd"]


class ParamError(InputValueError):
    """A step parameter cannot work with the step's inputs (``param`` names it)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


@dataclass(frozen=True)
class StepPlan:
    """What a dry run knows of an eager step.

    Attributes
    ----------
    passes : tuple of int
        Fewest and most passes over the step's inputs (equal when fixed; the usual
        most when ``open_ended``).
    plans : tuple of (str, Plan)
        One representative of each kind of pass (what it is, its plan), for the
        memory projection; their stand-in parameters are zeros.
    """

    passes: tuple[int, int]
    plans: tuple[tuple[str, Plan], ...]
    #: An iterative solver's passes follow its function evaluations: line searches can
    #: make more than ``max_iter``, so the upper figure is the usual, not a bound.
    open_ended: bool = False
    #: Why the step makes these passes (``auto``'s solver and its reason), for ``explain``.
    note: str = ""

    @property
    def passes_text(self) -> str:
        lo, hi = self.passes
        if self.open_ended:
            return f"{lo} to about {hi}"
        return f"{lo}" if lo == hi else f"{lo} to {hi}"


Checker = Callable[[Mapping[str, Any], Any, BuildContext], StepPlan]


# -- SVD ------------------------------------------------------------------------------------
def _svd_plan(A: Any, k: int, oversample: int, n_iter: int, method: str, centered: bool,
              param: str = "k") -> StepPlan:
    from blocklin.ops import column_stats, gram
    from blocklin.ops.inputs import as_matrix
    from blocklin.ops.svd import check_svd_args, normal_product, svd_passes
    from blocklin.ops.tsqr import plan_finish, plan_tree

    m = as_matrix(A)
    rows, cols = m.shape
    if not 1 <= k <= min(rows, cols):
        raise ParamError(param, f"{param} = {k} but the matrix is {rows} x {cols}: it has at "
                                f"most min({rows}, {cols}) = {min(rows, cols)} singular values")
    width = check_svd_args(m, k, oversample, n_iter, method)
    stats = column_stats(A).plan
    if method == "gram":
        if centered:  # U = (A − 1μᵀ)V/s is planned with the result: a view cannot be centered
            from blocklin.ops.transforms import center

            center(A, np.zeros(cols))
        return StepPlan((1, 1), (("Gram + column stats pass",
                                  gram(A).plan.merge(stats)),))
    x = np.zeros((cols, width))
    first = normal_product(A, x, with_sums=centered).plan.merge(stats)
    tree = plan_tree([A], with_q=True, right=x, shift=np.zeros(width) if centered else None,
                     op="rsvd", project=True, mean=np.zeros(cols) if centered else None)
    finish, _ = plan_finish(tree, "project", op="rsvd")
    n = svd_passes(method, n_iter, centered)
    return StepPlan((n, n), (("power pass + column stats", first),
                             ("range finish (TSQR)", finish)))


def check_svd(centered: bool) -> Checker:
    """The checker of ``randomized_svd`` (``centered``: ``pca``) steps."""

    def check(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> StepPlan:
        return _svd_plan(inputs["A"], p.k, p.oversample, p.n_iter, p.method, centered)

    return check


def _no_view(value: Any, arg: str) -> None:
    """Estimators take stored matrices (inputs, matrix steps), not lazy views."""
    from blocklin.errors import InputDtypeError
    from blocklin.ops.inputs import MatrixView

    if isinstance(value, MatrixView):
        raise InputDtypeError(f"the estimator fits stored matrices but {arg} is a lazy view "
                              "(standardize); give it the input itself, or use the "
                              "randomized_svd/pca operators, which read views")


def check_tsvd(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> StepPlan:
    """The checker of ``truncated_svd`` steps (no centering, as scikit-learn's)."""
    _no_view(inputs["A"], "A")
    return _svd_plan(inputs["A"], p.n_components, p.oversample, p.n_iter, p.method, False,
                     param="n_components")


# -- regression -----------------------------------------------------------------------------
def _xy(inputs: Mapping[str, Any]) -> tuple[Any, Any, tuple[int, int], tuple[int, int]]:
    from blocklin.ops.inputs import as_matrix

    X, y = inputs["X"], inputs["y"]
    xs, ys = as_matrix(X, "X").shape, as_matrix(y, "y").shape
    if ys[1] != 1:
        raise ShapeMismatchError(f"y must be one column; the y input is {ys[0]} x {ys[1]}")
    if xs[0] != ys[0]:
        raise ShapeMismatchError(f"X has {xs[0]} rows but y has {ys[0]}; they must be "
                                 "row-aligned (the same rows, in the same order)")
    if xs[1] < 1:
        raise ShapeMismatchError("X has no columns")
    return X, y, xs, ys


@contextmanager
def _aligned_label(X: Any, y: Any) -> Iterator[Any]:
    """y, or (when its row blocks differ from X's) a metadata-only stand-in with X's row
    blocks in memory: the copy a fit stores before its passes."""
    from blocklin.ops.inputs import as_matrix

    xm, ym = as_matrix(X, "X"), as_matrix(y, "y")
    if xm.node.chunks[0] == ym.node.chunks[0] and ym.grid[1] == 1:
        yield y
        return
    from blocklin.storage import open_matrix
    from blocklin.storage.blockmatrix import provenance_attrs
    from blocklin.storage.codecs import ChunkCodec
    from blocklin.storage.meta import ArrayMeta, write_meta
    from blocklin.storage.stores import store_for

    url = f"memory://blocklin-dry-run/{uuid.uuid4().hex}/y.zarr"
    store = store_for(url)
    shape, chunks = (ym.shape[0], 1), (xm.node.chunks[0], 1)
    layout = json.dumps([list(shape), list(chunks), "float64", "dry-run"]).encode()
    meta = ArrayMeta(url=store.url, shape=shape, chunks=chunks, dtype="float64",
                     codec=ChunkCodec())
    write_meta(store, meta.with_attrs(provenance_attrs(
        "from_array", params={}, fingerprint=hashlib.sha256(layout).hexdigest()[:32])))
    try:
        yield open_matrix(url)
    finally:
        store.delete_prefix("")


def check_regression(family: str) -> Checker:
    """The checker of ``linear_regression`` (``family="squared"``) and
    ``logistic_regression`` (``"binomial"``) steps: the estimator's own parameter
    check, shapes, and the memory of its passes."""

    def check(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> StepPlan:
        for arg in ("X", "y"):
            _no_view(inputs[arg], arg)
        X, y, xs, _ = _xy(inputs)
        _check_estimator_params(family, p)
        return _regression_plan(family, p, X, y, xs[1])

    return check


def _check_estimator_params(family: str, p: Any) -> None:
    from blocklin.ml import LinearRegression, LogisticRegression

    cls = LinearRegression if family == "squared" else LogisticRegression
    est = cls(**p.model_dump())
    check = getattr(est, "_check_params", None)  # the estimator's own rules, before fit
    if check is not None:
        check()


def _regression_plan(family: str, p: Any, X: Any, y: Any, nfeat: int) -> StepPlan:
    from blocklin.ops.glm.gradient import loss_grad_spec
    from blocklin.ops.glm.moments import moments_spec
    from blocklin.ops.glm.newton import newton_spec
    from blocklin.ops.glm.passes import build_pass
    from blocklin.ops.glm.qr import qr_spec
    from blocklin.ops.inputs import as_matrix

    xm = as_matrix(X, "X")
    nx = int(xm.grid[1])
    sparse = xm.node.format == "csr"
    fi = bool(p.fit_intercept)
    coef = np.zeros((nfeat + int(fi), 1))
    l1 = p.reg_param * p.elastic_net_param > 0
    note = ""
    # Passes of the fit; the pipeline adds one for the summary and one for residuals.
    if family == "squared":
        from blocklin.ml.linear import auto_solver

        solver = p.solver
        if solver == "auto":
            solver, why = auto_solver(nfeat, l1, sparse)
            note = f"solver auto -> {solver}: {why}"
        auto_qr = p.solver == "auto" and solver == "qr"
        iterative = solver in ("lbfgs", "owlqn", "sketch")
        # Iterative solvers take the moments' diagonal only (O(p), not (p+2)²).
        specs: list[tuple[str, Any]] = [("moments pass",
                                         moments_spec(nfeat, 1, False, nx, not iterative))]
        if auto_qr or not iterative:  # normal falls back to QR when ill-conditioned
            specs.append(("TSQR pass", qr_spec(nfeat, 1, fi, False, nx)))
        if iterative:
            specs.append(("loss and gradient pass", loss_grad_spec("squared", coef, fi, False,
                                                                   nx)))
        fit = (3, 3 + p.max_iter) if p.solver == "sketch" else \
            (2, 2 + p.max_iter) if iterative else (1, 3)
        extra = (1, 2)  # the summary's pass; residuals' when the rows are few enough
    else:
        from blocklin.ml.logistic import MAX_NEWTON_COEFFICIENTS

        # A dry run does not know the classes: the binomial case.
        newton = p.solver == "newton" or (p.solver == "auto"
                                          and nfeat + 1 <= MAX_NEWTON_COEFFICIENTS)
        specs = [("moments pass", moments_spec(nfeat, 1, False, nx, False))]
        if newton:
            specs.append(("Newton pass (binomial)", newton_spec(coef, fi, False, nx)))
        if p.solver == "auto":
            note = (f"solver auto -> {'newton' if newton else 'lbfgs'}: " + (
                f"{nfeat + 1} coefficients: Newton's Hessian is {nfeat + 1}² (binomial)"
                if newton else f"{nfeat + 1:,} coefficients exceed {MAX_NEWTON_COEFFICIENTS}: "
                "Newton's Hessian is dense in the coefficients; L-BFGS keeps O(p) state"))
        specs.append(("loss and gradient pass", loss_grad_spec("binomial", coef, fi, False,
                                                               nx)))
        fit, extra, iterative = (1, 1 + p.max_iter), (1, 1), True
    with _aligned_label(X, y) as yy:
        plans = tuple((what, build_pass(spec, X, yy).plan) for what, spec in specs)
    return StepPlan((fit[0] + extra[0], fit[1] + extra[1]), plans, iterative, note)


# -- sketched cross product --------------------------------------------------------------------
def check_crossprod(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> StepPlan:
    """``sketched_crossprod``: A and B row-aligned; one pass over each."""
    from blocklin.ops import sketch
    from blocklin.ops.inputs import as_matrix

    a, b = as_matrix(inputs["A"]).shape, as_matrix(inputs["B"], "B").shape
    if a[0] != b[0]:
        raise ShapeMismatchError(f"A has {a[0]} rows but B has {b[0]}; (SA)ᵀ(SB) needs the "
                                 "same rows")
    both = sketch(inputs["A"], p.k, kind=p.kind, seed=p.seed).plan.merge(
        sketch(inputs["B"], p.k, kind=p.kind, seed=p.seed).plan)
    return StepPlan((1, 1), (("sketches of A and B", both),))
