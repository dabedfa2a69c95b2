"""``PCA``: scikit-learn's PCA over blocklin's pass-efficient centred randomized SVD."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted

from blocklin.config import default_work_dir
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.api import compute
from blocklin.executors.options import OptionsLike
from blocklin.ml._decomposition import seed_of, transformer_tags
from blocklin.ml._estimator import estimator_options
from blocklin.ml._progress import reports
from blocklin.ml._validation import is_stored, stored_matrix, validate_features
from blocklin.ml.persist import SaveMixin
from blocklin.ops.products import matmul
from blocklin.ops.svd import SVD_METHODS, truncated_svd
from blocklin.ops.transforms import center
from blocklin.storage.leases import scratch_folder
from blocklin.types import parse_option

__all__ = ["PCA"]


class PCA(SaveMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Principal component analysis, as scikit-learn's ``PCA`` with its randomized solver.

    X is centred implicitly (each pass subtracts the column means as it reads a block;
    no centred copy is written), so dense and CSR X are read as stored.

    Parameters
    ----------
    n_components : int
        Number of components k (``1 <= k <= min(n_samples, n_features)``).
    whiten : bool
        Scale the projections to unit variance: ``transform`` divides each component's
        scores by ``sqrt(explained_variance_)`` (and ``inverse_transform`` multiplies
        them back), as scikit-learn's ``whiten=True``.
    oversample : int
        Extra sketch columns (accuracy for clustered spectra, cost per pass).
    n_iter : int
        Power iterations, counted as scikit-learn does; ``method="power"`` reads X
        n_iter + 1 times (2 with ``n_iter=0``: the means come first).
    random_state : int, RandomState or None
        Seed of the Gaussian test matrix.
    method : {"power", "krylov", "gram"}
        See :func:`blocklin.ops.pca`.
    executor : {"dask", "spark"}
        Engine of each pass.
    work_dir : str, optional
        Directory for temporary arrays (in-memory X is written there block by block);
        removed after each fit. Must be reachable by the workers.
    compute_options : ComputeOptions or dict, optional
        How and where the passes run, as :class:`TruncatedSVD`.
    progress : bool, callable or ProgressSink
        Report every pass over the data (off by default), as :class:`TruncatedSVD`.

    Attributes
    ----------
    components_ : ndarray (k, n_features)
    explained_variance_ : ndarray (k,)
        ``singular_values_² / (n_samples − 1)``.
    explained_variance_ratio_ : ndarray (k,)
        Share of the total variance (the sum of the column variances, ddof 1).
    singular_values_ : ndarray (k,)
    mean_ : ndarray (n_features,)
    noise_variance_ : float
        The mean of the variance left out: ``(total − Σ explained) / (min(m, n) − k)``
        (0 when k = min(m, n)), as scikit-learn's randomized solver estimates it.
    n_components_, n_samples_, n_features_in_, n_passes_ : int

    Notes
    -----
    ``fit`` reads X n_iter + 1 times; the column means and variances ride along the
    first pass. Per-task memory: a row block, its product with an n × (k + oversample)
    basis, and that basis; driver memory O(n·(k + oversample)). ``transform`` of a
    stored X (BlockMatrix, zarr path) returns a BlockMatrix in one pass.
    """

    def __init__(self, n_components: int = 2, *, whiten: bool = False, oversample: int = 10,
                 n_iter: int = 3, random_state: Any = 0, method: str = "power",
                 executor: str = "dask", work_dir: str | None = None,
                 compute_options: OptionsLike = None, progress: Any = False) -> None:
        self.n_components = n_components
        self.whiten = whiten
        self.oversample = oversample
        self.n_iter = n_iter
        self.random_state = random_state
        self.method = method
        self.executor = executor
        self.work_dir = work_dir
        self.compute_options = compute_options
        self.progress = progress

    # -- fitting -----------------------------------------------------------------------
    @reports("fit")
    def fit(self, X: Any, y: Any = None) -> PCA:
        """Fit on X (numpy, scipy.sparse, dask, BlockMatrix or zarr path); returns self."""
        self._fit(X)
        return self

    @reports("fit_transform")
    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit, then project X (one more pass for stored X)."""
        return self._project(self._fit(X))

    def _check_params(self, m: int, n: int) -> None:
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise InputDtypeError(f"n_components must be an int; got {k!r}")
        if not 1 <= k <= min(m, n):
            raise InputValueError(f"n_components={k} must be between 1 and "
                                  f"min(n_samples, n_features) = {min(m, n)}")
        if m < 2:
            raise InputValueError(f"PCA needs at least 2 samples for a variance; got n_samples={m}")
        if not isinstance(self.whiten, bool | np.bool_):
            raise InputDtypeError(f"whiten must be a bool; got {self.whiten!r}")
        parse_option("method", self.method, SVD_METHODS)

    @contextmanager
    def _scratch(self) -> Iterator[str]:
        with scratch_folder(estimator_options(self).work_dir or default_work_dir(),
                            "pca-") as wd:
            yield wd

    def _fit(self, X: Any) -> Any:
        Xv = validate_features(self, X, reset=True, accept_sparse=True)
        m, n = int(Xv.shape[0]), int(Xv.shape[1])
        self._check_params(m, n)
        k = int(self.n_components)
        with self._scratch() as wd, stored_matrix(Xv, work_dir=wd) as A:
            opts = estimator_options(self).replace(work_dir=wd)
            res = truncated_svd(A, k, self.oversample, self.n_iter, seed_of(self.random_state),
                                self.method, True, opts, with_stats=True)
        st = res.column_stats
        if st is None or res.mean is None:  # pragma: no cover - with_stats guarantees them
            raise RuntimeError("column statistics missing from the fit")
        total = float(np.sum(st.variance))
        ev = res.s**2 / (m - 1)
        self.components_ = res.Vt
        self.singular_values_ = res.s
        self.explained_variance_ = ev
        self.explained_variance_ratio_ = ev / total if total > 0 else np.zeros_like(ev)
        self.mean_ = np.asarray(res.mean, dtype=np.float64)
        rest = min(m, n) - k
        self.noise_variance_ = max(total - float(ev.sum()), 0.0) / rest if rest > 0 else 0.0
        self.n_components_, self.n_samples_, self.n_passes_ = k, m, res.passes
        return Xv

    # -- projecting --------------------------------------------------------------------
    def _scale(self) -> np.ndarray:
        """Per-component factor of the scores: 1, or 1/sqrt(explained variance) whitened."""
        if not self.whiten:
            return np.ones_like(self.explained_variance_)
        ev = self.explained_variance_
        return np.divide(1.0, np.sqrt(ev), out=np.zeros_like(ev), where=ev > 0)

    @reports("transform")
    def transform(self, X: Any) -> Any:
        """Project the centred X onto the components (whitened with ``whiten``)."""
        check_is_fitted(self)
        return self._project(validate_features(self, X, reset=False, accept_sparse=True))

    def _project(self, Xv: Any) -> Any:
        w = self.components_.T * self._scale()
        shift = self.mean_ @ w
        if sp.issparse(Xv):
            # Sparse X stays sparse: (X − 1μᵀ)W = XW − 1(μᵀW).
            return np.asarray(Xv @ w) - shift
        if isinstance(Xv, np.ndarray) or not is_stored(Xv):
            return (Xv - self.mean_) @ w
        return compute(matmul(center(Xv, self.mean_), np.ascontiguousarray(w)),
                       compute_options=estimator_options(self))[0]

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map scores back to feature space: ``X·diag(1/scale)·components_ + mean_``."""
        check_is_fitted(self)
        z = check_array(X, dtype=[np.float64, np.float32])
        scale = self._scale()
        back = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        out: np.ndarray = (z * back) @ self.components_ + self.mean_
        return out

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])

    def __sklearn_tags__(self) -> Any:
        return transformer_tags(super().__sklearn_tags__())
