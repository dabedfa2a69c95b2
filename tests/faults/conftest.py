"""One scenario object per test module (data and the uninterrupted reference made once),
and the two judgements the fault tests make of an outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from blocklin.testing.fault_scenarios import Outcome, Scenario

Prepared = Callable[[type[Scenario]], Scenario]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prepared]:
    made: dict[type[Scenario], Scenario] = {}

    def get(kind: type[Scenario]) -> Scenario:
        if kind not in made:
            made[kind] = kind(tmp_path_factory.mktemp(kind.name))
            made[kind].setup()
        return made[kind]

    yield get
    for scenario in made.values():
        scenario.close()


def assert_equal(outcome: Outcome) -> None:
    """The finished run equals the uninterrupted one (bit for bit unless the scenario says)."""
    assert outcome.verdict == "equal", str(outcome)


def assert_never_wrong(outcome: Outcome) -> None:
    """A result equal to the reference, or a blocklin error by name: never another number."""
    assert outcome.verdict in ("equal", "named"), str(outcome)
