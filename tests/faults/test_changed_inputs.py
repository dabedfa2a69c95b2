"""The source rewritten between a run (complete or interrupted) and its resume, through
``bl.from_array`` or in place by zarr-python at seeded rectangles (``zarr.json`` left
alone): the resume equals a fresh run on the new data bit for bit, and that agrees with
numpy."""

from __future__ import annotations

import pytest
from tests.faults.conftest import Prepared, assert_equal

from blocklin.testing.fault_scenarios import ChangedInputs


@pytest.mark.parametrize("seed", range(8))
def test_resume_after_inputs_changed_equals_fresh_run(prepared: Prepared, seed: int) -> None:
    assert_equal(prepared(ChangedInputs).trial(seed))
