"""Block operators, of two kinds.

Lazy (nothing runs until :func:`blocklin.compute`, which fuses what shares a read):
``gram``, ``matmul``, ``column_stats``, ``sketch``, ``sketched_matmul``, ``tsqr``,
``tsqr_r``, ``svd`` and the views ``center``, ``scale``, ``standardize``.

Eager (an iterative method: each call runs its own passes at once, as many as its
docstring states, and returns numbers): ``randomized_svd``, ``pca`` and ``svd_update``;
and the co-occurrence family: ``cooccurrence`` and ``cooccurrence_counts`` (a block
pass of sparse partial counts and a tree sum), ``ppmi`` and ``embed`` (driver-side),
``swivel`` (sharded fit, one graph per epoch).
They take the run's options as :func:`blocklin.compute` does: ``compute_options`` (a
:class:`~blocklin.ComputeOptions`) and its fields as keywords (``executor``,
``work_dir``...); a pipeline step naming one is listed as ``eager`` by ``explain``.

The GLM pass kernels (``blocklin.ops.glm``) are internal to the estimators of
:mod:`blocklin.ml`, which unpack their results.
"""

from blocklin.ops.cooccurrence import cooccurrence, cooccurrence_counts, embed, nearest, ppmi
from blocklin.ops.products import gram, matmul
from blocklin.ops.sketch import sketch
from blocklin.ops.sketched_matmul import SketchedProduct, sketched_matmul
from blocklin.ops.stats import ColumnStats, column_stats
from blocklin.ops.svd import PCAResult, TruncatedSVDResult, pca, randomized_svd
from blocklin.ops.svd_update import SVDState, svd_update
from blocklin.ops.swivel import SwivelResult, swivel
from blocklin.ops.transforms import center, scale, standardize
from blocklin.ops.tsqr import QR, SVDFactors, svd, tsqr, tsqr_r

__all__ = [
           "QR",
           "ColumnStats",
           "PCAResult",
           "SVDFactors",
           "SVDState",
           "SketchedProduct",
           "SwivelResult",
           "TruncatedSVDResult",
           "center",
           "column_stats",
           "cooccurrence",
           "cooccurrence_counts",
           "embed",
           "gram",
           "matmul",
           "nearest",
           "pca",
           "ppmi",
           "randomized_svd",
           "scale",
           "sketch",
           "sketched_matmul",
           "standardize",
           "svd",
           "svd_update",
           "swivel",
           "tsqr",
           "tsqr_r",
]
