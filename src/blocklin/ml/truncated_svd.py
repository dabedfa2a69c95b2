"""``TruncatedSVD``: a scikit-learn estimator over blocklin's pass-efficient randomized SVD."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from blocklin.config import default_work_dir
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.api import compute
from blocklin.executors.base import RunStats
from blocklin.executors.options import ComputeOptions, OptionsLike
from blocklin.ml._decomposition import seed_of, transformer_tags
from blocklin.ml._estimator import estimator_options
from blocklin.ml._progress import reports
from blocklin.ml._validation import is_stored, open_stored, stored_matrix, validate_features
from blocklin.ml.persist import SaveMixin
from blocklin.ops.products import gram, matmul
from blocklin.ops.stats import column_stats
from blocklin.ops.svd import SVD_METHODS, truncated_svd
from blocklin.ops.svd_rows import (
    GRAM_MAX_COLUMNS,
    NewRows,
    brand_rows,
    gram_step,
    parse_rows,
    row_batches,
)
from blocklin.ops.svd_state import SVDState
from blocklin.ops.svd_update import svd_update, update_factors
from blocklin.ops.tsqr import row_signs, tsqr_r
from blocklin.storage.leases import scratch_folder
from blocklin.storage.stores import hide_options, register_storage_options
from blocklin.types import parse_option

__all__ = ["TruncatedSVD"]


#: Column statistics of a batch of rows: (count, mean, M2 = Σ(x − mean)²).
Moments = tuple[int, np.ndarray, np.ndarray]


def _row_moments(x: np.ndarray) -> Moments:
    mean = x.mean(axis=0)
    return x.shape[0], mean, ((x - mean) ** 2).sum(axis=0)


def _sparse_moments(x: sp.csr_matrix) -> Moments:
    """:func:`_row_moments` from the nonzeros: the zeros of column j add (p − nnz_j)·μ_j²."""
    p = x.shape[0]
    mean = np.asarray(x.sum(axis=0)).ravel() / p
    nnz = np.bincount(x.indices, minlength=x.shape[1])
    dev = x.data - mean[x.indices]
    m2 = np.bincount(x.indices, weights=dev * dev, minlength=x.shape[1]) + (p - nnz) * mean**2
    return p, mean, m2


def _merge(a: Moments | None, b: Moments) -> Moments:
    """Chan's pairwise merge of two (count, mean, M2)."""
    if a is None:
        return b
    na, nb = a[0], b[0]
    delta = b[1] - a[1]
    return (na + nb, a[1] + delta * (nb / (na + nb)),
            a[2] + b[2] + delta**2 * (na * nb / (na + nb)))


def _is_csr(X: Any) -> bool:
    if sp.issparse(X):
        return True
    return is_stored(X) and getattr(open_stored(X).meta, "format", "dense") != "dense"


#: Rows per batch of the sparse update (each costs an SVD of a (k + batch)² matrix).
_SPARSE_BATCH = 512


def _sparse_step(s: np.ndarray, vt: np.ndarray,
                 c: NewRows) -> tuple[tuple[Any, np.ndarray, np.ndarray], Moments]:
    """(None, s', Vt') and the rows' column moments, in one read of their nonzeros."""
    moments: Moments | None = None

    def batches() -> Iterator[Any]:
        nonlocal moments
        for part in row_batches(c, _SPARSE_BATCH):
            part = sp.csr_matrix(part) if not sp.issparse(part) else part
            moments = _merge(moments, _sparse_moments(part))
            yield part

    run = brand_rows(s, vt, batches())
    if moments is None:  # pragma: no cover - parse_rows refuses empty rows
        raise InputValueError("no rows to update with")
    d = row_signs(run.Vt)
    return (None, run.s, run.Vt * d[:, None]), moments


class TruncatedSVD(SaveMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Dimensionality reduction by truncated SVD (no centering), as scikit-learn's.

    Parameters
    ----------
    n_components : int
        Number of components k (``1 <= k <= min(n_samples, n_features)``).
    oversample : int
        Extra sketch columns (accuracy for clustered spectra, cost per pass).
    n_iter : int
        Power iterations, counted as scikit-learn does (the same subspace for the
        same n_iter); ``method="power"`` reads X n_iter + 1 times.
    random_state : int, RandomState or None
        Seed of the Gaussian test matrix.
    method : {"power", "krylov", "gram"}
        See :func:`blocklin.ops.randomized_svd`.
    executor : {"dask", "spark"}
        Engine of each pass (local threads / local Spark by default).
    work_dir : str, optional
        Directory for temporary arrays (in-memory X is written there block by
        block); removed after each fit. Must be reachable by the workers.
    compute_options : ComputeOptions or dict, optional
        How and where the passes run (:class:`blocklin.ComputeOptions`);
        ``executor``, ``work_dir`` and ``storage_options`` fill the fields it leaves
        unset.
    state_path : str, optional
        A zarr group keeping the decomposition (U included) as an
        :class:`~blocklin.ops.SVDState`. ``None`` (default): components and
        singular values live in memory only. When set, ``fit`` writes the state
        (forming U: one more pass over X), ``partial_fit`` updates it with
        :func:`blocklin.ops.svd_update` and commits the column statistics with it,
        and an unfitted estimator's ``partial_fit`` resumes from an existing state
        (e.g. after a restart).
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``...) for ``state_path`` and
        ``work_dir`` when they are URLs; never written or printed (``repr`` names the
        keys only).
    progress : bool, callable or ProgressSink
        Report every pass over the data, as scikit-learn's ``verbose`` (off by default):
        ``True`` prints each pass on stderr (a bar on a terminal, plain lines otherwise),
        labelled by method and step (``TruncatedSVD.fit · power iteration 2/3 · pass 2``); a callable
        ``progress(stage, done, total)`` or a sink receives them instead (see
        :mod:`blocklin.executors.progress`). With False an enclosing
        ``progress_to`` block (the CLI's) still hears them.

    Attributes
    ----------
    components_ : ndarray (k, n_features)
    singular_values_ : ndarray (k,)
    explained_variance_ : ndarray (k,)
        Variance of each column of ``transform(X)``.
    explained_variance_ratio_ : ndarray (k,)
    n_features_in_ : int
    n_samples_seen_ : int
    n_passes_ : int
        Passes over X made by the last fit.

    Notes
    -----
    ``fit`` reads X n_iter + 1 times (``gram``: once); column statistics for the
    explained variance ride along the first pass. ``partial_fit(X_new)`` after a fit
    is a Zha–Simon/Brand row-append update: it reads only the new rows (once) and
    costs O(p·n² + n³) — the earlier rows are never read again. CSR rows (in memory
    or stored) take Deng et al.'s sparse update instead, in batches of 512 rows:
    O(nnz·k + Σ_b (k + p_b)³ + n·k²), never densifying a row. Updates are exact
    when X has rank ≤ k and otherwise drift by the discarded tail.
    With ``state_path``, ``partial_fit`` reads X for its column statistics and
    then as :func:`blocklin.ops.svd_update` does (``gram``: twice more).
    ``transform`` of a stored X (BlockMatrix, zarr path) returns a BlockMatrix.
    """

    def __init__(self, n_components: int = 2, *, oversample: int = 10, n_iter: int = 3,
                 random_state: Any = 0, method: str = "power", executor: str = "dask",
                 work_dir: str | None = None, state_path: str | None = None,
                 storage_options: Mapping[str, Any] | None = None,
                 compute_options: OptionsLike = None, progress: Any = False) -> None:
        self.n_components = n_components
        self.oversample = oversample
        self.n_iter = n_iter
        self.random_state = random_state
        self.method = method
        self.executor = executor
        self.work_dir = work_dir
        self.state_path = state_path
        # Wrapped so the estimator's repr names the option keys, never their values
        # (anything else is kept as given and refused when used: __init__ never raises).
        self.storage_options = hide_options(storage_options)
        self.compute_options = compute_options
        self.progress = progress

    def _register_state(self) -> None:
        if self.state_path is not None and self.storage_options:
            register_storage_options(str(self.state_path), self.storage_options)

    # -- fitting -----------------------------------------------------------------------
    @reports("fit")
    def fit(self, X: Any, y: Any = None) -> TruncatedSVD:
        """Fit on X (numpy, scipy.sparse, dask, BlockMatrix or zarr path); returns self."""
        self._fit(X)
        return self

    @reports("fit_transform")
    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit, then project X onto the components (one more pass for stored X)."""
        Xv = self._fit(X)
        return self._project(Xv)

    def _check_params(self, m: int, n: int) -> None:
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise InputDtypeError(f"n_components must be an int; got {k!r}")
        if k < 1:
            raise InputValueError(f"n_components must be >= 1; got {k}")
        if k > n:
            raise InputValueError(f"n_components={k} must be <= n_features = {n}")
        if k > m:
            raise InputValueError(f"n_components={k} must be <= n_samples = {m}")
        parse_option("method", self.method, SVD_METHODS)

    def _fit(self, X: Any) -> Any:
        self._register_state()
        Xv = validate_features(self, X, reset=True, accept_sparse=True)
        m, n = int(Xv.shape[0]), int(Xv.shape[1])
        self._check_params(m, n)
        with self._scratch() as wd, stored_matrix(Xv, work_dir=wd) as A:
            opts = self._options(wd)
            res = truncated_svd(A, int(self.n_components), self.oversample, self.n_iter,
                                seed_of(self.random_state), self.method, False, opts,
                                with_stats=True)
            if res.column_stats is None:  # pragma: no cover - with_stats guarantees it
                raise RuntimeError("column statistics missing from the fit")
            self.components_ = res.Vt
            self.singular_values_ = res.s
            self.n_passes_ = res.passes
            self._set_stats(res.column_stats.count, res.column_stats.mean,
                            res.column_stats.variance * max(res.column_stats.count - 1, 0))
            if self.state_path is not None:
                # U is formed here, while the scratch directory holding its plan exists.
                SVDState.create(self.state_path, res, overwrite=True, extras=self._extras())
                self.n_passes_ += res.u_passes
        return Xv

    def _extras(self) -> dict[str, np.ndarray]:
        """The column summary committed with the SVD state."""
        return {"count": np.array([self.n_samples_seen_]), "mean": self._mean, "m2": self._m2}

    def _resume(self) -> None:
        """Take components, singular values and column summary from the state at state_path."""
        self._register_state()
        st = SVDState.open(str(self.state_path))
        if st.k != self.n_components:
            raise InputValueError(f"the SVD state at {self.state_path} has {st.k} components; "
                                  f"n_components is {self.n_components}")
        self.n_features_in_ = st.shape[1]
        self.components_, self.singular_values_ = st.Vt, st.s
        ex = st.extras
        self._set_stats(int(ex["count"][0]), ex["mean"], ex["m2"])

    def _has_state(self) -> bool:
        self._register_state()
        try:
            SVDState.open(str(self.state_path))
        except FileNotFoundError:
            return False
        return True

    def _set_stats(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Explained variances from the column summary (count, mean, centered sum of squares)."""
        self.n_samples_seen_ = int(count)
        self._mean = np.asarray(mean, dtype=np.float64)
        self._m2 = np.asarray(m2, dtype=np.float64)
        # var(X v_j) = ‖X v_j‖²/m − (μ·v_j)², and ‖X v_j‖ = s_j for Rayleigh–Ritz vectors.
        ev = self.singular_values_**2 / count - (self._mean @ self.components_.T) ** 2
        self.explained_variance_ = np.clip(ev, 0.0, None)
        total = float(self._m2.sum()) / count
        self.explained_variance_ratio_ = (self.explained_variance_ / total if total > 0
                                          else np.zeros_like(ev))

    def _scratch(self) -> AbstractContextManager[str]:
        """A leased scratch work dir for one fit: gc leaves it alone between passes."""
        return scratch_folder(estimator_options(self).work_dir or default_work_dir(),
                              "truncated-svd-")

    def _options(self, work_dir: str) -> ComputeOptions:
        """The passes' options, with intermediates in this fit's scratch ``work_dir``."""
        return estimator_options(self).replace(work_dir=work_dir)

    @reports("partial_fit")
    def partial_fit(self, X: Any, y: Any = None) -> TruncatedSVD:
        """Update the fit with appended rows X (fits from scratch when not yet fitted).

        Reads only X: XᵀX and its column statistics in one pass for stored X (a
        TSQR pass more when the Gram is too ill-conditioned for k's singular values;
        LAPACK QR in memory), then a Rayleigh–Ritz step on the driver. CSR rows (in
        memory or stored) are read once, on the driver, in batches of 512 rows:
        their column statistics and Deng et al.'s update from their nonzeros (no
        n-wide dense row is formed; with more than 512 rows of rank > k the result
        differs from the one-batch update by the extra truncations).
        With ``state_path`` the persisted state is updated instead (and an existing
        state is resumed when the estimator is not fitted yet): for stored dense X,
        XᵀX and the column statistics in one pass, then one more writing the new rows'
        segment of U (:func:`blocklin.ops.svd_update`'s gram path).
        """
        if self.state_path is not None:
            self._register_state()
            if not hasattr(self, "components_") and not self._has_state():
                return self.fit(X)
            self._resume()
            return self._partial_fit_state(X)
        if not hasattr(self, "components_"):
            return self.fit(X)
        Xv = validate_features(self, X, reset=False, accept_sparse=True)
        n = self.n_features_in_
        s, vt = self.singular_values_, self.components_
        step: tuple[Any, np.ndarray, np.ndarray] | None
        if _is_csr(Xv):
            # CSR rows (in memory or stored): Deng et al.'s update from their nonzeros,
            # never an n-wide dense row.
            step, moments = _sparse_step(s, vt, parse_rows(open_stored(Xv) if is_stored(Xv)
                                                           else Xv, n))
            self.n_passes_ = 1
        elif not isinstance(Xv, np.ndarray) and int(Xv.shape[0]) >= n:
            with self._scratch() as wd, stored_matrix(Xv, work_dir=wd) as A:
                # XᵀX and the column statistics share one pass; a TSQR pass follows only
                # when the Gram's squared conditioning would cost accuracy.
                moments, g = self._stored_pass(A, wd, None, with_gram=True)
                step = gram_step(s, vt, g)
                self.n_passes_ = 1
                if step is None:
                    r = compute(tsqr_r(A), compute_options=self._options(wd))[0]
                    step = update_factors(s, vt, r)
                    self.n_passes_ = 2
        else:
            x = np.asarray(Xv.to_numpy() if is_stored(Xv) else Xv, dtype=np.float64)
            step = update_factors(s, vt, np.asarray(np.linalg.qr(x, mode="r")))
            moments = _row_moments(x)
            self.n_passes_ = 1
        _, self.singular_values_, self.components_ = step
        self._merge_stats(*moments)
        return self

    def _partial_fit_state(self, X: Any) -> TruncatedSVD:
        """Column statistics of X (with XᵀX in the same pass for stored dense X), then
        svd_update of the state committing them with it."""
        Xv = validate_features(self, X, reset=False, accept_sparse=True)
        stats = RunStats()
        with self._scratch() as wd:
            try:
                if isinstance(Xv, np.ndarray) or sp.issparse(Xv):
                    self._merge_stats(*(_sparse_moments(sp.csr_matrix(Xv)) if sp.issparse(Xv)
                                        else _row_moments(np.asarray(Xv, dtype=np.float64))))
                    # Sparse rows go to svd_update as CSR: its sparse path reads nonzeros only.
                    self._update_state(Xv, wd, stats)
                    self.n_passes_ = 1
                else:
                    with stored_matrix(Xv, work_dir=wd) as A:
                        # Dense rows: CᵀC for svd_update's gram path rides in the pass
                        # of the column statistics (sparse rows take its sparse path).
                        dense_rows = getattr(A.meta, "format", "dense") == "dense" \
                            and A.shape[1] <= GRAM_MAX_COLUMNS
                        moments, g = self._stored_pass(A, wd, stats, with_gram=dense_rows)
                        self._merge_stats(*moments)
                        self._update_state(A, wd, stats, g)
                        self.n_passes_ = round(stats.passes.get(A.url, 1))
            except BaseException:
                self._resume()  # the state was not committed: back to its version
                raise
        return self

    def _update_state(self, rows: Any, wd: str, stats: RunStats,
                      row_gram: np.ndarray | None = None) -> None:
        st = svd_update(str(self.state_path), rows=rows, extras=self._extras(),
                        row_gram=row_gram, stats=stats, compute_options=self._options(wd))
        self.components_, self.singular_values_ = st.Vt, st.s
        self._set_stats(self.n_samples_seen_, self._mean, self._m2)

    def _stored_pass(self, A: Any, wd: str, stats: RunStats | None,
                     with_gram: bool) -> tuple[Moments, Any]:
        """One pass over stored rows: their (count, mean, M2), and their Gram XᵀX when
        ``with_gram`` (computed in the same pass; else None)."""
        out = compute(column_stats(A), *([gram(A)] if with_gram else []),
                      compute_options=self._options(wd), stats=stats)
        st = out[0]
        moments = (st.count, st.mean, st.variance * max(st.count - 1, 0))
        return moments, np.asarray(out[1], dtype=np.float64) if with_gram else None

    def _merge_stats(self, count: int, mean_new: np.ndarray, m2_new: np.ndarray) -> None:
        """Chan's pairwise merge of (count, mean, M2) into the estimator's."""
        na, nb = self.n_samples_seen_, count
        total = na + nb
        delta = mean_new - self._mean
        mean = self._mean + delta * (nb / total)
        m2 = self._m2 + m2_new + delta**2 * (na * nb / total)
        self._set_stats(total, mean, m2)

    # -- projecting --------------------------------------------------------------------
    @reports("transform")
    def transform(self, X: Any) -> Any:
        """Project X onto the components: ``X @ components_.T`` (n_samples × k)."""
        check_is_fitted(self)
        return self._project(validate_features(self, X, reset=False, accept_sparse=True))

    def _project(self, Xv: Any) -> Any:
        vt = self.components_
        if sp.issparse(Xv):
            return np.asarray(Xv @ vt.T)
        if isinstance(Xv, np.ndarray) or not is_stored(Xv):
            return Xv @ vt.T
        return compute(matmul(Xv, np.ascontiguousarray(vt.T)),
                       compute_options=estimator_options(self))[0]

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map projected data back to feature space: ``X @ components_``."""
        from sklearn.utils.validation import check_array

        check_is_fitted(self)
        out: np.ndarray = check_array(X, dtype=[np.float64, np.float32]) @ self.components_
        return out

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])

    def __sklearn_tags__(self) -> Any:
        return transformer_tags(super().__sklearn_tags__())
