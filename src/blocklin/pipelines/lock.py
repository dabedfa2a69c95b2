"""A lock on a pipeline's output directory that survives a crashed holder.

``<output_dir>/.blocklin.lock`` is created atomically and holds JSON: pid, host,
start time, the command and a token unique to the holder. A second run finds it and
refuses with :class:`~blocklin.errors.LockError`, naming the holder. The creation is
the output directory's exclusive create (:mod:`~blocklin.pipelines.outdir`):
``O_CREAT | O_EXCL`` in a local folder, a conditional PUT (``If-None-Match: *``) on
S3, fsspec's ``mode="create"`` elsewhere (a check then a write on back ends without
conditional writes: two runs starting within that window may both proceed).

A holder that crashed leaves the file behind. On the same host the lock is stale
when its pid is no longer alive (or belongs to a process started after the lock):
the next run takes it over, replacing the lock only if it still holds what was
judged stale (rename aside and compare locally, ``If-Match`` on its ETag on S3). A
lock written on another host cannot be checked from here, so it is only broken by
hand:

- ``blocklin unlock SPEC`` removes a stale lock, refusing while its holder on this
  host is alive;
- ``blocklin unlock SPEC --force`` (or deleting ``<output_dir>/.blocklin.lock``)
  removes it unconditionally: do that only when the holder is known to be gone.

The same lock guards an input array while a refresh appends to it
(:func:`array_lock`: ``<array>/.blocklin/append.lock``), since pipelines with
different output directories may share an input. That one is waited for, not
refused: appends are short, and both refreshes must land.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from blocklin.errors import LockError
from blocklin.pipelines.outdir import OutputDir, output_dir_for
from blocklin.storage.leases import describe_holder, local_holder_alive

__all__ = ["APPEND_LOCK_WAIT", "LOCK_NAME", "OutputLock", "array_lock", "break_lock",
           "read_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".blocklin.lock"

#: Seconds a refresh waits for another process appending to the same input array.
APPEND_LOCK_WAIT = 600.0


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str
    started: float
    command: str
    token: str = ""

    def describe(self) -> str:
        return describe_holder(self.pid, self.host, self.started, self.command)

    def is_stale(self) -> bool | None:
        """True if the holder is gone, False if alive, None if it cannot be told (other host)."""
        alive = local_holder_alive(self.host, self.pid, self.started)
        return None if alive is None else not alive


def _parse(data: bytes | None) -> LockInfo | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
        return LockInfo(int(doc["pid"]), str(doc["host"]), float(doc["started"]),
                        str(doc.get("command", "")), str(doc.get("token", "")))
    except (ValueError, KeyError, TypeError):
        return LockInfo(-1, "?", 0.0, "unreadable lock file")


def _split(path: str | Path) -> tuple[OutputDir, str]:
    text = os.fspath(path).rstrip("/")
    parent, _, name = text.rpartition("/")
    return output_dir_for(parent or "/"), name


def read_lock(path: str | Path) -> LockInfo | None:
    """The holder of the lock file at ``path`` (a local path or URL), or None if unlocked.

    An unreadable lock counts as held by nobody alive.
    """
    where, name = _split(path)
    return _parse(where.read_bytes(name))


class OutputLock:
    """Context manager holding ``<directory>/.blocklin.lock`` for one run.

    Parameters
    ----------
    directory : str, path or OutputDir
        The folder the lock guards: a local path or an fsspec URL (whose storage
        options are registered) or an :class:`~blocklin.pipelines.outdir.OutputDir`.

    Raises
    ------
    LockError
        If another live run holds the lock (or one on another host does).
    """

    def __init__(self, directory: str | Path | OutputDir, command: str = "blocklin", *,
                 name: str = LOCK_NAME, wait: float = 0.0, what: str | None = None) -> None:
        self.dir = output_dir_for(directory)
        self.name = name
        self.path = self.dir.url(name)
        self.command = command
        self.held = False
        self.wait = wait
        self.what = what or f"outputs in {self.dir.location} are"
        self.token = uuid.uuid4().hex

    def _doc(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.time(), "command": self.command,
                           "token": self.token}).encode()

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` seconds for a live holder.

        Raises
        ------
        LockError
            Naming the holder, if it still holds the lock when the wait is over.
        """
        self.dir.makedirs("")
        start = time.monotonic()
        deadline = start + self.wait
        delay = 0.005
        waiting = False
        while True:
            try:
                self._try_acquire()
                if waiting:
                    logger.info("took the lock %s after waiting %.1f s", self.path,
                                time.monotonic() - start)
                else:
                    logger.debug("took the lock %s", self.path)
                return
            except LockError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if not waiting:
                    waiting = True
                    logger.info("waiting up to %g s for the lock %s: %s", self.wait, self.path,
                                exc)
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _try_acquire(self) -> None:
        for _ in range(3):
            if self.dir.create_exclusive(self.name, self._doc()):
                self.held = True
                return
            seen = self.dir.read_bytes(self.name)
            info = _parse(seen)
            if info is None or seen is None:
                continue  # released between our attempts
            stale = info.is_stale() if info.pid >= 0 else True
            if not stale:
                hint = ("wait for it to finish" if stale is False else
                        f"if that run is gone, delete {self.path}"
                        if self.name != LOCK_NAME else
                        "if that run is gone, clear it with `blocklin unlock SPEC --force`")
                waited = f" (waited {self.wait:g} s)" if self.wait else ""
                raise LockError(f"{self.what} locked by {info.describe()}{waited}; {hint}")
            # Take over only the lock judged stale: one re-created meanwhile stays.
            logger.info("taking over the stale lock %s held by %s", self.path, info.describe())
            if self.dir.replace_if(self.name, self._doc(), seen):
                self.held = True
                return
        raise LockError(f"could not take the lock {self.path} (contended); try again")

    def release(self) -> None:
        if self.held:
            self.held = False
            info = _parse(self.dir.read_bytes(self.name))
            if info is not None and info.token == self.token:
                self.dir.delete(self.name)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def array_lock(url: str, command: str = "blocklin",
               wait: float = APPEND_LOCK_WAIT) -> OutputLock:
    """A lock on the array at ``url`` for appending to it (waits for another appender).

    ``<array>/.blocklin/append.lock``, created like the output lock: exclusively on a
    local disk and on S3 (a conditional PUT), with fsspec's ``mode="create"`` on other
    object stores. Appends also check the array's metadata version before committing,
    which catches a writer that bypassed the lock.
    """
    local = "://" not in url or url.startswith("file://")
    base = url.removeprefix("file://") if local else url
    return OutputLock(f"{base.rstrip('/')}/.blocklin", command, name="append.lock", wait=wait,
                      what=f"array {url} is")


def break_lock(directory: str | Path | OutputDir, force: bool = False) -> dict[str, Any]:
    """Remove a stale lock (or any lock with ``force``); return what was removed.

    Raises
    ------
    LockError
        If the holder is alive on this host, or on another host without ``force``.
    """
    where = output_dir_for(directory)
    path = where.url(LOCK_NAME)
    info = _parse(where.read_bytes(LOCK_NAME))
    if info is None:
        return {"removed": False, "lock": path}
    stale = info.is_stale() if info.pid >= 0 else True
    if not force and stale is not True:
        why = "is alive" if stale is False else "runs on another host and cannot be checked"
        raise LockError(f"the lock holder {info.describe()} {why}; pass --force to remove the "
                        "lock anyway")
    where.delete(LOCK_NAME)
    return {"removed": True, "lock": path, "holder": info.describe()}
