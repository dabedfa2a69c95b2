"""Block kernels for generalized linear models: one module per pass.

The passes behind every solver of :mod:`blocklin.ml`, each a per-panel kernel, a
combine kernel and the layout of the partial they exchange (one contiguous float64
array whose fields the layout names):

* :mod:`.moments` -- :func:`normal_stats`: the weighted sufficient statistics of least
  squares: total weight, Σw², row count, weighted column means of ``[X y]`` and the
  centered co-moment matrix ``(Z - μ)ᵀ W (Z - μ)`` (a symmetric rank-k update per
  block). Blocks are merged with Chan's pairwise update, so the statistics are as
  accurate as a two-pass computation; ``XᵀWX``, ``XᵀWy``, ``yᵀWy`` and column sums
  follow from them without cancellation-prone subtractions.
* :mod:`.qr` -- TSQR of ``√w·[X 1 y]`` (R from the Gram where the panel's centred
  design is well conditioned, Householder otherwise), with the exact (double-double)
  Gram of the panels whose conditioning needs it (:mod:`blocklin.ops.extended`);
  :mod:`.conditioning` estimates the condition numbers that decide it.
* :mod:`.refine` -- loss and gradient in double-double, for iterative refinement.
* :mod:`.gradient` -- :func:`loss_grad`: loss and gradient of squared, logistic or
  multinomial loss at given coefficients (one pass per evaluation, for L-BFGS and
  OWL-QN); the losses themselves are in :mod:`.losses`.
* :mod:`.lsqr` -- ``(tᵀt, Zᵀt)`` for ``t = Z·coef − c·y``: one LSQR iteration.
* :mod:`.newton` -- :func:`newton_pass`: binomial or multinomial logistic loss,
  gradient and Hessian ``[X 1]ᵀD[X 1]`` in the same pass, for Newton/IRLS.
* :mod:`.evaluation` -- :func:`eval_pass`: the sums of the training summaries.
* :mod:`.passes` -- how any of them runs: :func:`~.passes.build_pass` (a lazy plan)
  and :func:`~.passes.run_local` (in-memory arrays, the same kernels chunk by chunk);
  :mod:`.panels` reads a task's row panel.

CSR row panels stay sparse in every pass: margins and gradients are sparse products,
the moments and the Newton Hessian sparse weighted Grams with the centring done
implicitly (:mod:`.sparse`), so a pass over a CSR X costs O(nnz) per panel and never
the dense m_b × p panel. The TSQR pass too takes a well-conditioned panel's R from
its sparse Gram; only its Householder fallback (ill-conditioned, short or weighted
panels) densifies a panel, as a Householder QR must.

Every pass is a fixed-order tree over row-block index, so results are bitwise
identical on every executor. Each kernel is a pure function of its blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blocklin.executors.lazy import Lazy
from blocklin.ops.glm.evaluation import eval_spec
from blocklin.ops.glm.gradient import loss_grad_spec
from blocklin.ops.glm.losses import Family
from blocklin.ops.glm.moments import moments_spec
from blocklin.ops.glm.newton import newton_spec
from blocklin.ops.glm.passes import build_pass
from blocklin.ops.inputs import as_matrix

__all__ = ["Family", "eval_pass", "loss_grad", "newton_pass", "normal_stats"]


def normal_stats(X: Any, y: Any, sample_weight: Any = None) -> Lazy:
    """One-pass weighted least-squares statistics of row-aligned X and y, lazily.

    Parameters
    ----------
    X : BlockMatrix, path or lazy matrix, m × p
    y : BlockMatrix, path or lazy matrix, m × q (row-aligned with X)
    sample_weight : BlockMatrix, m × 1, optional

    Returns
    -------
    Lazy
        Computes to a packed ``(p + q + 2, max(p + q, 3))`` array: row 0 (Σw, Σw²,
        rows), row 1 the weighted means of ``[X y]``, rows 2.. the centered co-moment
        matrix ``(Z - μ)ᵀW(Z - μ)``. See :class:`blocklin.ml.LinearRegression`.

    Notes
    -----
    One pass over X, y and the weights, read together in one stage. Each task copies
    its panel once, centers it by the panel's means and applies one symmetric rank-k
    update (``dsyrk``, m_b·d² flops); panels merge by Chan's update in a fixed-order
    tree. Per-task memory: the panel, one float64 copy of it and two d × d matrices.
    """
    xm = as_matrix(X, "X")
    ym = as_matrix(y, "y")
    spec = moments_spec(xm.shape[1], ym.shape[1], sample_weight is not None, xm.grid[1], True)
    return build_pass(spec, X, y, sample_weight)


def loss_grad(X: Any, y: Any, coef: np.ndarray, *, family: Family = "squared",
              fit_intercept: bool = True, sample_weight: Any = None) -> Lazy:
    """Summed loss and gradient at ``coef`` (``(p + intercept, k)``), lazily.

    Notes
    -----
    One pass; per-task memory a panel plus its margins (m_b × k). Computes to a row
    ``[loss, Σw, gradient...]`` (see :class:`.gradient.LossGradLayout`).
    """
    xm = as_matrix(X, "X")
    spec = loss_grad_spec(family, np.asarray(coef, dtype=np.float64), fit_intercept,
                          sample_weight is not None, xm.grid[1])
    return build_pass(spec, X, y, sample_weight)


def newton_pass(X: Any, y: Any, coef: np.ndarray, *, fit_intercept: bool = True,
                sample_weight: Any = None) -> Lazy:
    """Binomial loss, gradient and Hessian at ``coef`` in one pass, lazily.

    Notes
    -----
    One pass; each task applies a symmetric rank-k update to its panel scaled by
    √(w p(1-p)). Per-task memory: a panel, one copy and a P × P matrix.
    """
    xm = as_matrix(X, "X")
    coef = np.asarray(coef, dtype=np.float64)
    spec = newton_spec(coef, fit_intercept, sample_weight is not None, xm.grid[1])
    return build_pass(spec, X, y, sample_weight)


def eval_pass(X: Any, y: Any, coef: np.ndarray, *, family: Family = "squared",
              fit_intercept: bool = True, sample_weight: Any = None,
              y_mean: float = 0.0) -> Lazy:
    """Sums for a fitted model's summary (residual norms, accuracy, AUC histograms)."""
    xm = as_matrix(X, "X")
    spec = eval_spec(family, np.asarray(coef, dtype=np.float64), fit_intercept,
                     sample_weight is not None, xm.grid[1], y_mean)
    return build_pass(spec, X, y, sample_weight)
