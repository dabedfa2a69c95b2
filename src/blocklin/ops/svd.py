"""Pass-efficient truncated SVD and PCA of block matrices.

Passes over A are the cost. Each power pass is one fused block task per row block
computing ``Yᵢ = AᵢX`` and ``Zᵢ = AᵢᵀYᵢ`` (so ``AᵀAX`` costs one read of A, not
two), tree-summed in fixed order; the small n × l factor is orthonormalized on the
driver. The range is finished by a one-pass TSQR of ``AX`` (``ops.tsqr``), which is
backward stable, and U is formed only when asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np

from blocklin.config import default_block_cache_bytes, machine_memory
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.executors.api import compute
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import ComputeOptions, OptionsLike, eager_options
from blocklin.executors.progress import Progress, operation
from blocklin.executors.progress import step as progress_step
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, row_panel_tasks
from blocklin.ops.products import gram, matmul
from blocklin.ops.sketch import as_float64, left_apply, right_apply
from blocklin.ops.stats import ColumnStats, column_stats
from blocklin.ops.tsqr import plan_finish, plan_form_q, plan_tree, row_signs
from blocklin.plan.device import is_sparse, like, namespace
from blocklin.plan.graph import TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.storage.blockcache import process_cache
from blocklin.types import parse_option

if TYPE_CHECKING:
    from blocklin.storage.blockmatrix import BlockMatrix

__all__ = ["SVD_METHODS", "PCAResult", "SVDMethod", "TruncatedSVDResult", "check_svd_args",
           "normal_product", "pca", "randomized_svd", "svd_passes", "truncated_svd"]

SVDMethod = Literal["power", "krylov", "gram"]
SVD_METHODS: tuple[str, ...] = get_args(SVDMethod)


@dataclass
class TruncatedSVDResult:
    """A truncated SVD ``A ≈ U diag(s) Vt`` with U formed on demand.

    Attributes
    ----------
    s : ndarray (k,)
        Singular values, descending.
    Vt : ndarray (k, n)
        Right singular vectors (rows).
    method : str
        The method used.
    passes : int
        Passes over A made to compute ``s`` and ``Vt``; ``U`` costs ``u_passes`` more.
    u_passes : int
        Passes over A that :attr:`U` makes when first accessed.
    mean : ndarray (n,) or None
        Column means subtracted (PCA), else None.
    """

    s: np.ndarray
    Vt: np.ndarray
    method: str
    passes: int
    u_passes: int
    u_lazy: Lazy
    mean: np.ndarray | None = None
    options: ComputeOptions = field(default_factory=ComputeOptions, repr=False)
    column_stats: ColumnStats | None = field(default=None, repr=False)
    _u: BlockMatrix | None = field(default=None, repr=False)
    #: Where forming U reports its pass (the ``progress`` the result was computed with).
    progress: Progress = field(default=False, repr=False, compare=False)

    @property
    def U(self) -> BlockMatrix:
        """Left singular vectors (m × k BlockMatrix, A's row blocks), computed on first access."""
        if self._u is None:
            # resume: the small stages of the last pass are already recorded complete.
            with operation("forming U", self.progress):
                self._u = compute(self.u_lazy, compute_options=self.options, resume=True)[0]
        return self._u

    def __iter__(self) -> Any:
        return iter((self.U, self.s, self.Vt))

    @property
    def total_variance(self) -> float | None:
        """``‖A‖_F²`` (PCA: ``‖A − 1μᵀ‖_F²``), the sum of all squared singular values.

        From the column statistics computed with the first pass (``with_stats=True``,
        or ``method="gram"``); None without them.
        """
        st = self.column_stats
        if st is None:
            return None
        if self.mean is not None:  # centered: Σ M2 = Σ variance·(m − 1)
            return float(np.sum(st.variance) * max(st.count - 1, 0))
        return float(np.sum(np.square(st.norm_l2)))

    @property
    def explained_variance_ratio(self) -> np.ndarray | None:
        """``s² / total_variance``: each component's share of all of A's variance (PCA:
        of the centered A), not of the top k only; None without column statistics."""
        total = self.total_variance
        if total is None:
            return None
        out: np.ndarray = self.s**2 / total if total > 0 else np.zeros_like(self.s)
        return out


@dataclass
class PCAResult(TruncatedSVDResult):
    """A principal component analysis: components are ``Vt``; scores are ``U·diag(s)``."""

    n_samples: int = 0

    @property
    def components(self) -> np.ndarray:
        return self.Vt

    @property
    def explained_variance(self) -> np.ndarray:
        out: np.ndarray = self.s**2 / max(self.n_samples - 1, 1)
        return out


@dataclass(frozen=True, eq=False)
class NormalProduct:
    """``CᵢᵀCᵢX`` for one row panel, ``C = A − 1·shiftᵀ`` (optionally with column sums).

    The shift is folded into the small products (``CX = AX − 1(shiftᵀX)``,
    ``CᵀY = AᵀY − shift·(1ᵀY)``), so no centered copy of the block is made and
    sparse (CSR) blocks stay sparse.
    """

    x: np.ndarray
    shift: np.ndarray | None = None
    with_sums: bool = False
    #: Runs on the task's device (array namespace of the blocks; see plan/device.py).
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        raw = hstack_panel(blocks)
        # Converted once here, not again in each of the two products below.
        a = as_float64(raw)
        y = right_apply(a, self.x)
        xp = namespace(y)
        if self.shift is not None:
            y -= like(self.shift @ self.x, y)
        z = left_apply(y, a).T
        if self.shift is not None:
            # np.outer's products, in any namespace.
            z -= like(self.shift, y)[:, None] * xp.sum(y, axis=0)[None, :]
        if self.with_sums:
            # A CSR's column sums come back as a 1 × n matrix.
            sums = xp.asarray(raw.sum(axis=0) if is_sparse(raw) else xp.sum(raw, axis=0),
                              dtype=xp.float64)
            z = xp.concat([z, xp.reshape(sums, (-1, 1))], axis=1)
        if type(z) is np.ndarray:
            z = np.ascontiguousarray(z)
        return z[None, ...]


def normal_product(A: Any, X: np.ndarray, *, shift: np.ndarray | None = None,
                   with_sums: bool = False) -> Lazy:
    """``AᵀAX`` (of ``A − 1·shiftᵀ``) in one pass over A, lazily; ``[AᵀAX, Aᵀ1]`` with sums.

    Notes
    -----
    One pass; each task holds a row panel (dense or CSR, kept sparse and projected
    at its stored size), its ``AᵢX`` (rows × l) and an n × l partial; partials are
    summed in a fixed-order tree (bitwise reproducible). Costs 2·nnz(Aᵢ)·l flops per block.
    """
    m = as_matrix(A)
    n, width0 = m.shape[1], X.shape[1]
    width = width0 + 1 if with_sums else width0
    tasks = row_panel_tasks([m])
    rows = m.node.chunks[0]
    stage = make_stage("rsvd/normal", NormalProduct(X, shift, with_sums), [m.input], tasks,
                       shape=(m.grid[0], n, width), chunks=(1, n, width), dtype="float64",
                       params={"x": X, "shift": shift, "with_sums": with_sums},
                       extra_memory=2 * rows * width0 * 8 + 3 * n * width * 8,
                       keeps_sparse=True)
    plan, out = tree_reduce(m.plan.add(stage), stage.output, SumParts(), op="rsvd_normal")
    return Lazy(plan, out, "small", lambda p: np.array(p[0]), label="rsvd.normal")


def _orth(z: np.ndarray) -> np.ndarray:
    q: np.ndarray = np.linalg.qr(z)[0]
    return q


def check_svd_args(m: MatrixInput, k: int, oversample: int, n_iter: int, method: str) -> int:
    """Refuse bad k, oversample, n_iter or method (before any pass); the sketch width
    l = min(k + oversample, rows, cols)."""
    for name, v in (("k", k), ("oversample", oversample), ("n_iter", n_iter)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise InputDtypeError(f"{name} must be an int; got {v!r}")
    rows, cols = m.shape
    if not 1 <= k <= min(rows, cols):
        raise InputValueError(f"k must be between 1 and min(A.shape) = {min(rows, cols)}; "
                              f"got {k}")
    if oversample < 0 or n_iter < 0:
        raise InputValueError(f"oversample and n_iter must be >= 0; got {oversample}, {n_iter}")
    parse_option("method", method, SVD_METHODS)
    return int(min(k + oversample, cols, rows))


def _decoded_nbytes(m: MatrixInput) -> int:
    """Bytes of A's blocks once read: dense rows × cols, CSR at their stored size."""
    node = m.node
    if node.block_nbytes is not None:
        return int(node.block_nbytes) * int(np.prod(node.grid))
    return int(np.prod(node.shape)) * np.dtype(node.dtype).itemsize


def _pass_cache(m: MatrixInput, opts: ComputeOptions) -> ComputeOptions:
    """``opts`` with the block cache the passes use: unset (None) or ``"auto"`` caches A
    only when all of it fits this machine's default budget.

    A few passes gain from a cache only when it holds all of A (a partial resident set
    saves a fraction of the reads, at the full budget's memory), so a larger A streams
    at the plan's per-task memory; an explicit size is passed on as given.
    """
    wanted = opts.cache_bytes
    if not (wanted is None or (isinstance(wanted, str) and wanted.strip().lower() == "auto")):
        return opts
    fits = _decoded_nbytes(m) <= default_block_cache_bytes(machine_memory())
    return opts.replace(cache_bytes="auto" if fits else 0)


@contextmanager
def _cached_passes(m: MatrixInput, opts: ComputeOptions) -> Iterator[ComputeOptions]:
    """The options for a method's passes (see :func:`_pass_cache`); on exit this
    process's block cache (the threaded scheduler's) is emptied, so the decoded copy of
    A does not outlive the call. Worker processes free theirs at their next compute
    without a cache."""
    run = _pass_cache(m, opts)
    try:
        yield run
    finally:
        if run.cache_bytes:
            process_cache().clear()


def svd_passes(method: str, n_iter: int, centered: bool) -> int:
    """Passes over A that ``s`` and ``Vt`` cost: ``gram`` 1; ``power``/``krylov``
    n_iter fused ``AᵀA`` passes and the TSQR finish, plus a moments pass when the
    centred finish has no power pass to bring the means."""
    if method == "gram":
        return 1
    return n_iter + 1 + int(centered and n_iter == 0)


def _power_basis(A: Any, m: MatrixInput, width: int, n_iter: int, seed: int, krylov: bool,
                 centered: bool, opts: ComputeOptions,
                 with_stats: bool) -> tuple[np.ndarray, np.ndarray | None, ColumnStats | None]:
    """n_iter fused passes of ``AᵀA``; the orthonormal basis (and the column means).

    Without a power pass the basis is Ω itself; a centred problem then reads A once
    for its means (the finish needs them before it starts), and the column statistics
    of an uncentred one come with the finish (:func:`_range_finish`).
    """
    rows, n = m.shape
    x = _orth(np.random.default_rng(seed).standard_normal((n, width)))
    mean: np.ndarray | None = None
    stats = None
    if n_iter == 0 and centered:
        with progress_step("column means"):
            stats = compute(column_stats(A), compute_options=opts)[0]
        mean = stats.mean
    basis = [x]
    for t in range(n_iter):
        extra = (column_stats(A),) if with_stats and t == 0 else ()
        label = f"power iteration {t + 1}/{n_iter}"
        if centered and mean is None:
            # The means arrive with the first pass: fold them into the small product
            # (CᵀCX = AᵀAX − m·μμᵀX); later passes center each block exactly.
            with progress_step(label):
                zs, *got = compute(normal_product(A, x, with_sums=True), *extra,
                                   compute_options=opts)
            mean = zs[:, -1] / rows
            z = zs[:, :-1] - rows * np.outer(mean, mean @ x)
        else:
            with progress_step(label):
                z, *got = compute(normal_product(A, x, shift=mean), *extra, compute_options=opts)
        stats = got[0] if got else stats
        x = _orth(z)
        basis.append(x)
    if krylov:
        x = _orth(np.hstack(basis))[:, : min(n, rows)]
    return x, mean, stats


def _range_finish(A: Any, basis: np.ndarray, mean: np.ndarray | None, k: int,
                  opts: ComputeOptions, with_stats: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, Lazy, ColumnStats | None]:
    """One TSQR pass over ``Y = (A − 1μᵀ)·basis`` that also carries ``B = QᵀA`` up the
    tree (Q from Y's TSQR): s and Vt from the SVD of B, the lazy U = Q·U_B (and A's
    column statistics, read in the same pass, when asked). ``A ≈ QQᵀA`` is the
    classic range finder's approximation (Halko et al.), with the pass that forms B
    folded into the one that finds Q."""
    shift = None if mean is None else mean @ basis
    tree = plan_tree([A], with_q=True, right=basis, shift=shift, op="rsvd", project=True,
                     mean=mean)
    plan, finish = plan_finish(tree, "project", op="rsvd")
    c = tree.c
    # Kept: forming U (TruncatedSVDResult.U) resumes this plan's tree and finish
    # instead of another pass over A, and removes them.
    with progress_step("range finish (TSQR)"):
        f, *got = compute(Lazy(plan, finish, "small", label="rsvd.finish"),
                          *((column_stats(A),) if with_stats else ()),
                          compute_options=opts, keep_intermediates=True)
    s = np.array(f[c, :k])
    vt = np.ascontiguousarray(f[c + 1:, :k].T)
    return s, vt, plan_form_q(tree, plan, finish, op="rsvd", k=k), (got[0] if got else None)


def _gram_svd(A: Any, m: MatrixInput, k: int, centered: bool, opts: ComputeOptions
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ColumnStats]:
    """One pass: AᵀA and column statistics, eigendecomposed on the driver."""
    rows = m.shape[0]
    mean = None
    with progress_step("Gram pass"):
        g, st = compute(gram(A), column_stats(A), compute_options=opts)
    if centered:
        mean = st.mean
        g = g - rows * np.outer(mean, mean)
    w, v = np.linalg.eigh(g)
    order = np.argsort(w)[::-1][:k]
    s = np.sqrt(np.clip(w[order], 0.0, None))
    return s, v[:, order].T, mean, st


def truncated_svd(A: Any, k: int, oversample: int, n_iter: int, seed: int, method: str,
               centered: bool, options: OptionsLike,
               with_stats: bool = False) -> TruncatedSVDResult:
    """The engine of randomized_svd and pca; ``with_stats`` adds column statistics
    (computed in the first pass, at no extra pass)."""
    m = as_matrix(A)
    width = check_svd_args(m, k, oversample, n_iter, method)
    opts = ComputeOptions.of(options)
    # U's pass runs later, alone: it gains nothing from a cache.
    u_opts = opts.replace(cache_bytes=0)
    if method == "gram":
        s, vt, mean, st = _gram_svd(A, m, k, centered, opts)
        d = row_signs(vt)
        vt = vt * d[:, None]
        u = _gram_u(A, vt, s, mean)
        return TruncatedSVDResult(s, vt, method, svd_passes(method, n_iter, centered), 1, u, mean,
                                  u_opts, st)
    with _cached_passes(m, opts) as run:
        basis, mean, stats = _power_basis(A, m, width, n_iter, seed, method == "krylov",
                                          centered, run, with_stats)
        late = with_stats and stats is None
        s, vt, u, got = _range_finish(A, basis, mean, k, run, late)
    return TruncatedSVDResult(s, vt, method, svd_passes(method, n_iter, centered), 1, u, mean,
                              u_opts, got if late else stats)


def _gram_u(A: Any, vt: np.ndarray, s: np.ndarray, mean: np.ndarray | None) -> Lazy:
    from blocklin.ops.transforms import center

    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    return matmul(center(A, mean) if mean is not None else A, vt.T * inv)


def randomized_svd(A: Any, k: int, *, oversample: int = 10, n_iter: int = 3, seed: int = 0,
                   method: SVDMethod = "power", with_stats: bool = False,
                   compute_options: OptionsLike = None, **options: Any) -> TruncatedSVDResult:
    """Top-k singular triplets of A by randomized subspace iteration, pass-efficiently.

    Parameters
    ----------
    A : BlockMatrix, path, lazy matrix or view (``center``/``standardize``)
        An m × n matrix; n × (k + oversample) must fit on the driver and in a task.
    k : int
        Number of singular triplets, ``1 <= k <= min(m, n)``.
    oversample : int
        Extra sketch columns; l = k + oversample (capped at n). More columns, better
        accuracy for clustered spectra, at cost l per pass.
    n_iter : int
        Power iterations, as scikit-learn's ``randomized_svd`` and dask's
        ``svd_compressed`` count them: the range is that of ``A·(AᵀA)^n_iter·Ω``, the
        same subspace (and so the same accuracy) as theirs for the same n_iter. Each
        iteration is one fused ``AᵀA`` pass here, where they read A twice. The
        default, 3, reads A 4 times (dask reads it 8 times for that subspace).
    seed : int
        Seed of the Gaussian test matrix Ω (n × l, drawn on the driver with
        ``numpy.random.default_rng(seed)``): same seed, same result on any executor.
    method : {"power", "krylov", "gram"}
        ``power``: subspace iteration, then a one-pass TSQR of ``A·X`` (stable).
        ``krylov``: same passes, but the final basis is the whole block Krylov
        space ``[Ω, AᵀAΩ, …, (AᵀA)^n_iter·Ω]`` (l·(n_iter+1) columns): markedly better for slowly
        decaying or clustered spectra. ``gram``: one pass forming AᵀA (n × n on the
        driver) and its eigendecomposition; exact up to squaring the condition
        number: singular values below ``sqrt(eps)·σ₁`` (≈1.5e-8·σ₁) lose all
        accuracy, and relative error grows as ``eps·(σ₁/σⱼ)²``.
    compute_options : ComputeOptions or dict, optional
        Where and how each pass runs (:class:`~blocklin.executors.options.ComputeOptions`).
        Its block cache, unset (None) or ``"auto"``, keeps A's decoded blocks in memory
        between passes only when all of A fits the default budget (a quarter of the
        memory, ``BLOCKLIN_BLOCK_CACHE_BYTES``): then one pass reads storage and the
        others read memory. A larger A streams from storage every pass at the plan's
        per-task memory. 0: no cache; a size: that budget, a fixed resident set
        re-reading the rest each pass. Its ``progress`` reports each pass (power
        iterations, the TSQR finish, forming U later): ``True`` prints to stderr (a
        bar on a terminal, plain lines otherwise) unless an enclosing
        :func:`blocklin.executors.progress.progress_to` block listens.
    **options
        Fields of ComputeOptions replacing those of ``compute_options``
        (``executor="spark"``, ``work_dir=...``, ``progress=True``...).
    with_stats : bool
        Also compute A's column statistics, in the first pass (no extra pass):
        ``column_stats``, ``total_variance`` (‖A‖_F²) and ``explained_variance_ratio``
        (``s²/‖A‖_F²``, each component's share of all of A). ``gram`` always has them.
    Returns
    -------
    TruncatedSVDResult
        ``s`` (k,), ``Vt`` (k × n), ``U`` (m × k BlockMatrix, formed on first
        access), ``passes`` and ``u_passes``. ``U, s, Vt = result`` unpacks.

    Raises
    ------
    InputValueError, InputDtypeError
        For bad k, oversample, n_iter or method, before any pass.

    Notes
    -----
    Passes over A: ``power`` and ``krylov`` n_iter + 1 (n_iter fused power passes and
    one TSQR pass that also forms ``QᵀA``), ``gram`` 1; forming U costs one more pass
    for each (recomputing the TSQR leaves, so U is orthonormal to O(eps)). The classic
    scheme (scikit-learn, dask ``svd_compressed``) reads A 2·n_iter + 2 times for the
    same subspace.
    Per-task memory: a row panel, its product with X (rows × l) and an n × l
    partial; driver memory O(n·l) (``gram``: O(n²)). With the block cache (A fits
    its budget), the processes running the passes also hold A's decoded blocks until
    the call returns.

    References
    ----------
    Halko, Martinsson, Tropp, "Finding structure with randomness", SIAM Rev. 53
    (2011); Musco & Musco, "Randomized block Krylov methods for stronger and faster
    approximate SVD", NeurIPS 2015.

    Examples
    --------
    >>> res = bl.ops.randomized_svd(A, 20, n_iter=2)
    >>> res.s, res.Vt, res.passes
    >>> U = res.U          # one more pass, only now
    """
    opts, progress = eager_options(compute_options, options)
    with operation("randomized_svd", progress):
        res = truncated_svd(A, k, oversample, n_iter, seed, method, False, opts, with_stats)
    res.progress = progress
    return res


def pca(A: Any, k: int, *, oversample: int = 10, n_iter: int = 3, seed: int = 0,
        method: SVDMethod = "power", with_stats: bool = False,
        compute_options: OptionsLike = None, **options: Any) -> PCAResult:
    """Principal components of the rows of A, without writing a centered copy.

    Parameters are those of :func:`randomized_svd`; with ``with_stats``,
    ``total_variance`` is that of the centered A (``Σ (m−1)·var``), so
    ``explained_variance_ratio`` is scikit-learn's PCA ratio.

    Returns
    -------
    PCAResult
        ``components`` (= ``Vt``, k × n), ``explained_variance`` (s²/(m−1)),
        ``mean`` (n,), ``s``, and ``U`` (scores are ``U·diag(s)``).

    Notes
    -----
    Same passes as :func:`randomized_svd`: the column means come with the first
    power pass (folded in as ``AᵀAX − m·μμᵀX``); later passes subtract the mean
    from each block as read. With ``n_iter=0`` there is no power pass to bring them,
    so a moments pass precedes the finish (2 passes). ``gram`` computes AᵀA and the means in one fused pass
    and uses ``AᵀA − m·μμᵀ``, which cancels digits when ‖μ‖ dominates the spread.
    """
    opts, progress = eager_options(compute_options, options)
    with operation("pca", progress):
        res = truncated_svd(A, k, oversample, n_iter, seed, method, True, opts, with_stats)
    return PCAResult(res.s, res.Vt, res.method, res.passes, res.u_passes, res.u_lazy, res.mean,
                     opts, column_stats=res.column_stats, progress=progress,
                     n_samples=as_matrix(A).shape[0])
