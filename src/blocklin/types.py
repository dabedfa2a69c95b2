"""Shared aliases and option sets, each defined once (style rule 13)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "CODECS",
    "DEVICES",
    "EXECUTORS",
    "LABEL_SCALINGS",
    "LOGISTIC_FAMILIES",
    "LOGISTIC_SOLVERS",
    "SOLVERS",
    "BlockIndex",
    "CodecName",
    "Device",
    "ExecutorName",
    "LabelScaling",
    "LogisticFamily",
    "LogisticSolver",
    "Shape",
    "Solver",
    "parse_option",
]

Shape = tuple[int, ...]
BlockIndex = tuple[int, ...]

ExecutorName = Literal["dask", "spark"]
EXECUTORS: tuple[str, ...] = get_args(ExecutorName)

Device = Literal["cpu", "gpu"]
DEVICES: tuple[str, ...] = get_args(Device)

CodecName = Literal["none", "lz4", "zstd"]
CODECS: tuple[str, ...] = get_args(CodecName)

#: Solvers of ``blocklin.ml.LinearRegression``.
Solver = Literal["auto", "normal", "qr", "lbfgs", "owlqn", "sketch"]
SOLVERS: tuple[str, ...] = get_args(Solver)

#: Solvers of ``blocklin.ml.LogisticRegression``.
LogisticSolver = Literal["auto", "newton", "lbfgs", "owlqn"]
LOGISTIC_SOLVERS: tuple[str, ...] = get_args(LogisticSolver)

#: ``none``: minimize the documented objective; ``mllib``: reproduce MLlib's fit on a
#: label divided by its standard deviation (its L2 penalty is then divided by std(y)).
LabelScaling = Literal["none", "mllib"]
LABEL_SCALINGS: tuple[str, ...] = get_args(LabelScaling)

#: Logistic regression families (MLlib's ``family``).
LogisticFamily = Literal["auto", "binomial", "multinomial"]
LOGISTIC_FAMILIES: tuple[str, ...] = get_args(LogisticFamily)


def parse_option(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a clear error.

    Raises
    ------
    InputDtypeError
        If ``value`` is not a string.
    InputValueError
        If ``value`` is not one of ``allowed``.
    """
    from blocklin.errors import InputDtypeError, InputValueError

    if not isinstance(value, str):
        raise InputDtypeError(f"{name} must be a string, one of {allowed}; got {value!r}")
    if value not in allowed:
        raise InputValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value
