"""Disk use of a pipeline's output directory: what a run leaves, and ``blocklin gc``.

A successful run (or refresh) removes what its computes left in the work directory
(:func:`run_lifecycle`): its intermediates and matrix results already copied to the
outputs; with the default work directory (``<output_dir>/.work``, which belongs to
this output directory), everything in it that no running compute uses. A failed run
keeps all of it for ``--resume``; ``--keep-intermediates`` (or the spec's
``executor.keep_intermediates``) keeps it after a success too.

:func:`collect_pipeline_garbage` frees, besides the ``.work`` directory's leftovers
(:func:`blocklin.storage.gc.collect_garbage`), the outputs of runs the manifest no
longer names: ``runs/<id>/`` folders on object stores (``runs/.pending.json``'s
folder is an unfinished run's: ``--resume`` reuses it), ``.staging`` locally (an
unfinished run's staged outputs). Committed outputs, the manifest, the report and the
refresh state are never touched, and nothing is while a run holds the output lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from blocklin.errors import LockError
from blocklin.pipelines.outdir import manifest_areas
from blocklin.storage.gc import Entry, GcReport, collect_garbage, format_age, tree_usage
from blocklin.storage.locations import location
from blocklin.storage.stores import store_for

if TYPE_CHECKING:
    from blocklin.pipelines.outdir import OutputDir
    from blocklin.pipelines.runner import Pipeline, RunOptions

__all__ = ["WORK_DIR", "collect", "collect_pipeline_garbage", "default_work_dir_of",
           "is_output_dir", "run_lifecycle"]

logger = logging.getLogger(__name__)

#: The default work directory of a pipeline, relative to its output directory.
WORK_DIR = ".work"


def default_work_dir_of(output_dir: str) -> str:
    """``<output_dir>/.work``."""
    return f"{output_dir.rstrip('/')}/{WORK_DIR}"


def _owned(work_dir: str, output_dir: str) -> bool:
    """Whether ``work_dir`` is the output directory's own ``.work`` (guarded by its lock)."""
    return location(work_dir) == location(default_work_dir_of(output_dir))


@contextmanager
def run_lifecycle(pipe: Pipeline, opts: RunOptions) -> Iterator[None]:
    """Around a run or refresh: remove what its computes left once it succeeded.

    Nothing is removed when the block raises (``--resume`` reuses the arrays) or with
    ``keep_intermediates``. Entries another live compute leases are never removed.
    """
    from blocklin.executors.intermediates import intermediates_scope
    from blocklin.pipelines.runner import run_work_dir, spec_keeps

    keep = opts.keep_intermediates or spec_keeps(pipe)
    with intermediates_scope(keep=keep):
        yield
    work = run_work_dir(pipe, opts)
    if not keep and _owned(work, pipe.output_dir):
        # Also what no compute of this run left: a crashed run's scratch folders, arrays
        # estimators wrote themselves. Live leases protect what a new run already uses.
        try:
            collect_garbage(work)
        except (OSError, ValueError) as exc:  # the run is committed: say so, do not fail it
            logger.warning("could not free the work directory %s after the run: %s", work, exc)


def _pending(out: OutputDir) -> str | None:
    try:
        area = json.loads(out.read_bytes("runs/.pending.json") or b"null")["area"]
    except (ValueError, TypeError, KeyError):
        return None
    return area if isinstance(area, str) else None


def _run_entries(out: OutputDir, manifest: Mapping[str, Any] | None) -> list[Entry]:
    """Run folders no manifest names, and a local run's staging folder."""
    store = store_for(out.location)
    referenced = manifest_areas(manifest)
    pending = _pending(out)
    found = []
    for name in out.names("runs"):
        rel = f"runs/{name}"
        if name.startswith(".") or rel in referenced:
            continue
        files, nbytes, mtime = tree_usage(store, rel)
        what = ("an unfinished run's outputs (--resume reuses them)" if rel == pending
                else "an earlier run's outputs; the manifest names a later run")
        found.append(Entry(rel, "run", nbytes, files, mtime, what))
    if out.exists(".staging"):
        files, nbytes, mtime = tree_usage(store, ".staging")
        if files:
            found.append(Entry(".staging", "run", nbytes, files, mtime,
                               "outputs staged by an unfinished run (--resume reuses them)"))
    return found


def collect_pipeline_garbage(output_dir: str, *, older_than: float | None = None,
                             dry_run: bool = False) -> GcReport:
    """Free what a pipeline's output directory holds beyond its committed outputs.

    Parameters
    ----------
    output_dir : str
        The output directory (local path or fsspec URL, its storage options registered).
    older_than : float, optional
        Seconds: keep entries modified more recently.
    dry_run : bool
        Report what would be freed; remove nothing.

    Returns
    -------
    GcReport
        Entries under the output directory (``.work/...``, ``runs/...``, ``.staging``).

    Raises
    ------
    LockError
        When a run holds the output directory (without ``dry_run``): nothing is touched.
    """
    from blocklin.pipelines.lock import LOCK_NAME, OutputLock, read_lock
    from blocklin.pipelines.outdir import output_dir_for

    out = output_dir_for(output_dir)
    report = GcReport(location=out.location, dry_run=dry_run, older_than=older_than)
    if dry_run:
        holder = read_lock(out.url(LOCK_NAME))
        if holder is not None and holder.is_stale() is not True:
            report.notes.append(f"locked by {holder.describe()}: a run is in progress, so "
                                "gc would touch nothing now")
        _collect(out, report, older_than, dry_run)
        return report
    try:
        with OutputLock(out, "blocklin gc", what=f"outputs in {out.location} are"):
            _collect(out, report, older_than, dry_run)
    except LockError as exc:
        raise LockError(f"{exc}; gc touches nothing while a run holds them") from None
    return report


def _collect(out: OutputDir, report: GcReport, older_than: float | None,
             dry_run: bool) -> None:
    from blocklin.pipelines.manifest import load_manifest

    manifest = load_manifest(out)
    if out.exists(WORK_DIR):
        report.merge(collect_garbage(out.url(WORK_DIR), older_than=older_than,
                                     dry_run=dry_run), WORK_DIR)
    now = report.now
    for e in _run_entries(out, manifest):
        if older_than is not None and e.age(now) < older_than:
            report.kept.append((e, f"newer than {format_age(older_than)}"))
            continue
        if not dry_run:
            out.delete(e.name)
        report.freed.append(e)
    work = (manifest or {}).get("executor", {}).get("work_dir") if manifest else None
    if isinstance(work, str) and not _owned(work, out.location):
        report.notes.append(f"this pipeline's work directory is {work} (shared): free it with "
                            f"`blocklin gc {work}`")


def is_output_dir(path: str) -> bool:
    """Whether ``path`` looks like a pipeline's output directory (a manifest, a lock,
    ``.work``, ``.staging`` or ``runs/``) rather than a work directory."""
    from blocklin.pipelines.lock import LOCK_NAME
    from blocklin.pipelines.manifest import MANIFEST_NAME
    from blocklin.pipelines.outdir import output_dir_for
    from blocklin.storage.gc import is_work_dir

    out = output_dir_for(path)
    if out.exists(MANIFEST_NAME) or out.exists(LOCK_NAME):
        return True  # whatever else is there (a run makes its folder a zarr group too)
    if is_work_dir(store_for(path)):
        return False
    return any(out.exists(rel) for rel in (WORK_DIR, ".staging", "runs"))


def collect(path: str, *, older_than: float | None = None, dry_run: bool = False) -> GcReport:
    """``blocklin gc PATH``: :func:`collect_pipeline_garbage` for a pipeline's output
    directory, else :func:`blocklin.storage.gc.collect_garbage` for a work directory."""
    if is_output_dir(path):
        return collect_pipeline_garbage(path, older_than=older_than, dry_run=dry_run)
    return collect_garbage(path, older_than=older_than, dry_run=dry_run)
