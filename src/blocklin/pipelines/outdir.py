"""A pipeline's output directory: one interface over a local folder and an object store.

Every pipeline module (runs, refreshes, manifests, locks, reports) reaches its output
directory through :class:`OutputDir`, with paths relative to the directory's root.
Two implementations differ in what the place can do atomically, and so in where a
run puts its outputs before the manifest commits them (``manifest.py`` says what a
reader can rely on):

:class:`LocalDir`, a local (or mounted) folder
    Files are written by temp file and rename; the lock is created with
    ``O_CREAT | O_EXCL``. A run writes its outputs in ``.staging/`` and renames them
    to their final names (``<output>.npz``, ``<output>.zarr/``) just before the
    manifest is replaced.

:class:`ObjectDir`, any fsspec URL (``s3://``, ``gs://``, ``memory://``...)
    There is no rename: one PUT is atomic, a "move" is a copy. A run writes its
    outputs under a prefix of its own, ``runs/<run id>/``, and never moves them; the
    manifest (one PUT) names that prefix. ``runs/.pending.json`` names the prefix of a
    run that has not committed, so ``--resume`` finds its blocks again. After a commit
    the prefixes of runs older than the previous committed one are removed. The lock
    is created with a conditional PUT (``If-None-Match: *`` on S3) and a stale lock is
    taken over with ``If-Match`` on the ETag judged stale, so neither has a race
    window on stores that honour S3's conditional writes (AWS S3, moto). Other fsspec
    back ends get fsspec's ``mode="create"``, which is a check then a write unless
    the back end does better (a second creator may slip in between), and a stale lock
    is deleted before being re-created (two runs breaking the same stale lock at the
    same moment may both believe they hold it).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blocklin.errors import storage_error
from blocklin.storage.stores import LocalStore

__all__ = ["RUNS", "STAGING", "LocalDir", "ObjectDir", "OutputDir", "manifest_areas",
           "output_dir_for"]

#: Where a local run stages its outputs before renaming them into place.
STAGING = ".staging"
#: Where runs on an object store write their outputs, one prefix per run.
RUNS = "runs"
#: The prefix of the run that has not committed yet (object stores).
PENDING = f"{RUNS}/.pending.json"


def _join(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel.strip('/')}" if rel else base.rstrip("/") or "/"


class OutputDir(ABC):
    """The place a pipeline writes its outputs, manifest, report, refresh state and lock.

    Paths (``rel``) are ``/``-separated and relative to the directory; ``""`` is the
    directory itself.

    Attributes
    ----------
    location : str
        The directory: an absolute local path or an fsspec URL.
    """

    location: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def url(self, rel: str = "") -> str:
        """Where ``rel`` is, as a local path or URL (what ``open``/``store_for`` take)."""
        return _join(self.location, rel)

    # -- files ---------------------------------------------------------------------------
    @abstractmethod
    def read_bytes(self, rel: str) -> bytes | None:
        """The bytes of the file ``rel``; None when it does not exist."""

    @abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file so that readers see all of it or none of it."""

    @abstractmethod
    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create the file ``rel`` holding ``data`` unless it exists; whether it was created."""

    @abstractmethod
    def replace_if(self, rel: str, data: bytes, seen: bytes) -> bool:
        """Replace the file ``rel`` by ``data`` if it still holds ``seen``; whether it did."""

    @abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether ``rel`` is a file or holds files."""

    @abstractmethod
    def names(self, rel: str) -> list[str]:
        """Names of the entries directly under ``rel`` (empty when there are none)."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove the file or tree ``rel``, if present."""

    @abstractmethod
    def makedirs(self, rel: str) -> None:
        """Make sure the folder ``rel`` can take files (nothing to do on object stores)."""

    @abstractmethod
    def publish(self, src: str, dst: str) -> None:
        """Make the file or tree written at ``src`` the one at ``dst``, replacing it.

        Locally a rename. On object stores a copy (array metadata, ``zarr.json``, last,
        so an array at ``dst`` is not readable before its chunks are all there) and the
        removal of ``src``; nothing when ``src`` is ``dst``.
        """

    # -- where a run writes ------------------------------------------------------------
    @abstractmethod
    def start_run(self, resume: bool, committed: Mapping[str, Any] | None) -> str:
        """The folder this run writes its outputs in (made empty unless ``resume``)."""

    @abstractmethod
    def final_path(self, area: str, rel: str) -> str:
        """Where an output staged as ``<area>/<rel>`` is once committed (what the
        manifest records)."""

    @abstractmethod
    def end_run(self, area: str, committed: Mapping[str, Any],
                previous: Mapping[str, Any] | None) -> None:
        """Tidy up after the manifest naming ``area`` was written (``previous``: the one
        it replaced)."""

    @abstractmethod
    def run_folders(self) -> tuple[str, ...]:
        """Top-level folders that runs write (for the check that outputs alias no input)."""


class LocalDir(OutputDir):
    """A folder on a local or mounted file system (atomic rename, ``O_EXCL`` create)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path).expanduser().absolute()
        self.location = str(self.root)
        # Whole-file reads and atomic writes (temp file + rename, storage errors named)
        # are the local store's.
        self._files = LocalStore(self.root)

    def path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def read_bytes(self, rel: str) -> bytes | None:
        return self._files.get(rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._files.put(rel, data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        try:
            fd = os.open(self.path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def replace_if(self, rel: str, data: bytes, seen: bytes) -> bool:
        # Rename aside first, so two processes replacing the same file cannot both
        # delete a file that one of them has just re-created.
        path = self.path(rel)
        aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return self.create_exclusive(rel, data)
        if aside.read_bytes() != seen:
            os.rename(aside, path)  # not the file we judged: put it back
            return False
        aside.unlink(missing_ok=True)
        return self.create_exclusive(rel, data)

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def names(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, rel: str) -> None:
        path = self.path(rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def makedirs(self, rel: str) -> None:
        try:
            self.path(rel).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, str(self.path(rel))) from exc

    def publish(self, src: str, dst: str) -> None:
        source, target = self.path(src), self.path(dst)
        if source.is_dir():
            # Keep the window without a ``dst`` short: rename the old one aside first.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if target.exists():
                os.replace(target, old)
            os.replace(source, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, target)

    def start_run(self, resume: bool, committed: Mapping[str, Any] | None) -> str:
        if not resume:
            self.delete(STAGING)
        self.makedirs(STAGING)
        return STAGING

    def final_path(self, area: str, rel: str) -> str:
        return rel

    def end_run(self, area: str, committed: Mapping[str, Any],
                previous: Mapping[str, Any] | None) -> None:
        return None

    def run_folders(self) -> tuple[str, ...]:
        return (STAGING,)


class ObjectDir(OutputDir):
    """A prefix in an object store or any fsspec file system (see the module docs).

    The file system is the one blocklin's stores use for ``location``: it carries the
    storage options registered for it (:func:`~blocklin.storage.register_storage_options`)
    and lists without a cache.
    """

    def __init__(self, url: str) -> None:
        from blocklin.storage.stores import FsspecStore, store_for

        store = store_for(url)
        assert isinstance(store, FsspecStore)  # store_for gives one for every URL
        self.store = store
        self.location = store.url
        self.fs = store.fs
        self.protocol = url.split("://", 1)[0]

    def _key(self, rel: str) -> str:
        return _join(self.store.root, rel)

    def read_bytes(self, rel: str) -> bytes | None:
        return self.store.get(rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.store.put(rel, data)  # one PUT: atomic on object stores

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        return self.store.create_exclusive(rel, data)

    def replace_if(self, rel: str, data: bytes, seen: bytes) -> bool:
        return self.store.replace_if(rel, data, seen)

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self._key(rel))
        return bool(self.fs.exists(self._key(rel)))

    def names(self, rel: str) -> list[str]:
        key = self._key(rel)
        self.fs.invalidate_cache(key)
        try:
            found = self.fs.ls(key, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted({posixpath.basename(str(p).rstrip("/")) for p in found} - {""})

    def delete(self, rel: str) -> None:
        key = self._key(rel)
        self.fs.invalidate_cache(key)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)

    def makedirs(self, rel: str) -> None:
        return None  # prefixes exist when objects do

    def publish(self, src: str, dst: str) -> None:
        if src.strip("/") == dst.strip("/"):
            return
        keys = self.store.list(src)
        if not keys:
            raise FileNotFoundError(f"nothing to publish at {self.url(src)}")
        base = src.strip("/")
        rels = [k[len(base):].lstrip("/") for k in keys]
        # Metadata last: an array at dst is not readable until all its chunks are.
        rels.sort(key=lambda r: (posixpath.basename(r) == "zarr.json", r))
        srcs = [self._key(f"{base}/{r}" if r else base) for r in rels]
        dsts = [self._key(f"{dst.strip('/')}/{r}" if r else dst) for r in rels]
        data_first = [i for i, r in enumerate(rels) if posixpath.basename(r) != "zarr.json"]
        meta_last = [i for i, r in enumerate(rels) if posixpath.basename(r) == "zarr.json"]
        for group in (data_first, meta_last):
            if group:
                self.fs.copy([srcs[i] for i in group], [dsts[i] for i in group])
        self.delete(src)

    # -- runs under runs/<id>/ ---------------------------------------------------------
    def start_run(self, resume: bool, committed: Mapping[str, Any] | None) -> str:
        done = manifest_areas(committed)
        if resume:
            pending = _pending_area(self.read_bytes(PENDING))
            if pending is not None and pending not in done:
                return pending
        area = f"{RUNS}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self.write_bytes(PENDING, json.dumps({"area": area}).encode())
        return area

    def final_path(self, area: str, rel: str) -> str:
        return f"{area}/{rel}"

    def end_run(self, area: str, committed: Mapping[str, Any],
                previous: Mapping[str, Any] | None) -> None:
        if _pending_area(self.read_bytes(PENDING)) == area:
            self.delete(PENDING)
        # The previous run's outputs stay: a reader that read the manifest just before
        # this commit can still read what it named.
        keep = {area} | manifest_areas(committed) | manifest_areas(previous)
        for name in self.names(RUNS):
            if not name.startswith(".") and f"{RUNS}/{name}" not in keep:
                self.delete(f"{RUNS}/{name}")

    def run_folders(self) -> tuple[str, ...]:
        return (RUNS,)


def _pending_area(data: bytes | None) -> str | None:
    try:
        area = json.loads(data or b"null")["area"]
    except (ValueError, TypeError, KeyError):
        return None
    return area if isinstance(area, str) and area.startswith(f"{RUNS}/") else None


def manifest_areas(manifest: Mapping[str, Any] | None) -> set[str]:
    """The ``runs/<id>`` prefixes a manifest names (its outputs and report)."""
    if not manifest:
        return set()
    paths = [str(rec.get("path", "")) for rec in manifest.get("outputs", {}).values()
             if isinstance(rec, Mapping)]
    report = manifest.get("report")
    if isinstance(report, Mapping):
        paths.append(str(report.get("markdown", "")))
    return {"/".join(p.split("/")[:2]) for p in paths if p.startswith(f"{RUNS}/")}


def output_dir_for(location: str | os.PathLike[str] | OutputDir) -> OutputDir:
    """The :class:`OutputDir` at ``location`` (a local path or an fsspec URL).

    URL locations use the storage options registered for them
    (:func:`~blocklin.storage.register_storage_options`); register first.
    """
    if isinstance(location, OutputDir):
        return location
    text = os.fspath(location)
    if "://" not in text or text.startswith("file://"):
        return LocalDir(text.removeprefix("file://"))
    return ObjectDir(text)
