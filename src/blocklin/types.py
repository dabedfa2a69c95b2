"""Shared aliases and option sets, each defined once (style rule 13)."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "CODECS",
    "DEVICES",
    "EXECUTORS",
    "BlockIndex",
    "CodecName",
    "Device",
    "ExecutorName",
    "Shape",
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
