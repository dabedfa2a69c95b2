"""What a work directory holds, and garbage collection of what nothing uses.

A work directory holds the zarr group's ``zarr.json``, ``.blocklin/`` (leases, see
:mod:`blocklin.storage.leases`) and one entry per array or scratch folder:

``a-<hash>`` arrays
    What computes produce. A compute removes its own once its results are sealed
    (:func:`blocklin.compute`'s ``keep_intermediates``); what stays is a matrix result
    computed without ``out=`` (its caller holds it), what a compute was asked to keep,
    and what a failed or interrupted compute left for ``resume=True`` (no
    ``zarr.json`` yet: *incomplete*).
scratch folders (``input-*``, ``truncated-svd-*``)
    Estimators' temporary copies of in-memory inputs, removed when the fit ends; a
    killed process leaves them behind.
other arrays written by blocklin (``ones-*.zarr``...)
    Recognized by their provenance attributes.

:func:`collect_garbage` removes every such entry that no live lease names and that
is older than ``older_than``. Anything else (files or arrays blocklin did not write)
is listed and left alone, and so is a directory that is not a work directory.
Explicit outputs (``out=``) never live in a work directory: computes refuse them
there (:func:`blocklin.storage.locations.check_no_alias`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blocklin.errors import InputValueError, format_bytes
from blocklin.storage.leases import (
    TRASH,
    LeaseInfo,
    leased_names,
    names_under,
    read_leases,
    work_lock,
)
from blocklin.storage.stores import FsspecStore, LocalStore, Store, join_url, store_for

__all__ = ["SCRATCH_PREFIXES", "Entry", "GcReport", "collect_garbage", "format_age",
           "is_work_dir", "scan_work_dir", "tree_usage"]

#: Name prefixes of estimators' scratch folders in a work directory.
SCRATCH_PREFIXES = ("input-", "truncated-svd-")
_CONTENT_NAME = re.compile(r"^a-[0-9a-f]{20}$")
#: Files only a pipeline's output directory holds (its manifest, its lock).
_OUTPUT_DIR_MARKS = ("manifest.json", ".blocklin.lock")


@dataclass(frozen=True)
class Entry:
    """One top-level entry of a work directory (or of a pipeline's output directory).

    ``kind``: ``array`` (sealed), ``incomplete`` (a failed or interrupted compute's;
    ``resume=True`` can use it), ``scratch``, ``run`` (a pipeline run's folder),
    ``lease`` (a lease file whose holder is gone), ``trash`` (removed by a compute,
    not yet deleted) or ``foreign`` (not blocklin's, never removed). ``what`` says which
    stage, operator or run it belongs to.
    """

    name: str
    kind: str
    nbytes: int
    files: int
    mtime: float
    what: str = ""

    def age(self, now: float) -> float:
        return max(0.0, now - self.mtime)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "bytes": self.nbytes, "files": self.files,
                "age_seconds": round(self.age(now), 3), "what": self.what}


def format_age(seconds: float) -> str:
    """``42 s``, ``5.0 min``, ``3.2 h``, ``7.0 d``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@dataclass
class GcReport:
    """What :func:`collect_garbage` freed (or would free) and what it kept, and why."""

    location: str
    dry_run: bool
    older_than: float | None = None
    freed: list[Entry] = field(default_factory=list)
    kept: list[tuple[Entry, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    now: float = field(default_factory=time.time)

    @property
    def freed_bytes(self) -> int:
        return sum(e.nbytes for e in self.freed)

    @property
    def kept_bytes(self) -> int:
        return sum(e.nbytes for e, _ in self.kept)

    def merge(self, other: GcReport, prefix: str) -> None:
        """Add another report's entries, their names under ``prefix``."""
        def moved(e: Entry) -> Entry:
            return Entry(f"{prefix}/{e.name}", e.kind, e.nbytes, e.files, e.mtime, e.what)

        self.freed += [moved(e) for e in other.freed]
        self.kept += [(moved(e), why) for e, why in other.kept]
        self.notes += other.notes

    def as_dict(self) -> dict[str, Any]:
        return {"location": self.location, "dry_run": self.dry_run,
                "older_than_seconds": self.older_than,
                "freed_bytes": self.freed_bytes, "kept_bytes": self.kept_bytes,
                "freed": [e.as_dict(self.now) for e in self.freed],
                "kept": [{**e.as_dict(self.now), "reason": why} for e, why in self.kept],
                "notes": list(self.notes)}

    def text(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        lines = [f"{self.location}: {verb} {len(self.freed)} entries, "
                 f"{format_bytes(self.freed_bytes)}"
                 + (" (dry run: nothing removed)" if self.dry_run else "")
                 + f"; kept {len(self.kept)}, {format_bytes(self.kept_bytes)}"]
        width = max([len(e.name) for e in self.freed] + [len(e.name) for e, _ in self.kept] + [4])
        for e in sorted(self.freed, key=lambda e: -e.nbytes):
            lines.append(f"  {verb:<10} {e.name:<{width}}  {e.kind:<10} "
                         f"{format_bytes(e.nbytes):>10}  {format_age(e.age(self.now)):>9} old  "
                         f"{e.what}")
        for e, why in sorted(self.kept, key=lambda p: -p[0].nbytes):
            lines.append(f"  {'kept':<10} {e.name:<{width}}  {e.kind:<10} "
                         f"{format_bytes(e.nbytes):>10}  {format_age(e.age(self.now)):>9} old  "
                         f"{why}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- scanning -----------------------------------------------------------------------------
def _mtime(info: Mapping[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created", "updated"):
        v = info.get(key)
        if isinstance(v, datetime):
            return v.timestamp()
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def tree_usage(store: Store, rel: str = "") -> tuple[int, int, float]:
    """(files, bytes, newest modification time) under ``rel`` of ``store``."""
    files, nbytes, newest = 0, 0, 0.0
    if isinstance(store, LocalStore):
        base = store.root / rel if rel else store.root
        if base.is_file():
            st = base.stat()
            return 1, st.st_size, st.st_mtime
        for dirpath, _, names in os.walk(base):
            for n in names:
                try:
                    st = os.stat(os.path.join(dirpath, n))
                except FileNotFoundError:  # removed meanwhile
                    continue
                files, nbytes, newest = files + 1, nbytes + st.st_size, max(newest, st.st_mtime)
        return files, nbytes, newest
    for info in _find(store, rel).values():
        files, nbytes = files + 1, nbytes + int(info.get("size") or 0)
        newest = max(newest, _mtime(info))
    return files, nbytes, newest


def _find(store: Store, rel: str) -> dict[str, Any]:
    if not isinstance(store, FsspecStore):
        raise TypeError(f"cannot list {store!r}")
    key = f"{store.root}/{rel}".rstrip("/") if rel else store.root
    store.fs.invalidate_cache(key)
    try:
        found: dict[str, Any] = store.fs.find(key, detail=True)
    except FileNotFoundError:
        return {}
    return found


def _classify(store: Store, name: str) -> tuple[str, str]:
    """(kind, what) of entry ``name`` (see :class:`Entry`)."""
    raw = store.get(f"{name}/zarr.json")
    if raw is not None:
        try:
            doc = json.loads(raw)
            attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
            prov = attrs.get("blocklin") if isinstance(attrs, dict) else None
            node = doc.get("node_type") if isinstance(doc, dict) else None
        except ValueError:
            prov, node = None, None
        if isinstance(prov, dict):
            return "array", str(prov.get("stage") or prov.get("operator") or "blocklin array")
        if node == "group" and name.startswith(SCRATCH_PREFIXES):
            return "scratch", "an estimator's scratch folder"
        return "foreign", "not written by blocklin: left alone"
    if _CONTENT_NAME.match(name) or store.list(f"{name}/.blocklin/done")[:1]:
        return "incomplete", "unfinished (a failed or interrupted compute; resume=True reuses it)"
    if name.startswith(SCRATCH_PREFIXES):
        return "scratch", "an estimator's scratch folder"
    return "foreign", "not written by blocklin: left alone"


def is_work_dir(store: Store) -> bool:
    """Whether ``store`` looks like a work directory (its group metadata or leases)."""
    raw = store.get("zarr.json")
    if raw is not None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return False
        return isinstance(doc, dict) and doc.get("node_type") == "group"
    return bool(names_under(store, ".blocklin"))


def scan_work_dir(work_dir: str) -> list[Entry]:
    """Every top-level entry of ``work_dir`` with its kind, size and age (nothing is
    removed). Stale lease files are listed as ``lease`` entries.

    Raises
    ------
    InputValueError
        If ``work_dir`` exists but is not a work directory.
    """
    store = store_for(work_dir)
    names = [n for n in names_under(store, "") if n not in ("zarr.json", ".blocklin")]
    if not names and not names_under(store, ".blocklin"):
        return []
    if any(n in _OUTPUT_DIR_MARKS for n in names):
        raise InputValueError(f"{work_dir} is a pipeline's output directory, not a work "
                              "directory: `blocklin gc` on it frees its .work and old runs "
                              "(blocklin.pipelines.gc), never its outputs")
    if not is_work_dir(store):
        raise InputValueError(f"{work_dir} is not a blocklin work directory (no zarr group "
                              "metadata or .blocklin folder at its root); gc touches nothing "
                              "there")
    out = []
    for n in names:
        files, nbytes, mtime = tree_usage(store, n)
        kind, what = _classify(store, n)
        out.append(Entry(n, kind, nbytes, files, mtime, what))
    for n in names_under(store, TRASH):
        files, nbytes, mtime = tree_usage(store, f"{TRASH}/{n}")
        out.append(Entry(f"{TRASH}/{n}", "trash", nbytes, files, mtime,
                         "removed by a compute whose process ended before deleting it"))
    now = time.time()
    for key, info in read_leases(work_dir):
        if info is None or not info.alive(now):
            files, nbytes, mtime = tree_usage(store, key)
            why = "unreadable lease" if info is None else f"stale lease of {info.describe()}"
            out.append(Entry(key, "lease", nbytes, files, mtime, why))
    return out


def _delete(store: Store, rel: str) -> None:
    if isinstance(store, LocalStore):
        # A process removing the same trash concurrently is no error.
        path = store.root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    store.delete_prefix(rel)


def _holders(work_dir: str, entries: list[Entry], now: float) -> dict[str, LeaseInfo]:
    """Entry name -> a live lease using it: named by a lease here, or, for a scratch
    folder, holding a lease inside it (a compute running in it)."""
    held = leased_names(work_dir, now=now)
    for e in entries:
        if e.kind == "scratch" and e.name not in held:
            inner = leased_names(join_url(work_dir, e.name), now=now)
            if inner:
                held[e.name] = next(iter(inner.values()))
    return held


def collect_garbage(work_dir: str, *, older_than: float | None = None, dry_run: bool = False
                    ) -> GcReport:
    """Remove what no running compute uses from a work directory.

    Parameters
    ----------
    work_dir : str
        A work directory: local path or fsspec URL (its storage options registered).
    older_than : float, optional
        Seconds: keep entries modified more recently (``None``: no age limit).
    dry_run : bool
        Report what would be freed; remove nothing.

    Returns
    -------
    GcReport
        Entries freed (or that would be) and entries kept, with the reason.

    Raises
    ------
    InputValueError
        If ``work_dir`` is not a work directory.

    Notes
    -----
    Never removes an entry a live lease names (a running compute's arrays, an
    estimator's scratch folder), nor anything blocklin did not write. The check and
    the removal hold the work directory's lock, so no compute takes a lease on an
    entry between them. Incomplete arrays are removed too (a later ``resume=True``
    then recomputes them): give ``older_than`` to keep recent failures resumable.
    """
    report = GcReport(location=work_dir, dry_run=dry_run, older_than=older_than)
    entries = scan_work_dir(work_dir)
    if not entries:
        return report
    report.now = now = time.time()
    held = _holders(work_dir, entries, now)
    candidates = _sort(report, entries, held, older_than, now)
    if dry_run or not candidates:
        report.freed = candidates
        return report
    store = store_for(work_dir)
    with work_lock(work_dir):
        # Again under the lock: a compute may have taken a lease since the scan.
        fresh = _holders(work_dir, entries, time.time())
        for e in candidates:
            if e.kind not in ("lease", "trash") and e.name in fresh:
                report.kept.append((e, f"in use by {fresh[e.name].describe()}"))
                continue
            _delete(store, e.name)
            report.freed.append(e)
    return report


def _sort(report: GcReport, entries: list[Entry], held: Mapping[str, LeaseInfo],
          older_than: float | None, now: float) -> list[Entry]:
    """Entries to remove; the others go to ``report.kept`` with the reason."""
    candidates = []
    for e in entries:
        if e.kind == "foreign":
            report.kept.append((e, e.what))
        elif e.kind == "trash":
            candidates.append(e)  # removed already: nothing uses it, whatever its age
        elif e.kind != "lease" and e.name in held:
            report.kept.append((e, f"in use by {held[e.name].describe()}"))
        elif older_than is not None and e.age(now) < older_than:
            report.kept.append((e, f"newer than {format_age(older_than)}"))
        else:
            candidates.append(e)
    return candidates
