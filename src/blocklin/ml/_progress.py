"""Estimators' ``progress=``: each public method's passes reported under its name."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from blocklin.executors.progress import operation

__all__ = ["reports"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def reports(method: str) -> Callable[[F], F]:
    """Run an estimator method inside :func:`~blocklin.executors.progress.operation`
    ``"Class.method"`` with the estimator's ``progress`` (validated there, before any
    pass)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            name = f"{type(self).__name__}.{method}"
            t0 = time.perf_counter()
            with operation(name, getattr(self, "progress", False)):
                out = fn(self, *args, **kwargs)
            logger.debug("%s done in %.3f s", name, time.perf_counter() - t0)
            return out

        return cast(F, run)

    return wrap
