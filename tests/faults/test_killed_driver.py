"""The driver SIGKILLed at seeded points of a 15-stage plan (TSQR with Q stored, Q·W stored,
AᵀA, QᵀQ, column statistics), then resumed in a new process: the result equals an
uninterrupted run's bit for bit."""

from __future__ import annotations

import re

import pytest
from tests.faults.conftest import Prepared, assert_equal

from blocklin.testing.fault_scenarios import KilledDriver


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_driver_killed_then_resumed_equals_uninterrupted_run(prepared: Prepared, seed: int) -> None:
    outcome = prepared(KilledDriver).trial(seed)
    assert_equal(outcome)
    # Not vacuous: these seeds kill mid-run (after k < all records), and the resume
    # skipped the blocks recorded before the kill instead of recomputing everything.
    assert outcome.detail.startswith("killed at"), str(outcome)
    skipped = re.search(r"skipped (\d+)", outcome.detail)
    assert skipped is not None and int(skipped.group(1)) > 0, str(outcome)
