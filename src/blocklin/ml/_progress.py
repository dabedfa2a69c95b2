"""Estimators' ``progress=``: each public method's passes reported under its name."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from blocklin.executors.progress import operation

__all__ = ["reports"]

F = TypeVar("F", bound=Callable[..., Any])


def reports(method: str) -> Callable[[F], F]:
    """Run an estimator method inside :func:`~blocklin.executors.progress.operation`
    ``"Class.method"`` with the estimator's ``progress`` (validated there, before any
    pass)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            with operation(f"{type(self).__name__}.{method}", getattr(self, "progress", False)):
                return fn(self, *args, **kwargs)

        return cast(F, run)

    return wrap
