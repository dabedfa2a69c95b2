"""Chunks, completion records and metadata damaged between an interrupted run and its resume.

Intermediates and outputs (deleted, a byte flipped, truncated, overwritten, emptied): the
resume equals the uninterrupted result bit for bit, or, where a chunk body was flipped
with its checksum trailer intact, raises CorruptChunkError naming the chunk, after which a
run without ``resume`` equals it. A source chunk damaged: a fresh run raises
CorruptChunkError (MissingChunkError when deleted); a resume raises it too unless no task
left to run reads that chunk, and then returns the uninterrupted result.
"""

from __future__ import annotations

import re

import pytest
from tests.faults.conftest import Prepared, assert_never_wrong

from blocklin.testing.fault_scenarios import DamagedIntermediates, DamagedSource


@pytest.mark.parametrize("seed", range(12))
def test_damaged_intermediates_and_outputs(prepared: Prepared, seed: int) -> None:
    outcome = prepared(DamagedIntermediates).trial(seed)
    assert_never_wrong(outcome)
    if outcome.verdict == "named":
        flipped = re.search(r"chunk bodies flipped: (\d+)", outcome.detail)
        assert outcome.raised == ("CorruptChunkError",), str(outcome)
        assert flipped is not None and int(flipped.group(1)) > 0, str(outcome)
        assert "a run without resume then equal" in outcome.detail, str(outcome)


@pytest.mark.parametrize("seed", range(8))
def test_damaged_source_chunk_is_named_never_a_number(prepared: Prepared, seed: int) -> None:
    outcome = prepared(DamagedSource).trial(seed)
    assert outcome.verdict == "named", str(outcome)
    want = "MissingChunkError" if ": deleted" in outcome.detail else "CorruptChunkError"
    assert outcome.raised[0] == want, str(outcome)
    assert all(r in ("CorruptChunkError", "MissingChunkError") for r in outcome.raised), \
        str(outcome)
