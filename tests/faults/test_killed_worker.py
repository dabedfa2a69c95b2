"""A worker process of a real ``distributed.LocalCluster`` SIGKILLed mid-compute: the compute
completes with the uninterrupted result (distributed reruns the lost tasks on the other
worker, or the restarted one) or raises a blocklin error; a resume then equals it too."""

from __future__ import annotations

import pytest
from tests.faults.conftest import Prepared, assert_equal

from blocklin.testing.fault_scenarios import KilledWorker


@pytest.mark.cluster
@pytest.mark.parametrize("seed", [0, 1])
def test_worker_killed_mid_compute(prepared: Prepared, seed: int) -> None:
    outcome = prepared(KilledWorker).trial(seed)
    assert_equal(outcome)
    assert "(the kill came after the compute)" not in outcome.detail, str(outcome)
