"""parse_option: every option set accepts each of its members and refuses the rest."""

from __future__ import annotations

from typing import get_args

import pytest

from blocklin.errors import InputDtypeError, InputValueError
from blocklin.ops.sketch import SKETCH_KINDS, SketchKind
from blocklin.ops.sketched_matmul import PRODUCT_KINDS, ProductKind
from blocklin.types import (
    CODECS,
    DEVICES,
    EXECUTORS,
    LABEL_SCALINGS,
    LOGISTIC_FAMILIES,
    LOGISTIC_SOLVERS,
    SOLVERS,
    parse_option,
)

OPTION_SETS = [CODECS, DEVICES, EXECUTORS, LABEL_SCALINGS, LOGISTIC_FAMILIES, LOGISTIC_SOLVERS,
               SOLVERS, SKETCH_KINDS, PRODUCT_KINDS]


@pytest.mark.parametrize("allowed", OPTION_SETS)
def test_every_member_parses_to_itself(allowed: tuple[str, ...]) -> None:
    for value in allowed:
        assert parse_option("opt", value, allowed) == value


@pytest.mark.parametrize("allowed", OPTION_SETS)
def test_unknown_and_non_string_values_are_refused(allowed: tuple[str, ...]) -> None:
    with pytest.raises(InputValueError, match=r"opt must be one of .*; got 'nope'"):
        parse_option("opt", "nope", allowed)
    with pytest.raises(InputValueError):
        parse_option("opt", allowed[0].upper() + "x", allowed)
    with pytest.raises(InputDtypeError, match="opt must be a string"):
        parse_option("opt", 1, allowed)


def test_product_kinds_are_the_sketch_kinds_and_coordinated() -> None:
    # One definition: a sketch kind added to SketchKind is a product kind too.
    assert get_args(ProductKind) == (*get_args(SketchKind), "coordinated", "mlmc")
