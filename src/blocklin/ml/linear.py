"""``LinearRegression``: MLlib's least squares (OLS, ridge, lasso, elastic net) over blocks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from blocklin.errors import InputValueError, format_bytes
from blocklin.executors.options import OptionsLike
from blocklin.executors.progress import step as progress_step
from blocklin.ml._estimator import (
    check_common_params,
    estimator_options,
    features,
    labels_1d,
    predict_margin,
    training_summary,
)
from blocklin.ml._iterative import iterative_fit
from blocklin.ml._lsqr import sketch_solve
from blocklin.ml._params import FitParams, penalties
from blocklin.ml._progress import reports
from blocklin.ml._qr_solve import exact_solve, qr_solve
from blocklin.ml._solvers import (
    QuadSolution,
    TrainData,
    coordinate_descent,
    solve_quadratic,
    training_data,
)
from blocklin.ml._summary import LinearRegressionSummary, linear_summary
from blocklin.ml.persist import SaveMixin
from blocklin.ops.glm.conditioning import ls_condition
from blocklin.ops.glm.gradient import LossGradLayout, loss_grad_spec
from blocklin.ops.glm.moments import Moments, merge_moments, moments_spec
from blocklin.ops.glm.passes import PassSpec
from blocklin.ops.glm.qr import QRLayout, qr_spec
from blocklin.ops.glm.refine import RefineLayout, refine_spec
from blocklin.storage.stores import hide_options
from blocklin.types import LABEL_SCALINGS, SOLVERS, LabelScaling, Solver, parse_option

__all__ = ["LinearRegression", "auto_solver"]

#: MLlib's limit for the normal-equation solver (``WeightedLeastSquares.MAX_NUM_FEATURES``).
MAX_NORMAL_FEATURES = 4096
#: ``auto`` refines the normal-equation solution (seminormal iterative refinement, one or
#: two passes; TSQR when even that cannot converge) when the equilibrated normal
#: equations have a reciprocal condition estimate below this: their error grows with
#: κ(XᵀX) = κ(X)², QR's with κ(X), and past κ(XᵀX) ≈ 10³ the normal equations lose
#: more than half a digit against QR.
AUTO_QR_RCOND = 1e-3
#: Up to this many features ``auto`` solves by TSQR (with the statistics in the same pass).
AUTO_QR_MAX_FEATURES = 64
#: The TSQR solution stands when the least-squares condition number
#: κ_LS = κ·(1 + κ·‖r‖/(‖T‖·‖β‖)) of the column-equilibrated triangular factor T, in
#: 2-norms (the driver's κ and ‖T‖ are exact: singular values), is at most this. u·κ_LS
#: bounds the normwise relative error of any backward-stable solve (the one-pass TSQR
#: included): below 10³ it has lost less than three of double's sixteen digits. Above
#: it, TSQR and Householder QR each lose up to log10(κ_LS) digits in their own rounding
#: pattern, so their coefficients may differ by a digit or more (NIST's Longley,
#: Wampler1-5 and Filip sit at κ_LS from 2·10³ to 10¹⁰; Norris and Pontius at 3 and 18):
#: ``qr`` then solves from the exact Gram gathered in the same pass, ``auto`` makes a
#: refinement pass.
QR_REFINE_COND = 1e3
#: The ``qr`` solver has a panel form its exact Gram when the panel's own κ_LS estimate
#: (2-norm, by power and inverse iteration: :func:`blocklin.ops.glm.conditioning.conditioning`)
#: exceeds QR_REFINE_COND / QR_PANEL_MARGIN: a panel's κ_LS is about the whole problem's
#: or larger (fewer rows), and the margin absorbs the estimate's spread (it reads at
#: least 0.8 of κ₂), so an ill-conditioned problem almost always finds every panel's
#: Gram at hand, and a well-conditioned one (a Gaussian design with a noisy label:
#: κ_LS of a few units per panel) never pays for one.
QR_PANEL_MARGIN = 10.0
#: Largest condition number of the equilibrated Hessian (κ(H) = κ(X)², centred) for
#: which ``auto``'s seminormal refinement of a normal-equation fit takes one pass: each
#: step multiplies the error by about u·κ(H), so one step from the normal equations'
#: u·κ(H) leaves (u·κ(H))² ≈ u at 10⁸.
REFINE_ONE_STEP_MAX_KAPPA = 1e8
#: Largest κ(H) at which refinement is tried at all, with two passes: (u·κ(H))³ ≈ 10⁻¹²
#: at 10¹², within QR's u·κ(X) = 10⁻¹⁰; beyond it ``auto`` solves by TSQR instead.
REFINE_MAX_KAPPA = 1e12


def auto_solver(n_features: int, l1: bool, sparse: bool) -> tuple[str, str]:
    """The solver ``auto`` picks, and why (what a dry run's ``explain`` prints).

    Parameters
    ----------
    n_features : int
        Columns of X.
    l1 : bool
        Whether the penalty has an L1 part (λα > 0).
    sparse : bool
        Whether X is CSR (stored or in memory): its passes keep the panels sparse,
        except TSQR's Householder fallback (ill-conditioned panels), which densifies.

    Returns
    -------
    (solver, reason) : (str, str)
        ``solver`` one of ``normal``, ``qr``, ``lbfgs``, ``owlqn``.
    """
    p = n_features
    if p > MAX_NORMAL_FEATURES:
        gram = format_bytes(8 * (p + 2) ** 2)
        chosen = "owlqn" if l1 else "lbfgs"
        return chosen, (f"{p:,} features: the normal equations' (p+2)² statistics would take "
                        f"{gram} per task and on the driver (dense in the feature count "
                        f"whatever X's sparsity); {chosen} keeps O(p) state and one "
                        "gradient pass per evaluation")
    if l1:
        return "normal", ("L1 penalty: coordinate descent on the one-pass statistics "
                          f"({format_bytes(8 * (p + 2) ** 2)}), no further pass")
    if p <= AUTO_QR_MAX_FEATURES and not sparse:
        return "qr", (f"{p} features: one TSQR pass, as accurate as Householder "
                      "(statistics in the same pass)")
    why = (f"{p} features, CSR X: the statistics are a sparse weighted Gram (TSQR would "
           "densify ill-conditioned panels)") if sparse else f"{p} features"
    return "normal", (why + "; one pass of normal-equation statistics, refined when "
                      "ill-conditioned")


@dataclass
class _Fit:
    coef: np.ndarray
    intercept: float
    history: list[float]
    iterations: int
    solver: str
    cov_unscaled: np.ndarray | None = None  # inverse of [X 1]ᵀW[X 1] (normal/qr)
    rcond: float = 1.0
    y_center: float = 0.0  # a label-mean estimate for the summary's sums


class LinearRegression(SaveMixin, RegressorMixin, BaseEstimator):
    """Linear least squares with elastic-net penalty, as Spark MLlib's ``LinearRegression``.

    Minimizes MLlib's documented objective

        1/(2W)·Σᵢ wᵢ(yᵢ − xᵢᵀβ − b)² + λ·(α‖β‖₁ + (1−α)/2·‖β‖²)

    with W = Σᵢ wᵢ (the row count without weights), λ = ``reg_param`` and
    α = ``elastic_net_param``.

    Parameters
    ----------
    fit_intercept : bool
        Fit b (never penalized). The intercept is handled on the statistics (or as a
        column added inside each task for ``qr``); no augmented copy of X is written.
    reg_param : float
        λ ≥ 0.
    elastic_net_param : float
        α in [0, 1]: 0 is ridge, 1 is lasso.
    standardization : bool
        Penalize coefficients of standardized features (λα·σⱼ|βⱼ| and λ(1−α)/2·σⱼ²βⱼ²,
        σⱼ the unbiased weighted standard deviation), as MLlib's ``standardization``;
        coefficients are always returned on the original scale.
    solver : {"auto", "normal", "qr", "lbfgs", "owlqn", "sketch"}
        ``normal``: one pass for the weighted normal-equation statistics, then Cholesky
        (a truncated eigen-solve for singular systems). Ridge comes straight from the
        statistics, and L1/elastic net by coordinate descent on them: with the Gram
        matrix in memory that is the pass-efficient way, no further pass at all
        (MLlib's normal solver runs OWL-QN there; its ``l-bfgs`` one pass per
        evaluation). ``qr``: one pass of TSQR of √w·[X 1 y] (intercept column and
        weights applied inside each task), backward stable like a Householder solve;
        the residual sum of squares is R's last diagonal entry squared. A panel whose
        centred design is well conditioned (2-norm condition estimate with unit
        columns at most 10, ``GRAM_R_BELOW``) takes R from the Cholesky factor of its
        Gram (one BLAS-3 product on the read buffer, a third of Householder's flops;
        error κ²·u instead of κ·u, so at most a digit) and its residual norm from the
        explicitly formed panel residual, which keeps every digit of a near-exact fit.
        Other panels are copied once, column-major, and LAPACK factors them in place
        (``dgeqrt``, blocked Householder with recursive BLAS-3 panels, for panels of at
        least 48 columns: 2-4x faster than ``dgeqrf``); the R factors meet in a
        fixed-order tree of fan-in 8. Cost: the read plus, per panel, a Gram
        (well-conditioned panels) or a Householder QR (2·m·c² flops, c = p + 2: about
        twice a Gram's, at LAPACK's lower rate), then O(c³) on the driver. A panel
        whose own R is ill-conditioned (2-norm
        least-squares condition estimate above 10²) also forms its Gram exactly, in
        double-double (BLAS products of error-free column slices, 6 to 16 times a plain
        Gram's flops as its κ asks). When the whole problem is ill-conditioned
        (κ_LS above 10³, ``QR_REFINE_COND``) β comes from those Grams by a double-double
        Cholesky solve, to about κ(X)²·10⁻³², beyond a
        Householder solve's κ(X)·10⁻¹⁶ (NIST StRD's hardest sets to their data's
        rounding) without another pass. Only when some panels were well conditioned
        on their own does an ill-conditioned problem take a second pass, one step of
        iterative refinement with a double-double residual. Ridge by stacking
        (by the Gram's diagonal in the exact solve), no L1. ``lbfgs``: L-BFGS, one
        pass per evaluation (OWL-QN when α·λ > 0, as MLlib). ``owlqn``: OWL-QN.
        ``sketch``: the QR of a sparse-sign sketch of the centered X (4p rows) as
        preconditioner, then LSQR over X itself (not the normal equations; one pass per
        iteration, no n-vector kept between passes) to ``tol``, the error halving at each
        iteration whatever κ(X); ridge as stacked rows, no L1. ``auto``
        (:func:`auto_solver`): with at most 64 features ``qr`` (its statistics computed
        in the same pass; ``normal`` for CSR X, whose TSQR densifies ill-conditioned
        panels); up
        to 4096 features (MLlib's limit) ``normal``; when the equilibrated normal
        equations are too ill-conditioned (reciprocal condition below 1e-3) to match
        QR's accuracy, one or two passes of seminormal iterative refinement (exact
        residuals, the Cholesky factor of the centred statistics), or ``qr`` when
        κ(XᵀWX) (centred, equilibrated) > 10¹²; with more features ``owlqn`` or
        ``lbfgs``, whose memory is O(p) where the statistics are (p + 2)² (20 GB at
        50,000 features). CSR X stays sparse in every pass: moments and refinement are
        sparse products and a sparse weighted Gram, L-BFGS/OWL-QN and LSQR sparse
        products, TSQR the sparse Gram's R of well-conditioned panels (its Householder
        fallback alone densifies a panel); no dense m_b × p panel, no densified
        ``X − 1μᵀ``.
    max_iter : int
        Iterations of ``lbfgs``/``owlqn``/``sketch`` (each costs about one pass).
    tol : float
        Stopping tolerance of the iterative solvers. ``lbfgs``/``owlqn`` stop at the
        first iterate whose gradient (OWL-QN: pseudo-gradient, the minimum-norm
        subgradient) in the solver's coordinates (standardized features, centred
        intercept) has ‖·‖_∞ ≤ tol·‖g₀‖_∞, g₀ the gradient at the start (the
        intercept-only model); or at the rounding floor of the passes (no step lowers
        the objective; or, over 10 iterations, no new smallest gradient and no fall of
        the objective beyond 64 units of rounding); or after ``max_iter`` iterations.
        The relative coefficient error is then about tol·κ, κ the condition number of
        the Hessian in those coordinates (about 1e-9 at tol = 1e-10 on 30 features with
        correlation 0.9). MLlib stops on a relative decrease of the objective instead,
        which leaves an error of order √tol. For ``sketch`` LSQR's atol = btol.
    label_scaling : {"none", "mllib"}
        ``mllib`` reproduces MLlib's internal fit on the label divided by its standard
        deviation σ_y: its coefficients then minimize the objective above with the L2
        term divided by σ_y. With ``none`` (default) blocklin minimizes the documented
        objective; both agree when σ_y = 1 or λ(1−α) = 0.
    state_path : str, optional
        Where ``fit``/``partial_fit`` keep the sufficient statistics (a zarr array) so
        that a later process can refresh the model with new rows only.
    executor : {"dask", "spark"} or Executor
        Engine for stored (BlockMatrix, zarr path, dask) inputs; in-memory numpy input
        runs the same kernels in process.
    work_dir : str, optional
        Directory for intermediate arrays (default ``BLOCKLIN_WORK_DIR``).
    compute_options : ComputeOptions or dict, optional
        How and where the passes run (:class:`blocklin.ComputeOptions`, or a dict of its
        fields: ``client``, ``spark``, ``address``, ``max_task_memory``,
        ``cache_bytes``...); ``executor``, ``work_dir`` and ``storage_options`` fill the
        fields it leaves unset. Solvers that pass over the data many times (``lbfgs``,
        ``owlqn``, ``sketch``) run their passes with ``cache_bytes`` (unset: ``"auto"``):
        workers keep the decoded blocks of X, y and w in memory and later passes read
        only what did not fit; ``0`` re-reads zarr every pass.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``...) for ``state_path`` and
        ``work_dir`` when they are URLs; never written or printed (``repr`` names the
        keys only).
    progress : bool, callable or ProgressSink
        Report every pass over the data, as scikit-learn's ``verbose`` (off by default):
        ``True`` prints each pass on stderr (a bar on a terminal, plain lines otherwise),
        labelled by method and step (``LinearRegression.fit · lbfgs evaluation 7 · pass 8``); a callable
        ``progress(stage, done, total)`` or a sink receives them instead (see
        :mod:`blocklin.executors.progress`). With False an enclosing
        ``progress_to`` block (the CLI's) still hears them.

    Attributes
    ----------
    coef_ : ndarray (n_features,)
    intercept_ : float
    solver_ : str
        The solver that produced the fit (``auto`` resolved).
    n_iter_ : int
    n_passes_ : int
        Passes over the training data ``fit`` made.
    objective_history_ : list of float
    sufficient_stats_ : ndarray
        Packed weighted statistics (normal solver): see :func:`blocklin.ops.glm.normal_stats`.

    Notes
    -----
    Passes: ``normal`` 1; ``qr`` 1 (2 in the mixed case above; ``n_iter_`` counts the
    solves: 1 or 2), its per-task memory the read blocks, one column-major copy of the
    panel ``√w·[X 1 y]`` (m_b × (p + 2), factored in place) and its partial: R and, for
    ``qr``, room for the double-double Gram ((3p + 8) × (p + 2)); panels that form the
    exact Gram copy the panel once more (plus 4096-row slice buffers); ``auto`` with at
    most 64 features a TSQR pass, plus a refinement pass when R's condition calls for
    it, else 1 (2 or 3 when it refines, 3 or 4 when it falls back to ``qr``);
    ``lbfgs``/``owlqn`` 1 + one per function evaluation; ``sketch`` 3 + one per
    iteration; ``partial_fit`` 1 over the new rows only.
    Per-task memory of the other solvers is a row panel, one float64 copy of it and a
    few (p+2)² matrices.

    Examples
    --------
    >>> model = LinearRegression(reg_param=0.1).fit(bl.open("X.zarr"), y)
    >>> model.coef_, model.summary.r2
    """

    def __init__(self, fit_intercept: bool = True, reg_param: float = 0.0,
                 elastic_net_param: float = 0.0, standardization: bool = False,
                 solver: Solver = "auto", max_iter: int = 100, tol: float = 1e-6,
                 label_scaling: LabelScaling = "none", state_path: str | None = None,
                 executor: Any = "dask", work_dir: str | None = None,
                 compute_options: OptionsLike = None,
                 storage_options: Mapping[str, Any] | None = None,
                 progress: Any = False) -> None:
        self.fit_intercept = fit_intercept
        self.reg_param = reg_param
        self.elastic_net_param = elastic_net_param
        self.standardization = standardization
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.label_scaling = label_scaling
        self.state_path = state_path
        self.executor = executor
        self.work_dir = work_dir
        self.compute_options = compute_options
        # Wrapped so the estimator's repr names the option keys, never their values
        # (anything else is kept as given and refused when used: __init__ never raises).
        self.storage_options = hide_options(storage_options)
        self.progress = progress

    # ------------------------------------------------------------------ public API
    @reports("fit")
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LinearRegression:
        """Fit on X (numpy, scipy sparse, dask, BlockMatrix or zarr path) and labels y.

        Raises
        ------
        InputValueError, InputDtypeError
            For bad parameters or input, before any pass over the data.
        """
        solver = self._check_params()
        Xv = features(self, X, reset=True)
        yv = labels_1d(y, Xv)
        with training_data(Xv, yv, sample_weight, estimator_options(self)) as data:
            fit, stats = self._fit_data(data, solver)
            self.n_passes_ = data.passes
        self._set_fit(fit)
        if stats is not None:
            self.sufficient_stats_ = stats
            self._save_state(stats)
        self._train: tuple[Any, Any, Any] | None = (X, y, sample_weight)
        self._summary: LinearRegressionSummary | None = None
        return self

    @reports("partial_fit")
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> LinearRegression:
        """Update an OLS/ridge fit with new rows, reading only those rows (one pass).

        The new rows' statistics are merged into the stored ones (``state_path`` or
        ``sufficient_stats_``) by Chan's pairwise update, so the result equals a refit on
        all rows to rounding. Only ``solver`` ``normal``/``auto`` without L1 qualify.

        Raises
        ------
        InputValueError
            For L1 penalties or another solver.
        """
        solver = self._check_params()
        l1 = self.reg_param * self.elastic_net_param
        if solver not in ("auto", "normal"):
            raise InputValueError(f"partial_fit updates normal-equation fits; solver is {solver!r}."
                                  " Use solver='normal' or 'auto'")
        old = self._load_state()
        Xv = features(self, X, reset=old is None)
        yv = labels_1d(y, Xv)
        with training_data(Xv, yv, sample_weight, estimator_options(self)) as data:
            new = data.run(moments_spec(data.n_features, 1, data.has_weights,
                                        data.x_col_blocks, True))
            self.n_passes_ = data.passes
        d = data.n_features + 1
        stats = new if old is None else merge_moments(old, new, d)
        fit = self._solve_stats(stats, "normal", coordinate=l1 > 0)
        self._set_fit(fit)
        self.sufficient_stats_ = stats
        self._save_state(stats)
        self._train = None
        self._summary = None
        return self

    @reports("predict")
    def predict(self, X: Any) -> np.ndarray:
        """Predictions Xβ + b (an n-vector; one pass over stored X)."""
        check_is_fitted(self, "coef_")
        Xv = features(self, X, reset=False)
        return predict_margin(Xv, self.coef_[:, None], self.intercept_, self)[:, 0]

    @property
    @reports("summary")
    def summary(self) -> LinearRegressionSummary:
        """Training summary (one more pass over the training data, on first access)."""
        return training_summary(self, "no training summary after partial_fit; call fit",
                                labels_1d, lambda data: linear_summary(self, data))

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> str:
        check_common_params(self)
        parse_option("label_scaling", self.label_scaling, LABEL_SCALINGS)
        solver = parse_option("solver", self.solver, SOLVERS)
        l1 = self.reg_param * self.elastic_net_param > 0
        if l1 and solver in ("qr", "sketch"):
            raise InputValueError(f"solver {solver!r} has no L1 penalty; use 'normal' (coordinate "
                                  "descent on the statistics) or 'owlqn'")
        return solver

    def _fit_data(self, data: TrainData, solver: str) -> tuple[_Fit, np.ndarray | None]:
        p = data.n_features
        l1 = self.reg_param * self.elastic_net_param > 0
        auto_qr = False
        if solver == "auto":
            solver, _ = auto_solver(p, l1, data.sparse)
            auto_qr = solver == "qr"
            solver = "normal" if auto_qr else solver
        auto = self.solver == "auto" and not l1
        if auto_qr:
            # Few features: TSQR costs little more than the Gram (the pass is memory-bound)
            # and is as accurate as a Householder solve; the statistics ride along.
            spec = moments_spec(p, 1, data.has_weights, data.x_col_blocks, True)
            return self._fit_qr(data, spec)
        if solver == "normal":
            with progress_step("normal equations"):
                stats = data.run(moments_spec(p, 1, data.has_weights, data.x_col_blocks, True))
            fit = self._solve_stats(stats, "normal", coordinate=l1)
            if auto and fit.rcond < AUTO_QR_RCOND:
                mom = Moments.from_packed(stats, p + 1)
                refined = self._refine_normal(data, fit, mom)
                fit = refined if refined is not None else self._fit_qr(data, None, mom)[0]
            return fit, stats
        if solver == "qr":
            return self._fit_qr(data, None, exact=True)
        if solver == "sketch":
            with data.cached():  # moments, sketch, LSQR's start, one pass per iteration
                sk = sketch_solve(FitParams.of(self), data)
            return _Fit(sk.coef[:p], float(sk.coef[p]) if self.fit_intercept else 0.0,
                        sk.history, sk.iterations, "sketch",
                        y_center=float(sk.moments.mean[p])), None
        family_solver = "owlqn" if (solver == "owlqn" or l1) else "lbfgs"
        with data.cached():  # one pass per function evaluation
            res = iterative_fit(FitParams.of(self), data, "squared", family_solver, 1)
        return _Fit(res.coef[:p, 0], float(res.coef[p, 0]) if self.fit_intercept else 0.0,
                    res.history, len(res.history) - 1, family_solver,
                    y_center=float(res.moments.mean[p])), None

    def _problem(self, mom: Moments) -> tuple[np.ndarray, np.ndarray, float, np.ndarray,
                                             np.ndarray]:
        """The quadratic ½βᵀAβ − bᵀβ + yy/2 and penalty vectors, per unit weight."""
        p = mom.d - 1
        C, mu, W = mom.C, mom.mean, mom.W
        A = C[:p, :p] / W
        b = C[:p, p] / W
        yy = C[p, p] / W
        if not self.fit_intercept:
            A = A + np.outer(mu[:p], mu[:p])
            b = b + mu[:p] * mu[p]
            yy = yy + mu[p] ** 2
        l1, l2 = penalties(FitParams.of(self), mom.std()[:p], float(mom.std()[p]),
                           abs(float(mu[p])))
        return A, b, float(yy), l1, l2

    def _solve_stats(self, stats: np.ndarray, solver: str, coordinate: bool) -> _Fit:
        mom = Moments.from_packed(stats, stats.shape[0] - 2)
        A, b, yy, l1, l2 = self._problem(mom)
        sol: QuadSolution = coordinate_descent(A, b, l1, l2) if coordinate \
            else solve_quadratic(A, b, l2)
        coef = sol.x
        obj = 0.5 * (coef @ A @ coef - 2 * b @ coef + yy) + l1 @ np.abs(coef) + 0.5 * l2 @ coef**2
        p = mom.d - 1
        intercept = float(mom.mean[p] - mom.mean[:p] @ coef) if self.fit_intercept else 0.0
        return _Fit(coef, intercept, [float(obj)], sol.iterations, solver,
                    mom.inverse_design(self.fit_intercept), sol.rcond, float(mom.mean[p]))

    def _fit_qr(self, data: TrainData, extra: PassSpec | None, mom: Moments | None = None,
                exact: bool = False) -> tuple[_Fit, np.ndarray | None]:
        """TSQR of √w·[X 1 y] in one pass (with ``extra`` or the moments fused into it);
        returns the fit and the full moments statistics when ``extra`` computed them.

        With ``exact`` (the ``qr`` solver) ill-conditioned panels also give their
        double-double Gram in the same pass, and an ill-conditioned problem is solved
        from it (:func:`exact_solve`); otherwise, or when some panels were well enough
        conditioned to skip it, an ill-conditioned problem takes a refinement pass.
        """
        p = data.n_features
        need_std = self.reg_param > 0 and (self.standardization or self.label_scaling == "mllib")
        extend = QR_REFINE_COND / QR_PANEL_MARGIN if exact else np.inf
        specs = [qr_spec(p, 1, self.fit_intercept, data.has_weights, data.x_col_blocks, extend)]
        if extra is not None:
            specs.append(extra)
        elif need_std and mom is None:
            specs.append(moments_spec(p, 1, data.has_weights, data.x_col_blocks, False))
        with progress_step("TSQR"):
            out = data.run_many(specs)
        R, gram, serves = QRLayout(p + int(self.fit_intercept) + 1,
                                   bool(np.isfinite(extend))).factor(out[0])
        stats = None
        if len(out) > 1:
            mom = Moments.from_packed(out[1], p + 1)
            if mom.full:
                stats = out[1]
        k = p + int(self.fit_intercept)
        W = _total_weight(data)
        if mom is not None:
            sx, sy, ym = mom.std()[:p], float(mom.std()[p]), abs(float(mom.mean[p]))
        else:
            sx, sy, ym = np.ones(p), 1.0, 1.0
        _, l2 = penalties(FitParams.of(self), sx, sy, ym)
        # The objective comes from R alone (‖R₁₁β − r₁₂‖² + r₂₂², r₂₂ = R[-1, -1]): the
        # one-pass fit needs no residual pass for its history or summary sums.
        sol = qr_solve(R, k, l2, W)
        beta, history = sol.beta, [sol.objective]
        # A rank-deficient design keeps its least-norm TSQR solution: neither the exact
        # Gram (singular) nor a refinement step (T singular) can improve on it.
        resid = float(np.sqrt(max(2.0 * W * sol.objective, 0.0)))
        if not sol.deficient and ls_condition(sol.T, beta, resid, sol.cond) > QR_REFINE_COND:
            # The panels' Grams serve when they carry enough slices for this κ.
            solved = exact_solve(gram, k, l2, W) \
                if gram is not None and sol.cond.kappa <= serves else None
            if solved is not None:
                beta, history = solved.beta, [solved.objective]
            else:
                beta, refined = self._refine(data, beta, sol.T, l2, W)
                history.append(refined)
        intercept = float(beta[p]) if self.fit_intercept else 0.0
        # With an intercept column, (RᵀR)[p, p+1] = Σw·y over (RᵀR)[p, p] = Σw gives the
        # label mean for free (two column products, not the whole RᵀR).
        ones = R[:, p] @ R[:, p] if self.fit_intercept else 0.0
        center = float(R[:, p] @ R[:, p + 1] / ones) if ones > 0 else 0.0
        # n_iter_ counts the solves (scikit-learn wants at least one): 1, or 2 when refined.
        fit = _Fit(beta[:p], intercept, history, len(history), "qr", sol.cov, y_center=center)
        return fit, stats

    def _refine_normal(self, data: TrainData, fit: _Fit, mom: Moments) -> _Fit | None:
        """Seminormal iterative refinement of an ill-conditioned normal-equation fit.

        Each refinement pass computes the exact gradient g (the BLAS loss/gradient
        kernel) and solves Hδ = g with H the Hessian from the statistics already at
        hand, in centred coordinates (β, b + μᵀβ) when there is an intercept: there H is
        block diagonal, ``C + W·diag(l2)`` (the centred co-moments) beside W, so its
        conditioning is X's centred one, not that of [X 1]. Each step shrinks the error
        by about u·κ(H): one pass up to κ(H) = ``REFINE_ONE_STEP_MAX_KAPPA``
        (equilibrated), two up to ``REFINE_MAX_KAPPA``; beyond that (or when Cholesky
        fails) None, and the caller solves by TSQR.
        Costs one or two passes (from the block cache when X fits).
        """
        p = mom.d - 1
        fi = self.fit_intercept
        W = mom.W
        mx = mom.mean[:p]
        _, l2 = penalties(FitParams.of(self), mom.std()[:p], float(mom.std()[p]),
                          abs(float(mom.mean[p])))
        H = mom.C[:p, :p] + W * np.diag(l2)
        if not fi:
            H = H + W * np.outer(mx, mx)
        dg = np.diag(H)
        if not np.all(dg > 0):
            return None
        # The normal solve's rcond is LAPACK's 1-norm estimate for this same matrix
        # (equilibrated H/W): κ(H) itself, which κ(T)² would overstate ~p-fold.
        kappa = 1.0 / max(fit.rcond, np.finfo(float).tiny)
        if not kappa <= REFINE_MAX_KAPPA:
            return None
        s = 1.0 / np.sqrt(dg)
        try:
            T = scipy.linalg.cholesky(H * s[:, None] * s[None, :], lower=False) / s[None, :]
        except np.linalg.LinAlgError:
            return None

        def solve(g: np.ndarray) -> np.ndarray:
            gc = g[:p] - mx * g[p] if fi else g
            db = _tri_solve(T, gc)
            return np.append(db, g[p] / W - mx @ db) if fi else db

        beta = np.append(fit.coef, fit.intercept) if fi else fit.coef.copy()
        history = list(fit.history)
        for _ in range(1 if kappa <= REFINE_ONE_STEP_MAX_KAPPA else 2):
            # Residuals in working precision suffice here (fixed-precision refinement of
            # the seminormal equations converges to QR's accuracy while u·κ(X)² < 1):
            # the pass is the BLAS loss/gradient kernel, not the extended-precision one.
            delta, obj = self._refine_step(data, beta, solve, l2, W, extended=False)
            if delta is None:
                return None
            beta = beta + delta
            history.append(obj)
        intercept = float(beta[p]) if fi else 0.0
        return _Fit(beta[:p], intercept, history, len(history), "normal", fit.cov_unscaled,
                    fit.rcond, fit.y_center)

    def _refine(self, data: TrainData, beta: np.ndarray, T: np.ndarray, l2: np.ndarray,
                W: float) -> tuple[np.ndarray, float]:
        """One step of iterative refinement (one pass) with a double-double residual.

        The gradient is exact to far below double rounding, which restores the digits a
        blocked QR loses against a single Householder solve (and adds some on
        large-residual problems). Returns β + δ (β when the step cannot be taken) and
        the objective there.
        """
        def solve(g: np.ndarray) -> np.ndarray | None:
            return None if np.any(np.diag(T) == 0) else _tri_solve(T, g)

        delta, obj = self._refine_step(data, beta, solve, l2, W, extended=True)
        return (beta if delta is None else beta + delta), obj

    def _refine_step(self, data: TrainData, beta: np.ndarray,
                     solve: Callable[[np.ndarray], np.ndarray | None], l2: np.ndarray,
                     W: float, extended: bool) -> tuple[np.ndarray | None, float]:
        """One refinement pass: δ = ``solve(g)`` (H⁻¹g, H the Hessian times W),
        g = Zᵀw(y − Zβ) − W·l2∘β, and the objective at β + δ (None and the objective at
        β when g is not finite or ``solve`` gives None). The loss is quadratic, so
        f(β + δ) = f(β) − gᵀδ/(2W) exactly, f(β) from the pass's residual: extended
        precision (``refine_spec``) or the BLAS loss/gradient kernel.
        """
        p = l2.shape[0]
        with progress_step("refinement"):
            if extended:
                sse, g = RefineLayout(beta.size).unpack(data.run(refine_spec(
                    beta, self.fit_intercept, data.has_weights, data.x_col_blocks)))
            else:
                loss, _, grad = LossGradLayout((beta.size, 1)).unpack(data.run(loss_grad_spec(
                    "squared", beta[:, None], self.fit_intercept, data.has_weights,
                    data.x_col_blocks)))
                sse, g = 2.0 * loss, -grad[:, 0]
        g[:p] -= W * l2 * beta[:p]
        obj = 0.5 * sse / W + 0.5 * float(l2 @ beta[:p] ** 2)
        delta = solve(g) if np.all(np.isfinite(g)) else None
        if delta is None:
            return None, obj
        return delta, obj - 0.5 * float(g @ delta) / W

    def _set_fit(self, fit: _Fit) -> None:
        self.coef_ = np.asarray(fit.coef, dtype=np.float64)
        self.intercept_ = float(fit.intercept)
        self.solver_ = fit.solver
        self.n_iter_ = int(fit.iterations)
        self.objective_history_ = list(fit.history)
        self._cov_unscaled = fit.cov_unscaled
        self._y_center = fit.y_center

    # ------------------------------------------------------------------ state
    def _save_state(self, stats: np.ndarray) -> None:
        if self.state_path is None:
            return
        from blocklin.storage.blockmatrix import from_array

        from_array(stats, self.state_path, overwrite=True, attrs={"kind": "linreg-stats"},
                   storage_options=self._state_options())

    def _state_options(self) -> dict[str, Any] | None:
        from blocklin.storage.stores import StorageOptions

        return StorageOptions(self.storage_options).as_dict() or None

    def _load_state(self) -> np.ndarray | None:
        if self.state_path is not None:
            from blocklin.storage.blockmatrix import open_matrix
            from blocklin.storage.stores import register_storage_options, store_for

            # Through the store, not os.path: state_path may be an s3:// URL.
            register_storage_options(self.state_path, self._state_options())
            if store_for(self.state_path).exists("zarr.json"):
                return np.asarray(open_matrix(self.state_path).to_numpy(), dtype=np.float64)
        stats = getattr(self, "sufficient_stats_", None)
        return None if stats is None else np.asarray(stats)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _tri_solve(T: np.ndarray, g: np.ndarray) -> np.ndarray:
    """δ with TᵀTδ = g for upper-triangular T (two triangular solves)."""
    out: np.ndarray = scipy.linalg.solve_triangular(T, scipy.linalg.solve_triangular(
        T, g, trans="T"))
    return out


def _total_weight(data: TrainData) -> float:
    if data.local is not None and data.local[2] is not None:
        return float(data.local[2].sum())
    if data.stored is not None and data.stored[2] is not None:
        return float(np.asarray(data.stored[2].to_numpy()).sum())
    return float(data.n_rows)
