"""blocklin: block-partitioned linear algebra over zarr chunks."""

__version__ = "0.1.0"

from blocklin import ops
from blocklin._logging import configure_from_env as _configure_logging
from blocklin.executors import ComputeOptions, compute
from blocklin.storage import BlockMatrix, from_array
from blocklin.storage import open_matrix as open
from blocklin.storage.spark_io import from_spark, to_spark  # pyspark loads inside them

__all__ = ["BlockMatrix", "ComputeOptions", "__version__", "compute", "from_array", "from_spark", "open",
           "ops", "to_spark"]

_configure_logging()  # a NullHandler; a stderr handler when BLOCKLIN_LOG_LEVEL is set
