"""``blocklin refresh`` SIGKILLed at seeded times after it takes the output lock, then run
again: its outputs equal an uninterrupted refresh's bit for bit, and X holds the batch once.

Bit for bit rather than to a tolerance (tests/pipelines/test_refresh.py compares with numpy
to 1e-11 because an incremental merge rounds differently from one product over all rows):
here both sides take the same incremental path, merging the same committed state with the
same batch's partial results, so their floating-point operations are the same.
"""

from __future__ import annotations

import pytest
from tests.faults.conftest import Prepared, assert_equal

from blocklin.testing.fault_scenarios import KilledRefresh


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_refresh_killed_then_rerun_equals_uninterrupted_refresh(prepared: Prepared,
                                                                seed: int) -> None:
    assert_equal(prepared(KilledRefresh).trial(seed))
