"""The pipeline operators built on blocklin's sketches, SVD, TSQR and estimators.

Registered by plain imports (:func:`blocklin.pipelines.registry.registry` loads this
module on first use): a module that fails to import fails the registry with its own
error, never a silently shorter operator list. Parameters are explicit pydantic
models whose option fields are the ``Literal`` types of the functions they call
(:data:`~blocklin.ops._random.SketchKind`, :data:`~blocklin.types.Solver`, ...), each
defined once: nothing from a spec reaches a function unchecked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
from pydantic import Field

from blocklin.errors import InputValueError
from blocklin.executors.api import compute
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import ComputeOptions
from blocklin.ml import ALS, EASE, LinearRegression, LogisticRegression, TruncatedSVD
from blocklin.ops import SVDState, pca, randomized_svd, sketch, sketched_matmul, svd_update, tsqr_r
from blocklin.ops.sketch import SketchKind
from blocklin.ops.sketched_matmul import ProductKind
from blocklin.ops.svd import PCAResult, SVDMethod, TruncatedSVDResult
from blocklin.pipelines import checks
from blocklin.pipelines.holdout import (
    als_recall,
    ease_recall,
    holdout_split,
    ratings_csr,
    recall_arrays,
)
from blocklin.pipelines.registry import (
    Arrays,
    BuildContext,
    Builder,
    Operator,
    Params,
    UpdateContext,
)
from blocklin.types import LogisticFamily, LogisticSolver, Solver

__all__ = ["library_operators"]


# -- sketches ----------------------------------------------------------------------------------
class SketchParams(Params):
    k: int = Field(ge=1, description="sketch size")
    kind: SketchKind = "gaussian"
    seed: int = Field(0, ge=0)


class ProductParams(Params):
    k: int = Field(ge=1, description="sketch size")
    kind: ProductKind = "gaussian"
    seed: int = Field(0, ge=0)
    s: int = Field(8, ge=1, description="nonzeros per column (sparse_sign)")


def _sketch(inputs: Mapping[str, Any], p: SketchParams, ctx: BuildContext) -> Lazy:
    return sketch(inputs["A"], p.k, kind=p.kind, seed=p.seed)


def _sketched_crossprod(inputs: Mapping[str, Any], p: SketchParams,
                        ctx: BuildContext) -> np.ndarray:
    # The same seed draws the same S for both (one counter-based stream per row
    # granule), so (SA)ᵀ(SB) is an unbiased estimate of AᵀB.
    sa, sb = compute(sketch(inputs["A"], p.k, kind=p.kind, seed=p.seed),
                     sketch(inputs["B"], p.k, kind=p.kind, seed=p.seed),
                     compute_options=ctx.compute)
    out: np.ndarray = np.asarray(sa).T @ np.asarray(sb)
    return out


def _sketched_matmul(inputs: Mapping[str, Any], p: ProductParams, ctx: BuildContext) -> Lazy:
    return sketched_matmul(inputs["A"], inputs["B"], p.k, kind=p.kind, seed=p.seed, s=p.s)


# -- SVD and PCA -------------------------------------------------------------------------------
class SVDParams(Params):
    k: int = Field(ge=1, description="number of singular triplets")
    oversample: int = Field(10, ge=0)
    n_iter: int = Field(3, ge=0)
    seed: int = Field(0, ge=0)
    method: SVDMethod = "power"


def _svd(fn: Callable[..., TruncatedSVDResult | PCAResult]) -> Builder:
    """The builder calling ``fn``: :func:`~blocklin.ops.randomized_svd` or
    :func:`~blocklin.ops.pca`."""

    def build(inputs: Mapping[str, Any], p: SVDParams,
              ctx: BuildContext) -> TruncatedSVDResult | PCAResult:
        # Column statistics ride in the first pass: the total variance the report's
        # explained variance ratio is taken over.
        return fn(inputs["A"], p.k, oversample=p.oversample, n_iter=p.n_iter, seed=p.seed,
                  method=p.method, with_stats=True, compute_options=ctx.compute)

    return build


def _svd_arrays(res: TruncatedSVDResult | PCAResult) -> Arrays:
    out = {"singular_values": np.asarray(res.s), "components": np.asarray(res.Vt)}
    if getattr(res, "mean", None) is not None:
        out["mean"] = np.asarray(res.mean)
    if hasattr(res, "explained_variance"):
        out["explained_variance"] = np.asarray(res.explained_variance)
    if getattr(res, "total_variance", None) is not None:
        # Over all of A's variance (PCA: of the centered A), not over the top k.
        out["total_variance"] = np.asarray(res.total_variance)
        out["explained_variance_ratio"] = np.asarray(res.explained_variance_ratio)
    return out


def _svd_persist(res: TruncatedSVDResult, state_dir: str) -> None:
    SVDState.create(state_dir, res, overwrite=True)  # forms U: one more pass


def _svd_update(ctx: UpdateContext, p: SVDParams) -> Arrays:
    st = SVDState.open(ctx.state_dir)
    start, stop = ctx.rows
    if st.n_rows == start:  # not applied yet; after an interruption it may already be
        st = svd_update(st, rows=ctx.batch["A"], compute_options=ctx.compute)
    elif st.n_rows != stop:
        raise InputValueError(f"the SVD state in {ctx.state_dir} covers {st.n_rows} rows; "
                              f"cannot apply rows {start}..{stop}. Rerun the pipeline")
    return {"singular_values": np.asarray(st.s), "components": np.asarray(st.Vt)}


class TSVDParams(Params):
    n_components: int = Field(ge=1)
    oversample: int = Field(10, ge=0)
    n_iter: int = Field(3, ge=0)
    random_state: int = Field(0, ge=0)
    method: SVDMethod = "power"


def _tsvd_new(p: TSVDParams, comp: ComputeOptions) -> TruncatedSVD:
    return TruncatedSVD(**p.model_dump(), compute_options=comp)


def _tsvd_fit(inputs: Mapping[str, Any], p: TSVDParams, ctx: BuildContext) -> TruncatedSVD:
    return _tsvd_new(p, ctx.compute).fit(inputs["A"])


def _tsvd_arrays(est: TruncatedSVD) -> Arrays:
    out = {"singular_values": np.asarray(est.singular_values_),
           "components": np.asarray(est.components_),
           "explained_variance": np.asarray(est.explained_variance_),
           "explained_variance_ratio": np.asarray(est.explained_variance_ratio_),
           "n_samples_seen": np.asarray(est.n_samples_seen_),
           "n_features_in": np.asarray(est.n_features_in_)}
    # The column summary partial_fit merges new rows into (kept for refresh).
    for name in ("_mean", "_m2"):
        v = getattr(est, name, None)
        if v is not None:
            out["column" + name] = np.asarray(v)
    return out


def _tsvd_update(ctx: UpdateContext, p: TSVDParams) -> Arrays:
    prev = ctx.previous
    est = _tsvd_new(p, ctx.compute)
    est.components_ = prev["components"]
    est.singular_values_ = prev["singular_values"]
    est.n_features_in_ = int(prev["n_features_in"])
    est._set_stats(int(prev["n_samples_seen"]), prev["column_mean"], prev["column_m2"])
    est.partial_fit(ctx.batch["A"])
    return _tsvd_arrays(est)


def _tsqr_r(inputs: Mapping[str, Any], p: NoParams, ctx: BuildContext) -> Lazy:
    return tsqr_r(inputs["A"])


class NoParams(Params):
    pass


# -- recommenders ------------------------------------------------------------------------------
class _HoldoutParams(Params):
    """The held-out split of the report's recall@k (see :mod:`~blocklin.pipelines.holdout`).

    Not estimator parameters (``exclude``: left out of the estimator's and the saved
    model's parameters).
    """

    holdout: float = Field(0.0, ge=0, lt=1, exclude=True,
                           description="fraction of each user's interactions held out; the "
                                       "model is fitted on the rest (0: no split)")
    holdout_seed: int = Field(0, ge=0, exclude=True)
    recall_k: int = Field(10, ge=1, exclude=True, description="k of the reported recall@k")


class EASEParams(_HoldoutParams):
    l2: float = Field(500.0, gt=0, description="L2 penalty λ of (XᵀX + λI)⁻¹")


def _ease_fit(inputs: Mapping[str, Any], p: EASEParams, ctx: BuildContext) -> EASE:
    est = _estimator(EASE, p, ctx.compute)
    if not p.holdout:
        return est.fit(inputs["A"])
    train, held = holdout_split(ratings_csr(inputs["A"]), p.holdout, p.holdout_seed)
    est.fit(train)
    est._pipeline_recall = ease_recall(est.coef_, train, held, p.recall_k)
    return est


def _ease_arrays(est: EASE) -> Arrays:
    return {"coef": np.asarray(est.coef_), "gram": np.asarray(est.gram_),
            "n_samples_seen": np.asarray(est.n_samples_seen_),
            "n_features_in": np.asarray(est.n_features_in_),
            **recall_arrays(getattr(est, "_pipeline_recall", None))}


def _ease_update(ctx: UpdateContext, p: EASEParams) -> Arrays:
    """New users' rows: their Gram joins the stored one (old rows are not read). With a
    holdout, the batch is split alike and recall@k is measured on its users."""
    prev = ctx.previous
    est = _estimator(EASE, p, ctx.compute)
    est.gram_, est.coef_ = prev["gram"], prev["coef"]
    est.n_samples_seen_ = int(prev["n_samples_seen"])
    est.n_features_in_ = int(prev["n_features_in"])
    if not p.holdout:
        return _ease_arrays(est.partial_fit(ctx.batch["A"]))
    train, held = holdout_split(ratings_csr(ctx.batch["A"]), p.holdout, p.holdout_seed,
                                row_offset=ctx.rows[0])
    est.partial_fit(train)
    est._pipeline_recall = ease_recall(est.coef_, train, held, p.recall_k)
    ctx.record.update(recall_users="batch")
    return _ease_arrays(est)


class ALSParams(_HoldoutParams):
    rank: int = Field(10, ge=1)
    max_iter: int = Field(10, ge=1)
    reg_param: float = Field(0.1, ge=0)
    implicit_prefs: bool = False
    alpha: float = Field(1.0, ge=0)
    nonnegative: bool = False
    seed: int = Field(0, ge=0)


def _als_fit(inputs: Mapping[str, Any], p: ALSParams, ctx: BuildContext) -> ALS:
    return _als_run(_estimator(ALS, p, ctx.compute), inputs["A"], p)


def _als_run(est: ALS, ratings: Any, p: ALSParams) -> ALS:
    """Fit (on the training part when the spec holds some out; recall@k on the rest)."""
    if not p.holdout:
        return est.fit(ratings)
    train, held = holdout_split(ratings_csr(ratings), p.holdout, p.holdout_seed)
    est.fit(train)
    est._pipeline_recall = als_recall(est.user_factors_, est.item_factors_,
                                      est.item_counts_, train, held, p.recall_k)
    return est


def _als_arrays(est: ALS) -> Arrays:
    return {"user_factors": np.asarray(est.user_factors_),
            "item_factors": np.asarray(est.item_factors_),
            "user_counts": np.asarray(est.user_counts_),
            "item_counts": np.asarray(est.item_counts_),
            "n_features_in": np.asarray(est.n_features_in_),
            "objective_history": np.asarray(est.objective_history_),
            "n_iter": np.asarray(est.n_iter_), "warm_started": np.asarray(est.warm_started_),
            **recall_arrays(getattr(est, "_pipeline_recall", None))}


def _als_update(ctx: UpdateContext, p: ALSParams) -> Arrays:
    """Appended users: a fit of the whole input so far warm-started from the stored
    factors (the new users' solved from the stored item factors first)."""
    prev = ctx.previous
    est = _estimator(ALS, p, ctx.compute)
    est.set_params(warm_start=True)
    est.user_factors_, est.item_factors_ = prev["user_factors"], prev["item_factors"]
    ratings = ratings_csr(ctx.inputs["A"])[:ctx.rows[1]]
    _als_run(est, ratings, p)
    ctx.record.update(warm_started=bool(est.warm_started_), iterations=int(est.n_iter_),
                      users_before=int(prev["user_factors"].shape[0]),
                      users=int(ratings.shape[0]),
                      objective=float(est.objective_history_[-1]))
    return _als_arrays(est)


# -- regression --------------------------------------------------------------------------------
class _PenaltyParams(Params):
    """The MLlib objective's intercept and penalty, shared by both regressions."""

    fit_intercept: bool = True
    reg_param: float = Field(0.0, ge=0)
    elastic_net_param: float = Field(0.0, ge=0, le=1)
    standardization: bool = False


class LinearParams(_PenaltyParams):
    solver: Solver = "auto"
    max_iter: int = Field(100, ge=1)
    tol: float = Field(1e-6, gt=0)


class LogisticParams(_PenaltyParams):
    solver: LogisticSolver = "auto"
    family: LogisticFamily = "auto"
    max_iter: int = Field(100, ge=1)
    tol: float = Field(1e-6, gt=0)


_RESIDUAL_ROWS = 200_000  # residuals are kept for the report only up to this many rows
Regression = LinearRegression | LogisticRegression
Estimator = TypeVar("Estimator", LinearRegression, LogisticRegression, EASE, ALS)


def _estimator(cls: type[Estimator], p: Params, comp: ComputeOptions) -> Estimator:
    return cls(**p.model_dump(), compute_options=comp)


def _fit(cls: type[LinearRegression] | type[LogisticRegression]) -> Builder:
    def build(inputs: Mapping[str, Any], p: LinearParams | LogisticParams,
              ctx: BuildContext) -> Regression:
        # The fitted estimator is the step's value; it also carries what the report
        # shows (residuals, the training summary) as ``_pipeline_*`` attributes.
        est: Any = _estimator(cls, p, ctx.compute).fit(inputs["X"], inputs["y"])
        est._pipeline_residuals, est._pipeline_fitted = _residuals(est, inputs["X"],
                                                                   inputs["y"])
        # One more pass over the training data, so outputs carry R², RMSE, p-values, ...
        est._pipeline_summary = est.summary.as_arrays()
        fitted: Regression = est
        return fitted

    return build


def _residuals(est: Regression, X: Any, y: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Residuals and fitted values of a regression (the report's residual plots)."""
    if X.shape[0] > _RESIDUAL_ROWS or not hasattr(est, "predict") or hasattr(est, "classes_"):
        return None, None
    fitted = np.asarray(est.predict(X), dtype=np.float64)
    return np.asarray(y.to_numpy()[:, 0] - fitted), fitted


def _regression_arrays(est: Regression) -> Arrays:
    out: Arrays = {}
    for name in ("coef_", "intercept_", "objective_history_", "n_iter_", "sufficient_stats_",
                 "n_features_in_", "classes_"):
        v = getattr(est, name, None)
        if v is not None:
            out[name.rstrip("_")] = np.asarray(v)
    fitted: Any = est  # with the attributes :func:`_fit` sets, when it fitted est
    r = getattr(fitted, "_pipeline_residuals", None)
    if r is not None:
        out["residuals"] = r
        out["fitted"] = fitted._pipeline_fitted
    # A refresh (partial_fit) has no training summary: the rows are not read again.
    for k, v in (getattr(fitted, "_pipeline_summary", None) or {}).items():
        out[f"summary_{k}"] = v
    return out


def _linear_update(ctx: UpdateContext, p: LinearParams) -> Arrays:
    est = _estimator(LinearRegression, p, ctx.compute)
    est.sufficient_stats_ = ctx.previous["sufficient_stats"]
    est.n_features_in_ = int(ctx.previous["n_features_in"])
    est.partial_fit(ctx.batch["X"], ctx.batch["y"])
    return _regression_arrays(est)


def _normal_equations(p: LinearParams) -> bool:
    """partial_fit merges normal-equation statistics: no L1 term, solver normal or auto."""
    return bool(p.solver in ("auto", "normal") and p.reg_param * p.elastic_net_param == 0)


# -- the operators -----------------------------------------------------------------------------
def library_operators() -> Iterator[Operator]:
    """Every operator this module defines, in the order the registry lists them."""
    yield Operator("sketch", "random sketch SA (k × n) of A", ("A",), SketchParams, "small",
                   _sketch)
    yield Operator("sketched_crossprod", "(SA)ᵀ(SB) ≈ AᵀB with one shared sketch S",
                   ("A", "B"), SketchParams, "eager", _sketched_crossprod,
                   check=checks.check_crossprod)
    yield Operator("sketched_matmul", "sketched AᵀB with an a-posteriori error estimate "
                   "(one pass over A and B)", ("A", "B"), ProductParams, "small",
                   _sketched_matmul)
    yield Operator("randomized_svd", "top-k singular triplets (randomized; refresh: SVD row "
                   "update)", ("A",), SVDParams, "eager", _svd(randomized_svd),
                   extract=_svd_arrays, persist=_svd_persist, update=_svd_update,
                   check=checks.check_svd(centered=False))
    yield Operator("pca", "top-k principal components (randomized; refresh: recompute)", ("A",),
                   SVDParams, "eager", _svd(pca), extract=_svd_arrays,
                   check=checks.check_svd(centered=True))
    yield Operator("truncated_svd", "TruncatedSVD estimator: components, singular values, "
                   "explained variance (refresh: partial_fit row update)", ("A",),
                   TSVDParams, "eager", _tsvd_fit, extract=_tsvd_arrays,
                   update=_tsvd_update, check=checks.check_tsvd)
    yield Operator("tsqr", "R of the tall-skinny QR of A (one pass)", ("A",), NoParams,
                   "small", _tsqr_r)
    yield Operator("ease", "EASE item-item recommender from the exact Gram of a user x item "
                   "matrix (refresh: new users' Gram added, B recomputed)", ("A",), EASEParams,
                   "eager", _ease_fit, extract=_ease_arrays, update=_ease_update)
    yield Operator("als", "alternating least squares factors of a user x item ratings matrix "
                   "(MLlib's ALS; refresh: warm-started from the stored factors)", ("A",),
                   ALSParams, "eager", _als_fit, extract=_als_arrays, update=_als_update)
    yield Operator("linear_regression", "least squares / ridge / elastic net (MLlib "
                   "objective); refresh merges sufficient statistics", ("X", "y"),
                   LinearParams, "eager", _fit(LinearRegression), extract=_regression_arrays,
                   update=_linear_update, updatable=_normal_equations,
                   check=checks.check_regression("squared"))
    yield Operator("logistic_regression", "binomial / multinomial logistic regression",
                   ("X", "y"), LogisticParams, "eager", _fit(LogisticRegression),
                   extract=_regression_arrays, check=checks.check_regression("binomial"))
