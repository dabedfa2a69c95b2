"""Shared aliases and option sets, each defined once (style rule 13)."""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

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
    "Option",
    "Shape",
    "Solver",
    "parse_option",
]

Shape = tuple[int, ...]
BlockIndex = tuple[int, ...]

ExecutorName = Literal["dask", "spark"]
EXECUTORS: tuple[ExecutorName, ...] = get_args(ExecutorName)

Device = Literal["cpu", "gpu"]
DEVICES: tuple[Device, ...] = get_args(Device)

CodecName = Literal["none", "lz4", "zstd"]
CODECS: tuple[CodecName, ...] = get_args(CodecName)

#: Solvers of ``blocklin.ml.LinearRegression``.
Solver = Literal["auto", "normal", "qr", "lbfgs", "owlqn", "sketch"]
SOLVERS: tuple[Solver, ...] = get_args(Solver)

#: Solvers of ``blocklin.ml.LogisticRegression``.
LogisticSolver = Literal["auto", "newton", "lbfgs", "owlqn"]
LOGISTIC_SOLVERS: tuple[LogisticSolver, ...] = get_args(LogisticSolver)

#: ``none``: minimize the documented objective; ``mllib``: reproduce MLlib's fit on a
#: label divided by its standard deviation (its L2 penalty is then divided by std(y)).
LabelScaling = Literal["none", "mllib"]
LABEL_SCALINGS: tuple[LabelScaling, ...] = get_args(LabelScaling)

#: Logistic regression families (MLlib's ``family``).
LogisticFamily = Literal["auto", "binomial", "multinomial"]
LOGISTIC_FAMILIES: tuple[LogisticFamily, ...] = get_args(LogisticFamily)


#: An option set's member type (a ``Literal`` of strings): what :func:`parse_option` returns.
Option = TypeVar("Option", bound=str)


def parse_option(name: str, value: object, allowed: tuple[Option, ...]) -> Option:
    """Return ``value`` if it is one of ``allowed``, else raise a clear error.

    Typed by its option set: ``parse_option("solver", s, SOLVERS)`` returns a
    :data:`Solver`, so callers need no cast.

    Parameters
    ----------
    name : str
        The option's name, for the message.
    value : object
        What the caller passed.
    allowed : tuple of str
        The option set, e.g. ``get_args(Solver)``.

    Returns
    -------
    str
        ``value``, typed as a member of ``allowed``.

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
    for option in allowed:
        if option == value:
            return option
    raise InputValueError(f"{name} must be one of {allowed}; got {value!r}")
