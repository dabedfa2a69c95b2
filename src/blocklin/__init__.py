"""blocklin: block-partitioned linear algebra over zarr chunks."""

__version__ = "0.1.0"

from blocklin import ops
from blocklin.executors import compute
from blocklin.storage import BlockMatrix, from_array
from blocklin.storage import open_matrix as open  # noqa: A001

__all__ = ["BlockMatrix", "__version__", "compute", "from_array", "open", "ops"]
