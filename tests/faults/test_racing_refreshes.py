"""Two ``blocklin refresh`` processes of two pipelines sharing the input X, started together
with different batches: each succeeds (or stops with LockError and succeeds when retried);
X holds both batches exactly once; each pipeline's Gram equals numpy's over the rows its
manifest covers, and after the next refresh of each, numpy's XᵀX of the final X (to 1e-11:
incremental merges round differently from one product)."""

from __future__ import annotations

import pytest
from tests.faults.conftest import Prepared, assert_equal

from blocklin.testing.fault_scenarios import RacingRefreshes


@pytest.mark.parametrize("seed", [0, 1])
def test_two_refreshes_racing_on_a_shared_input(prepared: Prepared, seed: int) -> None:
    assert_equal(prepared(RacingRefreshes).trial(seed))
