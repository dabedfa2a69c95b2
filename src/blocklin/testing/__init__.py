"""Reusable test harness: executor fixtures, plan-checking helpers, fault injection."""

from blocklin.testing.faults import FailAfter, inject_fault
from blocklin.testing.helpers import assert_bitwise_equal, random_matrix

__all__ = ["FailAfter", "assert_bitwise_equal", "inject_fault", "random_matrix"]
