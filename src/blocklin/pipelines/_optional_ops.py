"""Registrations of operators owned by other modules, each only if it imports.

Each entry names the module and attribute it needs; a missing one (not landed, or
an optional dependency absent) is skipped, so the registry never breaks on it.
Parameters are explicit pydantic models: nothing from a spec reaches a function
unchecked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from blocklin.pipelines import checks
from blocklin.pipelines.registry import (
    Arrays,
    BuildContext,
    Operator,
    Params,
    UpdateContext,
)

__all__ = ["discover"]

Finder = Callable[[str, str], Any]


# -- sketches ----------------------------------------------------------------------------------
class SketchParams(Params):
    k: int = Field(ge=1, description="sketch size")
    kind: Literal["gaussian", "rademacher", "sparse_sign", "countsketch", "srht"] = "gaussian"
    seed: int = Field(0, ge=0)


class ProductParams(Params):
    k: int = Field(ge=1, description="sketch size")
    kind: Literal["gaussian", "rademacher", "sparse_sign", "countsketch", "srht",
                  "coordinated"] = "gaussian"
    seed: int = Field(0, ge=0)
    s: int = Field(8, ge=1, description="nonzeros per column (sparse_sign)")


def _sketch(fn: Any) -> Callable[[Mapping[str, Any], Any, BuildContext], Any]:
    def build(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
        return fn(inputs["A"], p.k, kind=p.kind, seed=p.seed)

    return build


def _sketched_crossprod(fn: Any) -> Callable[[Mapping[str, Any], Any, BuildContext], Any]:
    def build(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
        from blocklin.executors.api import compute

        # The same seed draws the same S for both (one counter-based stream per row
        # granule), so (SA)ᵀ(SB) is an unbiased estimate of AᵀB.
        sa, sb = compute(fn(inputs["A"], p.k, kind=p.kind, seed=p.seed),
                         fn(inputs["B"], p.k, kind=p.kind, seed=p.seed), **ctx.compute)
        return np.asarray(sa).T @ np.asarray(sb)

    return build


# -- SVD and PCA -------------------------------------------------------------------------------
class SVDParams(Params):
    k: int = Field(ge=1, description="number of singular triplets")
    oversample: int = Field(10, ge=0)
    n_iter: int = Field(2, ge=0)
    seed: int = Field(0, ge=0)
    method: Literal["power", "krylov", "gram"] = "power"


def _svd(fn: Any) -> Callable[[Mapping[str, Any], Any, BuildContext], Any]:
    def build(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
        # Column statistics ride in the first pass: the total variance the report's
        # explained variance ratio is taken over.
        extra = {"with_stats": True} if _takes(fn, "with_stats") else {}
        return fn(inputs["A"], p.k, oversample=p.oversample, n_iter=p.n_iter, seed=p.seed,
                  method=p.method, **extra, **ctx.compute)

    return build


def _svd_arrays(res: Any) -> Arrays:
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


def _svd_persist(svd_state: Any) -> Callable[[Any, str], None]:
    def persist(res: Any, state_dir: str) -> None:
        svd_state.create(state_dir, res, overwrite=True)  # forms U: one more pass

    return persist


def _svd_update(svd_state: Any, update: Any) -> Callable[[UpdateContext, Any], Arrays]:
    def apply(ctx: UpdateContext, p: Any) -> Arrays:
        from blocklin.errors import InputValueError

        st = svd_state.open(ctx.state_dir)
        start, stop = ctx.rows
        if st.n_rows == start:  # not applied yet; after an interruption it may already be
            st = update(st, rows=ctx.batch["A"], **ctx.compute)
        elif st.n_rows != stop:
            raise InputValueError(f"the SVD state in {ctx.state_dir} covers {st.n_rows} rows; "
                                  f"cannot apply rows {start}..{stop}. Rerun the pipeline")
        return {"singular_values": np.asarray(st.s), "components": np.asarray(st.Vt)}

    return apply


# -- regression --------------------------------------------------------------------------------
class LinearParams(Params):
    fit_intercept: bool = True
    reg_param: float = Field(0.0, ge=0)
    elastic_net_param: float = Field(0.0, ge=0, le=1)
    standardization: bool = False
    solver: Literal["auto", "normal", "qr", "lbfgs", "owlqn", "sketch"] = "auto"
    max_iter: int = Field(100, ge=1)
    tol: float = Field(1e-6, gt=0)


class LogisticParams(Params):
    fit_intercept: bool = True
    reg_param: float = Field(0.0, ge=0)
    elastic_net_param: float = Field(0.0, ge=0, le=1)
    standardization: bool = False
    solver: Literal["auto", "newton", "lbfgs", "owlqn"] = "auto"
    family: Literal["auto", "binomial", "multinomial"] = "auto"
    max_iter: int = Field(100, ge=1)
    tol: float = Field(1e-6, gt=0)


_RESIDUAL_ROWS = 200_000  # residuals are kept for the report only up to this many rows


def _estimator(cls: Any, p: Any, comp: Mapping[str, Any]) -> Any:
    extra = {k: comp[k] for k in ("address", "max_task_memory", "num_workers", "connect_timeout",
                                  "worker_timeout", "security") if comp.get(k)}
    if comp.get("device", "cpu") != "cpu":
        extra["device"] = comp["device"]
    return cls(**p.model_dump(), executor=comp.get("executor", "dask"),
               work_dir=comp.get("work_dir"), compute_options=extra or None)


def _fit(cls: Any) -> Callable[[Mapping[str, Any], Any, BuildContext], Any]:
    def build(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
        est = _estimator(cls, p, ctx.compute).fit(inputs["X"], inputs["y"])
        est._pipeline_residuals, est._pipeline_fitted = _residuals(est, inputs["X"],
                                                                   inputs["y"])
        # One more pass over the training data, so outputs carry R², RMSE, p-values, ...
        est._pipeline_summary = est.summary.as_arrays()
        return est

    return build


def _residuals(est: Any, X: Any, y: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Residuals and fitted values of a regression (the report's residual plots)."""
    if X.shape[0] > _RESIDUAL_ROWS or not hasattr(est, "predict") or hasattr(est, "classes_"):
        return None, None
    fitted = np.asarray(est.predict(X), dtype=np.float64)
    return np.asarray(y.to_numpy()[:, 0] - fitted), fitted


def _regression_arrays(est: Any) -> Arrays:
    out: Arrays = {}
    for name in ("coef_", "intercept_", "objective_history_", "n_iter_", "sufficient_stats_",
                 "n_features_in_", "classes_"):
        v = getattr(est, name, None)
        if v is not None:
            out[name.rstrip("_")] = np.asarray(v)
    r = getattr(est, "_pipeline_residuals", None)
    if r is not None:
        out["residuals"] = r
        out["fitted"] = est._pipeline_fitted
    # A refresh (partial_fit) has no training summary: the rows are not read again.
    for k, v in (getattr(est, "_pipeline_summary", None) or {}).items():
        out[f"summary_{k}"] = v
    return out


def _linear_update(cls: Any) -> Callable[[UpdateContext, Any], Arrays]:
    def apply(ctx: UpdateContext, p: Any) -> Arrays:
        est = _estimator(cls, p, ctx.compute)
        est.sufficient_stats_ = ctx.previous["sufficient_stats"]
        est.n_features_in_ = int(ctx.previous["n_features_in"])
        est.partial_fit(ctx.batch["X"], ctx.batch["y"])
        return _regression_arrays(est)

    return apply


def _normal_equations(p: Any) -> bool:
    """partial_fit merges normal-equation statistics: no L1 term, solver normal or auto."""
    return bool(p.solver in ("auto", "normal") and p.reg_param * p.elastic_net_param == 0)


def _tsqr_r(fn: Any) -> Callable[[Mapping[str, Any], Any, BuildContext], Any]:
    def build(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
        return fn(inputs["A"])

    return build


class NoParams(Params):
    pass


def _takes(fn: Any, *names: str) -> bool:
    """Whether ``fn`` accepts these keywords (registered only with the signature we call)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names)


def discover(find: Finder) -> Iterator[Operator]:
    """Yield an :class:`Operator` for every optional operator that is importable."""
    sketch = find("blocklin.ops", "sketch")
    if sketch is not None:
        yield Operator("sketch", "random sketch SA (k × n) of A", ("A",), SketchParams, "small",
                       _sketch(sketch))
        yield Operator("sketched_crossprod", "(SA)ᵀ(SB) ≈ AᵀB with one shared sketch S",
                       ("A", "B"), SketchParams, "eager", _sketched_crossprod(sketch),
                       check=checks.check_crossprod)
    smm = find("blocklin.ops", "sketched_matmul")
    if smm is not None and _takes(smm, "kind", "seed", "s"):
        yield Operator("sketched_matmul", "sketched AᵀB with an a-posteriori error estimate "
                       "(one pass over A and B)", ("A", "B"), ProductParams, "small",
                       lambda i, p, c: smm(i["A"], i["B"], p.k, kind=p.kind, seed=p.seed, s=p.s))
    yield from _svd_ops(find)
    tsqr_r = find("blocklin.ops", "tsqr_r")
    if tsqr_r is not None:
        yield Operator("tsqr", "R of the tall-skinny QR of A (one pass)", ("A",), NoParams,
                       "small", _tsqr_r(tsqr_r))
    yield from _ml_ops(find)


def _svd_ops(find: Finder) -> Iterator[Operator]:
    state, update = find("blocklin.ops", "SVDState"), find("blocklin.ops", "svd_update")
    updatable = state is not None and update is not None
    for name in ("randomized_svd", "pca"):
        fn = find("blocklin.ops", name)
        if fn is None:
            continue
        incremental = updatable and name == "randomized_svd"
        yield Operator(
            name, f"top-k {'principal components' if name == 'pca' else 'singular triplets'} "
            "(randomized; refresh: " + ("SVD row update)" if incremental else "recompute)"),
            ("A",), SVDParams, "eager", _svd(fn), extract=_svd_arrays,
            persist=_svd_persist(state) if incremental else None,
            update=_svd_update(state, update) if incremental else None,
            check=checks.check_svd(centered=name == "pca"))
    tsvd = find("blocklin.ml", "TruncatedSVD")
    if tsvd is not None:
        yield Operator("truncated_svd", "TruncatedSVD estimator: components, singular values, "
                       "explained variance (refresh: partial_fit row update)", ("A",),
                       TSVDParams, "eager", _tsvd_fit(tsvd), extract=_tsvd_arrays,
                       update=_tsvd_update(tsvd), check=checks.check_tsvd)


class TSVDParams(Params):
    n_components: int = Field(ge=1)
    oversample: int = Field(10, ge=0)
    n_iter: int = Field(2, ge=0)
    random_state: int = Field(0, ge=0)
    method: Literal["power", "krylov", "gram"] = "power"


def _tsvd_new(cls: Any, p: Any, comp: Mapping[str, Any]) -> Any:
    return cls(**p.model_dump(), executor=comp.get("executor", "dask"),
               work_dir=comp.get("work_dir"))


def _tsvd_fit(cls: Any) -> Callable[[Mapping[str, Any], Any, BuildContext], Any]:
    def build(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
        return _tsvd_new(cls, p, ctx.compute).fit(inputs["A"])

    return build


def _tsvd_arrays(est: Any) -> Arrays:
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


def _tsvd_update(cls: Any) -> Callable[[UpdateContext, Any], Arrays]:
    def apply(ctx: UpdateContext, p: Any) -> Arrays:
        prev = ctx.previous
        est = _tsvd_new(cls, p, ctx.compute)
        est.components_ = prev["components"]
        est.singular_values_ = prev["singular_values"]
        est.n_features_in_ = int(prev["n_features_in"])
        est._set_stats(int(prev["n_samples_seen"]), prev["column_mean"], prev["column_m2"])
        est.partial_fit(ctx.batch["A"])
        return _tsvd_arrays(est)

    return apply


def _ml_ops(find: Finder) -> Iterator[Operator]:
    lin = find("blocklin.ml", "LinearRegression")
    if lin is not None:
        yield Operator("linear_regression", "least squares / ridge / elastic net (MLlib "
                       "objective); refresh merges sufficient statistics", ("X", "y"),
                       LinearParams, "eager", _fit(lin), extract=_regression_arrays,
                       update=_linear_update(lin), updatable=_normal_equations,
                       check=checks.check_regression("squared"))
    log = find("blocklin.ml", "LogisticRegression")
    if log is not None:
        yield Operator("logistic_regression", "binomial / multinomial logistic regression",
                       ("X", "y"), LogisticParams, "eager", _fit(log),
                       extract=_regression_arrays, check=checks.check_regression("binomial"))

