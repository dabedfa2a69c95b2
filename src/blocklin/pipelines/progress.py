"""The CLI's progress display for ``run`` and ``refresh``: every pass of the run.

The planned stages and the iterative steps' own passes (SVD power iterations, solver
evaluations) all report to one sink (:mod:`blocklin.executors.progress`): a ``rich``
bar on stderr when stderr is a terminal, plain lines on stderr otherwise (cron logs),
nothing with ``--quiet``. Stdout keeps only the command's result (and ``--json``'s
document).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from blocklin.executors.progress import (
    PlainProgress,
    ProgressSink,
    RichProgress,
    progress_to,
    step,
)

__all__ = ["cli_progress"]


@contextmanager
def cli_progress(label: str, quiet: bool = False,
                 stream: TextIO | None = None) -> Iterator[ProgressSink | None]:
    """Report every pass run inside to stderr (``stream``), under the step ``label``.

    A bar when the stream is a terminal, plain lines otherwise; no sink with ``quiet``.
    """
    if quiet:
        yield None
        return
    out = stream if stream is not None else sys.stderr
    sink: ProgressSink = RichProgress(stream) if out.isatty() else PlainProgress(stream)
    try:
        with progress_to(sink), step(label):
            yield sink
    finally:
        sink.close()
