"""Executors compile a finalized plan onto an engine: Dask (local or distributed), Spark."""

from blocklin.executors.api import compute, get_executor
from blocklin.executors.base import ExecutionPlan, Executor, RunStats, prepare
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import ComputeOptions

__all__ = ["ComputeOptions", "ExecutionPlan", "Executor", "Lazy", "RunStats", "compute",
           "get_executor", "prepare"]
