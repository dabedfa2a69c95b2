"""Registrations of operators owned by other modules, each only if it imports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from blocklin.pipelines.registry import Operator

__all__ = ["discover"]


def discover(try_import: Callable[[str, str], Any]) -> Iterator[Operator]:
    """Yield an :class:`Operator` for every optional operator that is importable."""
    return iter(())
