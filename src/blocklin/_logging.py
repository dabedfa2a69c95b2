"""blocklin's log messages: module loggers under ``blocklin.*``, quiet unless asked.

The library attaches only a ``NullHandler`` to the ``blocklin`` logger (the standard
library's advice): an application configures logging as it likes, e.g.
``logging.basicConfig(level=logging.INFO)``. Two ways ask blocklin itself to print:

* the CLI installs :func:`install_handler` at the level of ``-v``/``--quiet``, else
  ``BLOCKLIN_LOG_LEVEL``, else WARNING;
* in Python, ``BLOCKLIN_LOG_LEVEL`` set when blocklin is imported does the same (a
  stderr handler on the ``blocklin`` logger at that level).

What is logged: INFO the executor and cluster of a run (the dask dashboard link, the
Spark UI), what resume skips, lock waits, the steps of a pipeline; DEBUG plan sizes,
cache budgets and per-stage timings; WARNING numpy floating-point errors met inside
block tasks (one line per stage group) and task attempts Spark retried.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOGGER_NAME", "configure_from_env", "install_handler"]

LOGGER_NAME = "blocklin"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each record (a rich progress display
    redirects it while it runs, so log lines land above the bars)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def install_handler(level: int) -> logging.Handler:
    """Print blocklin's records at ``level`` and above on stderr (replacing an earlier
    handler of ours); records stop at the ``blocklin`` logger, so a root handler an
    application added does not print them twice."""
    log = logging.getLogger(LOGGER_NAME)
    for h in list(log.handlers):
        if isinstance(h, _StderrHandler):
            log.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler


def configure_from_env() -> None:
    """At import: the ``NullHandler``, and a stderr handler when ``BLOCKLIN_LOG_LEVEL``
    names a level (an unknown value is left to the CLI, which refuses it)."""
    from blocklin.config import default_log_level
    from blocklin.errors import ConfigError

    log = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())
    try:
        level = default_log_level()
    except ConfigError:
        return
    if level is not None:
        install_handler(level)
