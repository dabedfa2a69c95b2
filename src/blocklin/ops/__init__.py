"""Block operators. Each returns a lazy result; nothing runs until ``compute``."""

from blocklin.ops.glm import eval_pass, loss_grad, newton_pass, normal_stats
from blocklin.ops.products import gram, matmul
from blocklin.ops.sketch import sketch
from blocklin.ops.sketched_matmul import SketchedProduct, sketched_matmul
from blocklin.ops.stats import ColumnStats, column_stats
from blocklin.ops.svd import PCAResult, TruncatedSVDResult, pca, randomized_svd
from blocklin.ops.svd_update import SVDState, svd_update
from blocklin.ops.transforms import center, scale, standardize
from blocklin.ops.tsqr import QR, SVDFactors, svd, tsqr, tsqr_r

__all__ = [
           "QR",
           "ColumnStats",
           "PCAResult",
           "SVDFactors",
           "SVDState",
           "SketchedProduct",
           "TruncatedSVDResult",
           "center",
           "column_stats",
           "eval_pass",
           "gram",
           "loss_grad",
           "matmul",
           "newton_pass",
           "normal_stats",
           "pca",
           "randomized_svd",
           "scale",
           "sketch",
           "sketched_matmul",
           "standardize",
           "svd",
           "svd_update",
           "tsqr",
           "tsqr_r",
]
