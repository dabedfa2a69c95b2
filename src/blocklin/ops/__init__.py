"""Block operators. Each returns a lazy result; nothing runs until ``compute``."""

from blocklin.ops.products import gram, matmul
from blocklin.ops.stats import ColumnStats, column_stats
from blocklin.ops.transforms import center, scale, standardize

__all__ = ["ColumnStats", "center", "column_stats", "gram", "matmul", "scale", "standardize"]
