"""parse_memory: dask's unit table, with single letters binary as Spark/JVM settings read them."""

from __future__ import annotations

import pytest

from blocklin.config import parse_memory
from blocklin.errors import InputValueError


@pytest.mark.parametrize(("text", "expected"), [
    ("2GiB", 2 * 2**30), ("2 GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("512m", 512 * 2**20),
    ("1.5g", 3 * 2**29), ("4k", 4096), ("3kb", 3000), ("1e3", 1000), ("7", 7), ("2T", 2 * 2**40),
    (12345, 12345),
])
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["GiB", "", "2 foos", "abc", "-5GiB", "0", 0, True, 1.5])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(InputValueError, match="memory size"):
        parse_memory(bad)  # type: ignore[arg-type]
