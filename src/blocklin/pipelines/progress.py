"""A rich progress bar per stage, fed by ``blocklin.compute(progress=...)``."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["StageProgress"]


class StageProgress:
    """Context manager and progress hook: one bar per stage group (tasks done/total).

    Disabled (a no-op hook) when ``enabled`` is false, e.g. when stdout is not a
    terminal, so cron logs and ``--json`` output stay clean.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), transient=False)
            self._progress.start()
        return self

    def __call__(self, label: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(label)
        if task is None:
            task = self._tasks[label] = self._progress.add_task(label[:60], total=total)
        self._progress.update(task, completed=done, total=total)

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
