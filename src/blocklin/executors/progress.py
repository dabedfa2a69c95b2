"""Progress of long work: every pass of every operator and estimator, reported on the driver.

Every :func:`blocklin.compute` is one **pass** (one plan run by the engine): its stage
groups and their block tasks are reported to the **sink** in effect as tasks finish.
Operators and estimators that run many computes (power iterations, L-BFGS, TSQR
finishes) name each one with :func:`step`, so a sink sees
``"TruncatedSVD.fit · power iteration 2/3"`` rather than anonymous passes, without a
progress parameter threaded through every layer: the sink and the step labels live in
context variables.

Sinks
-----
* :class:`PlainProgress`: one line per finished pass on stderr (``blocklin:
  TruncatedSVD.fit · power iteration 2/3 · pass 2: 12 tasks in 2 stages, 0.41 s``),
  plus a line for a stage still running after ``interval`` seconds: for logs.
* :class:`RichProgress`: a ``rich`` bar per stage group of the running pass on
  stderr, and a summary line per finished pass above it: for terminals.
* any ``progress(stage_label, done, total)`` callable (the older hook of
  :func:`blocklin.compute`, :data:`ProgressHook`), called once per stage group when a
  pass starts and after every finished task.

``progress=True`` on an estimator, an eager operator or ``compute`` reports to the
enclosing sink if there is one, else to :func:`default_sink` (a bar when stderr is a
terminal, plain lines otherwise) for the duration of the call; ``False`` (the default)
installs nothing, so the call stays silent unless an enclosing block (the CLI's,
``with progress_to(...)``) listens. A sink is called on the thread that runs the
compute.

Engines that learn of finished tasks in bulk (Spark's status tracker) report counts
through :func:`engine_tracker` while the pass runs; counts never go backwards.

numpy floating-point errors raised inside block tasks are counted by the task wrapper
(:func:`blocklin.executors.base.run_block_task`) instead of printed by the worker; a
pass logs one WARNING per stage group that had any (see :class:`PassTracker`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO, runtime_checkable

from blocklin.errors import InputDtypeError

if TYPE_CHECKING:
    from blocklin.executors.base import ExecutionPlan, RunStats
    from blocklin.plan.runtime import TaskMetrics

__all__ = ["FP_ERRORS_KEY", "HookSink", "PassEnd", "PassStart", "PassTracker", "PlainProgress",
           "Progress", "ProgressHook", "ProgressSink", "RichProgress", "StageCount",
           "current_step", "default_sink", "engine_tracker", "local_pass",
           "note", "operation", "progress_to", "step"]

logger = logging.getLogger(__name__)

#: ``progress(stage_label, tasks_done, tasks_total)``, called on the driver.
ProgressHook = Callable[[str, int, int], None]

#: Key of a task's metrics holding numpy floating-point error counts by kind.
FP_ERRORS_KEY = "fp_errors"

#: Joins the parts of a step label.
SEP = " · "


@dataclass(frozen=True)
class StageCount:
    """A stage group of a pass: its label, tasks done (skipped by resume included), total."""

    label: str
    done: int
    total: int


@dataclass(frozen=True)
class PassStart:
    """A pass begins: the step it belongs to (``""`` outside any) and its stage groups."""

    step: str
    stages: tuple[StageCount, ...]
    executor: str


@dataclass(frozen=True)
class PassEnd:
    """A pass ended (``ok`` false when it raised)."""

    step: str
    tasks_run: int
    tasks_skipped: int
    seconds: float
    ok: bool


@runtime_checkable
class ProgressSink(Protocol):
    """Receives the passes of computes run while it is in effect (on the driver)."""

    def pass_started(self, start: PassStart) -> None:
        """A pass begins."""

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        """More tasks of a stage group of the running pass finished."""

    def pass_finished(self, end: PassEnd) -> None:
        """The running pass ended."""

    def note(self, text: str) -> None:
        """Something worth showing beside the progress (a dashboard link)."""

    def close(self) -> None:
        """No more passes: release the display."""


#: What ``progress=`` accepts everywhere.
Progress = bool | ProgressHook | ProgressSink | None

_SINK: ContextVar[ProgressSink | None] = ContextVar("blocklin_progress_sink", default=None)
_STEPS: ContextVar[tuple[str, ...]] = ContextVar("blocklin_progress_steps", default=())
_ENGINE: ContextVar[Callable[[str, int], None] | None] = ContextVar("blocklin_engine_tracker",
                                                                     default=None)


def current_step() -> str:
    """The label of the step now running (``""`` outside any)."""
    return SEP.join(_STEPS.get())


@contextmanager
def step(label: str) -> Iterator[None]:
    """Name the passes run inside: ``with step("power iteration 2/3"): compute(...)``.

    Steps nest; a sink sees the labels joined with ``" · "``. Costs nothing when no sink
    listens.
    """
    token = _STEPS.set((*_STEPS.get(), label))
    try:
        yield
    finally:
        _STEPS.reset(token)


def note(text: str) -> None:
    """Show ``text`` beside the progress, if a sink listens."""
    sink = _SINK.get()
    if sink is not None:
        sink.note(text)


def default_sink(stream: TextIO | None = None) -> ProgressSink:
    """A bar when the stream (default stderr) is a terminal, plain lines otherwise."""
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    if isatty is not None and isatty():
        return RichProgress(stream=stream)
    return PlainProgress(stream=stream)


def _as_sink(progress: Progress) -> tuple[ProgressSink | None, bool]:
    """The sink ``progress`` asks for and whether the caller owns (closes) it.

    Raises
    ------
    InputDtypeError
        For anything but a bool, None, a sink or a ``(label, done, total)`` callable.
    """
    if progress is None or progress is False:
        return _SINK.get(), False
    if progress is True:
        ambient = _SINK.get()
        return (ambient, False) if ambient is not None else (default_sink(), True)
    if isinstance(progress, ProgressSink):
        return progress, False
    if callable(progress):
        return HookSink(progress), False
    raise InputDtypeError(f"progress must be a bool, a progress sink or a callable "
                          f"progress(stage, done, total); got {progress!r}")


@contextmanager
def progress_to(progress: Progress) -> Iterator[ProgressSink | None]:
    """Report the passes run inside to the sink ``progress`` names (see the module docs).

    ``True``: the enclosing sink, else :func:`default_sink` (closed on exit); ``False``
    or None: whatever encloses this block; a sink or a hook: that one.

    Raises
    ------
    InputDtypeError
        For a ``progress`` of another type, before anything runs.
    """
    sink, owned = _as_sink(progress)
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)
        if owned and sink is not None:
            sink.close()


@contextmanager
def operation(name: str, progress: Progress = False) -> Iterator[None]:
    """An operator's or estimator's call: :func:`progress_to` ``progress``, inside the
    step ``name`` (``"TruncatedSVD.fit"``, ``"randomized_svd"``).

    Raises
    ------
    InputDtypeError
        For a ``progress`` of the wrong type, before anything runs.
    """
    with progress_to(progress), step(name):
        yield


def engine_tracker() -> Callable[[str, int], None] | None:
    """For engines: ``track(group_name, tasks_done_in_this_run)`` while a sink listens.

    An engine that learns of finished tasks only in bulk (Spark collects a group's
    results when its job ends) calls it as it polls; None when nobody listens, so the
    engine can skip polling altogether.
    """
    return _ENGINE.get()


class HookSink:
    """Adapts a ``progress(stage_label, done, total)`` callable to a sink."""

    def __init__(self, hook: ProgressHook) -> None:
        self.hook = hook

    def pass_started(self, start: PassStart) -> None:
        for s in start.stages:
            self.hook(s.label, s.done, s.total)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        self.hook(stage, done, total)

    def pass_finished(self, end: PassEnd) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _PassCounter:
    """Numbers passes within each top-level step, for the sinks' lines."""

    def __init__(self) -> None:
        self._top = ""
        self._n = 0

    def next(self, step_label: str) -> int:
        top = step_label.split(SEP, 1)[0]
        if top != self._top:
            self._top, self._n = top, 0
        self._n += 1
        return self._n


def _pass_name(step_label: str, number: int) -> str:
    return f"{step_label}{SEP}pass {number}" if step_label else f"pass {number}"


def _summary(name: str, start: PassStart, end: PassEnd) -> str:
    if not end.ok:
        return f"{name} failed after {end.seconds:.2f} s"
    skipped = f" ({end.tasks_skipped} skipped)" if end.tasks_skipped else ""
    stages = len(start.stages)
    return (f"{name}: {end.tasks_run} task{'s' if end.tasks_run != 1 else ''}{skipped} in "
            f"{stages} stage{'s' if stages != 1 else ''}, {end.seconds:.2f} s")


class PlainProgress:
    """Plain progress lines for logs: one per finished pass, and one for a stage still
    running ``interval`` seconds after the last line.

    Parameters
    ----------
    stream : file, optional
        Where lines go (default: ``sys.stderr`` as it is when each line is written).
    interval : float
        Seconds between lines about a pass still running.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream
        self.interval = interval
        self._passes = _PassCounter()
        self._start: PassStart | None = None
        self._name = ""
        self._last = 0.0
        self._notes: set[str] = set()

    def _write(self, text: str) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        out.write(f"blocklin: {text}\n")
        out.flush()

    def pass_started(self, start: PassStart) -> None:
        self._start = start
        self._name = _pass_name(start.step, self._passes.next(start.step))
        self._last = time.monotonic()

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval and done < total:
            self._last = now
            self._write(f"{self._name}{SEP}{stage}: {done}/{total} tasks")

    def pass_finished(self, end: PassEnd) -> None:
        if self._start is not None:
            self._write(_summary(self._name, self._start, end))
        self._start = None

    def note(self, text: str) -> None:
        if text not in self._notes:  # e.g. a dashboard link, once rather than every pass
            self._notes.add(text)
            self._write(text)

    def close(self) -> None:
        pass


#: Longest row description of the bar (rich shortens the bar, not the text): an 80-column
#: terminal keeps a bar of 20, the task counts and the time beside it.
_DESCRIPTION_CHARS = 44


class RichProgress:
    """A ``rich`` bar per stage group of the running pass, on stderr.

    Each finished pass leaves one summary line above the bars (the plain sink's line)
    and its rows are cleared, so a fit of a hundred passes keeps a short display.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._progress: Any = None
        self._rows: dict[str, Any] = {}
        self._passes = _PassCounter()
        self._start: PassStart | None = None
        self._name = ""
        self._notes: set[str] = set()

    def _display(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(file=self.stream, stderr=self.stream is None)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=console, transient=False)
            self._progress.start()
        return self._progress

    def pass_started(self, start: PassStart) -> None:
        bar = self._display()
        self._start = start
        self._name = _pass_name(start.step, self._passes.next(start.step))
        # The rows name the innermost step (the pass's full label ends its summary line).
        inner = start.step.rsplit(SEP, 1)[-1]
        for s in start.stages:
            text = f"{inner}{SEP}{s.label}" if inner else s.label
            if len(text) > _DESCRIPTION_CHARS:
                text = "…" + text[-(_DESCRIPTION_CHARS - 1):]
            self._rows[s.label] = bar.add_task(text, total=s.total, completed=s.done)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        row = self._rows.get(stage)
        if row is not None and self._progress is not None:
            self._progress.update(row, completed=done, total=total)

    def pass_finished(self, end: PassEnd) -> None:
        bar = self._progress
        if bar is None or self._start is None:
            return
        bar.refresh()  # the pass's last state reaches the terminal before its rows go
        for row in self._rows.values():
            bar.remove_task(row)
        self._rows.clear()
        bar.console.print(_summary(self._name, self._start, end), markup=False,
                          highlight=False)
        self._start = None

    def note(self, text: str) -> None:
        if text not in self._notes:
            self._notes.add(text)
            self._display().console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._rows.clear()


@contextmanager
def local_pass(what: str, executor: str = "in-process") -> Iterator[None]:
    """Report a pass run in this process without an engine (in-memory data) as one task."""
    sink = _SINK.get()
    if sink is None:
        yield
        return
    label = current_step()
    sink.pass_started(PassStart(label, (StageCount(what, 0, 1),), executor))
    t0 = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
        sink.stage_progress(what, 1, 1)
    finally:
        sink.pass_finished(PassEnd(label, int(ok), 0, time.perf_counter() - t0, ok))


class PassTracker:
    """The driver's side of one compute: task metrics into ``RunStats``, progress into
    the sink, and floating-point error counts into one warning per stage group.

    Parameters
    ----------
    xplan : ExecutionPlan
        The plan being run (its groups' totals and what resume skipped).
    labels : mapping
        Stage group label by group runtime name.
    run : RunStats
        Filled as tasks finish.
    sink : ProgressSink or None
        Where progress goes (None: counted only).
    """

    def __init__(self, xplan: ExecutionPlan, labels: Mapping[str, str], run: RunStats,
                 sink: ProgressSink | None) -> None:
        self.xplan = xplan
        self.labels = dict(labels)
        self.run = run
        self.sink = sink
        groups = xplan.final.groups
        self.totals = {rt.name: g.ntasks for rt, g in zip(xplan.runtimes, groups, strict=True)}
        self.base = {rt.name: self.totals[rt.name] - n
                     for rt, n in zip(xplan.runtimes, xplan.pending, strict=True)}
        self.counted = dict.fromkeys(self.totals, 0)
        self.shown = dict(self.base)
        self.fp: dict[str, dict[str, int]] = {}
        self.fp_tasks: dict[str, int] = {}
        self.task_seconds: dict[str, float] = {}

    def stages(self) -> tuple[StageCount, ...]:
        return tuple(StageCount(self.labels[n], self.base[n], t) for n, t in self.totals.items())

    def on_done(self, metrics: TaskMetrics) -> None:
        """The executor's ``on_task_done``: one finished group task."""
        name = str(metrics["group"])
        label = self.labels.get(name, name)
        self.run.add(metrics, label)
        self.task_seconds[label] = self.task_seconds.get(label, 0.0) + float(metrics["seconds"])
        errors = metrics.get(FP_ERRORS_KEY)
        if errors:
            per = self.fp.setdefault(name, {})
            for kind, n in errors.items():
                per[kind] = per.get(kind, 0) + int(n)
            self.fp_tasks[name] = self.fp_tasks.get(name, 0) + 1
        if name in self.counted:
            self.counted[name] += 1
            self._show(name, self.base[name] + self.counted[name])

    def engine_done(self, name: str, done: int) -> None:
        """Tasks of group ``name`` finished in this run, as an engine polled them."""
        if name in self.totals:
            self._show(name, self.base[name] + done)

    def _show(self, name: str, value: int) -> None:
        value = min(value, self.totals[name])
        if value > self.shown[name]:
            self.shown[name] = value
            if self.sink is not None:
                self.sink.stage_progress(self.labels[name], value, self.totals[name])

    def warn_fp_errors(self) -> None:
        """One WARNING per stage group whose tasks met numpy floating-point errors."""
        for g, rt in enumerate(self.xplan.runtimes):
            counts = self.fp.get(rt.name)
            if not counts:
                continue
            kernels = ", ".join(f"{m.op} ({type(m.kernel).__name__})" for m in rt.members)
            what = ", ".join(f"{kind} {n} time{'s' if n != 1 else ''}"
                             for kind, n in sorted(counts.items()))
            logger.warning(
                "stage %s: numpy reported %s in %d of %d block tasks (kernel %s). Every task's "
                "output was checked finite, so the result is not NaN or infinite, but an "
                "overflow or invalid value inside a kernel may have cost accuracy: check the "
                "scale of the input", self.labels[rt.name], what, self.fp_tasks[rt.name],
                self.xplan.pending[g], kernels)


@contextmanager
def tracking(progress: Progress, xplan: ExecutionPlan, labels: Mapping[str, str],
             run: RunStats, executor: str) -> Iterator[PassTracker]:
    """Around an engine's ``execute``: yields the tracker whose ``on_done`` the engine
    calls; reports the pass to the sink ``progress`` names (see :func:`progress_to`)
    and logs floating-point errors and stage timings when it ends."""
    sink, owned = _as_sink(progress)
    tracker = PassTracker(xplan, labels, run, sink)
    label = current_step()
    token = _ENGINE.set(tracker.engine_done if sink is not None else None)
    # The engine's notes (a dashboard link) go to this pass's sink, an explicit one too.
    sink_token = _SINK.set(sink)
    if sink is not None:
        sink.pass_started(PassStart(label, tracker.stages(), executor))
    t0 = time.perf_counter()
    ok = False
    try:
        yield tracker
        ok = True
    finally:
        _ENGINE.reset(token)
        _SINK.reset(sink_token)
        seconds = time.perf_counter() - t0
        tracker.warn_fp_errors()
        if logger.isEnabledFor(logging.DEBUG):
            run_tasks = sum(tracker.counted.values())
            logger.debug("pass %s on %s %s: %d tasks in %.3f s", label or "(compute)", executor,
                         "done" if ok else "failed", run_tasks, seconds)
            for name, n in tracker.counted.items():
                stage = tracker.labels[name]
                logger.debug("  stage %s: %d tasks, %.3f task-seconds", stage, n,
                             tracker.task_seconds.get(stage, 0.0))
        try:
            if sink is not None:
                sink.pass_finished(PassEnd(label, sum(tracker.counted.values()), xplan.skipped,
                                           seconds, ok))
        finally:
            if owned and sink is not None:
                sink.close()
